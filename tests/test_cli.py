"""The ``reverie`` command end to end, with the toy recipe in ``tests/toy_recipe.py``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from reverie.algorithms import ALGORITHMS
from reverie.cli import main
from reverie.runs import load_checkpoint

torch.set_num_threads(1)

DEBUG = ["--preset", "debug"]  # 240 env steps in batches of 4, checkpoint every 80, eval every 40


pytestmark = pytest.mark.usefixtures("toy")  # the toy recipe (tests/conftest.py)


def _metric_rows(run_dir: Path) -> list[tuple[int, str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["name"], r["value"]) for r in csv.DictReader(f)]


def test_help_lists_commands_and_algorithms(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "plot"):
        assert command in out
    for name, (_module, description) in ALGORITHMS.items():
        assert name in out and description in out
    assert "toy regression recipe for the tests" in out


def test_train_algo_help_prints_config_help(capsys):
    assert main(["train", "toy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: reverie train toy" in out
    for field in ("total_steps", "batch_size", "stop_after", "seed", "checkpoint_every"):
        assert f"  {field}: " in out
    assert "debug: total_steps=240" in out


def test_unknown_algorithm_exits_2_and_lists_known(capsys):
    assert main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown algorithm 'nope'" in err and "toy" in err


def test_bad_override_and_preset_exit_2(capsys, tmp_path):
    assert main(["train", "toy", "batch_size=big", f"run_dir={tmp_path}"]) == 2
    assert "batch_size='big'" in capsys.readouterr().err
    assert main(["train", "toy", "--preset", "huge"]) == 2
    assert "Unknown preset 'huge'" in capsys.readouterr().err
    assert main(["train", "toy", "--frobnicate"]) == 2
    assert not (tmp_path / "config.json").exists()


def test_train_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "toy", *DEBUG, "--seed", "3", "--env", "Toy-v0", f"run_dir={run_dir}"])
    assert code == 0
    for name in ("config.json", "metrics.csv", "learning_curve.png", "checkpoint.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["algo"] == "toy"
    assert saved["config"]["seed"] == 3 and saved["config"]["env"] == "Toy-v0"
    assert saved["config"]["total_steps"] == 240 and saved["config"]["run_dir"] == str(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    # it did learn: an untrained predictor loses about 3 per step, the noise floor is 0.01
    assert summary["env_steps"] == 240 and summary["eval/return"] > -0.4, summary
    rows = _metric_rows(run_dir)
    assert [s for s, n, _ in rows if n == "train/loss"] == list(range(4, 241, 4))
    assert [s for s, n, _ in rows if n == "eval/return"] == list(range(40, 241, 40))  # no duplicate
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 240
    out = capsys.readouterr().out
    assert f"Run folder: {run_dir}" in out and "learning_curve.png" in out

    # reverie plot overlays runs
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_eval_is_reproducible_and_leaves_training_outputs_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=40", f"run_dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert main(["eval", str(run_dir)]) == 0
    assert main(["eval", str(run_dir)]) == 0
    assert "env_steps: 40" in capsys.readouterr().out
    folders = sorted((run_dir / "eval").iterdir())
    assert len(folders) == 2
    first, second = (json.loads((f / "summary.json").read_text()) for f in folders)
    # the same seed: the same returns, bit for bit, equal to training's final evaluation
    assert first["eval/returns"] == second["eval/returns"] == summary["eval/returns"]
    for f in folders:
        assert (f / "returns.png").stat().st_size > 0
        assert len((f / "returns.csv").read_text().splitlines()) == 1 + 2  # header + 2 episodes
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing of training rewritten
    # another seed gives other start states
    assert main(["eval", str(run_dir), "--seed", "7", "--episodes", "3"]) == 0
    third = json.loads((sorted((run_dir / "eval").iterdir())[-1] / "summary.json").read_text())
    assert len(third["eval/returns"]) == 3 and third["eval/returns"][:2] != first["eval/returns"]


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={tmp_path}"]) == 0
    (tmp_path / "checkpoint.pt").unlink()
    assert main(["eval", str(tmp_path)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", "toy", *DEBUG, f"run_dir={straight}"]) == 0

    # killed in the update after step 140: the last checkpoint is at step 80, rows up to 140
    assert main(["train", "toy", *DEBUG, f"run_dir={killed}", "stop_after=140"]) == 130
    assert f"reverie train --resume {killed}" in capsys.readouterr().err
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 80
    assert max(s for s, _, _ in _metric_rows(killed)) == 140
    assert not (killed / "summary.json").exists()

    # resume with the saved config; stop_after=none overrides the saved 35
    assert main(["train", "--resume", str(killed), "stop_after=none"]) == 0

    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a == b  # exact: same final weights, returns and diagnostics
    ca, cb = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    wa, wb = ca["agent"], cb["agent"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa if isinstance(wa[k], torch.Tensor))
    ba, bb = ca["buffer"]["_storage"]["_storage"], cb["buffer"]["_storage"]["_storage"]
    assert all(torch.equal(ba[k], bb[k]) for k in ba)  # the same data, none lost or doubled
    rows = _metric_rows(killed)
    assert len({(s, n) for s, n, _ in rows}) == len(rows)  # no duplicated steps
    assert rows == _metric_rows(straight)  # nothing lost, identical values
    saved = json.loads((killed / "config.json").read_text())["config"]
    assert saved["stop_after"] is None and saved["resume"] == str(killed)


def test_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a reverie run folder" in capsys.readouterr().err
    assert main(["train", "toy", *DEBUG, "total_steps=4", f"run_dir={tmp_path}"]) == 0
    assert main(["train", "--resume", str(tmp_path), "--preset", "debug"]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_a_resume_whose_checkpoint_does_not_fit_changes_nothing(tmp_path, capsys):
    """A changed model size is refused with a message, before config.json, metrics.csv or
    anything else in the run folder is touched; the run still resumes as it was."""
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run}", "stop_after=100"]) == 130
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "obs_dim=5"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "nothing in the run folder was changed" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "--resume", str(run), "stop_after=none"]) == 0
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 240


def test_an_unknown_env_id_is_a_clear_error_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "pets", "--env", "Pendlum-v1", "--preset", "debug"]) == 2
    err = capsys.readouterr().err
    assert "Pendlum" in err and "Did you mean: `Pendulum`" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "pets" / "Pendlum-v1").exists()
    # an explicit run_dir that did not exist is removed as well
    assert main(["train", "pets", "--env", "Pendlum-v1", "--preset", "debug",
                 f"run_dir={tmp_path / 'mine'}"]) == 2
    assert not (tmp_path / "mine").exists()


@pytest.mark.parametrize("recipe", ["dreamer", "worldmodel", "pets"])
def test_a_discrete_action_env_for_a_continuous_recipe_is_named(tmp_path, monkeypatch, capsys, recipe):
    monkeypatch.chdir(tmp_path)
    assert main(["train", recipe, "--env", "CartPole-v1", "--preset", "debug"]) == 2
    err = capsys.readouterr().err
    assert f"{recipe} needs bounded continuous actions" in err and "CartPole-v1 has OneHot" in err
    assert not (tmp_path / "runs" / recipe / "CartPole-v1").exists()


def test_resuming_a_finished_run_writes_no_row_twice(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run}"]) == 0
    rows = _metric_rows(run)
    summary = json.loads((run / "summary.json").read_text())
    assert main(["train", "--resume", str(run)]) == 0  # finished: only the final phase again
    assert _metric_rows(run) == rows
    assert len({(s, n) for s, n, _ in rows}) == len(rows)
    assert json.loads((run / "summary.json").read_text()) == summary


def test_two_processes_on_one_run_folder_the_second_is_refused(tmp_path, capsys):
    from toy_recipe import Config

    from reverie.runs import Run

    run_dir = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run_dir}", "stop_after=100"]) == 130
    holder = Run("toy", Config(resume=str(run_dir)))  # a live process resuming the run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "stop_after=none"]) == 2
    assert "is in use by pid" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    holder.close()  # released (a killed process releases it too)
    assert main(["train", "--resume", str(run_dir), "stop_after=none"]) == 0


def test_a_damaged_config_json_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={run}"]) == 0
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])  # truncated
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "config.json is damaged (JSONDecodeError" in capsys.readouterr().err
    assert main(["eval", str(run)]) == 2


def test_a_file_or_a_read_only_folder_as_run_dir(tmp_path, capsys, monkeypatch):
    import os

    import reverie.runs.run as run_module

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["train", "toy", *DEBUG, f"run_dir={a_file}"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: the permission answer is simulated
    monkeypatch.setattr(run_module.os, "access",
                        lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    assert main(["train", "toy", *DEBUG, f"run_dir={locked}"]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_more_user_errors_exit_2_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "total_steps=8", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["train", "toy", *DEBUG, f"run_dir={run}"]) == 2  # already holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "toy", *DEBUG, "device=cuda:7", f"run_dir={tmp_path / 'r2'}"]) == 2
    assert "device='cuda:7' is not available" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    assert main(["eval", str(run), "obs_dim=5"]) == 2  # a model size the checkpoint lacks
    assert "does not fit the model" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["eval", str(run)]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err


def test_a_nan_from_the_environment_is_never_stored(tmp_path, monkeypatch):
    import toy_recipe

    from reverie.validation import NonFiniteError

    real_sample, calls = toy_recipe.ToyEnv._sample, {"n": 0}

    def sample(self):
        calls["n"] += 1
        td = real_sample(self)
        if calls["n"] == 30:
            td["observation"][1] = float("nan")
        return td

    monkeypatch.setattr(toy_recipe.ToyEnv, "_sample", sample)
    with pytest.raises(NonFiniteError, match=r"collected after env step 16: \('next', 'observation'\)"):
        main(["train", "toy", *DEBUG, f"run_dir={tmp_path / 'run'}"])


def test_a_resume_on_another_env_or_seed_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run}", "stop_after=100"]) == 130
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    for change in ("env=CartPole-v1", "seed=3"):
        assert main(["train", "--resume", str(run), change]) == 2
        assert "cannot be resumed with" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------ config files
def _saved_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())["config"]


def test_a_config_file_in_json_or_yaml_then_presets_then_overrides(tmp_path, capsys):
    (tmp_path / "my.json").write_text(json.dumps({"seed": 7, "lr": 0.05, "batch_size": 16}))
    (tmp_path / "my.yaml").write_text("# the same settings\nseed: 7\nlr: 0.05\nbatch_size: 16\n")
    for name in ("my.json", "my.yaml"):
        run = tmp_path / f"run_{name}"
        assert main(["train", "toy", "--config", str(tmp_path / name), *DEBUG, "--preset", "small_batch",
                     "lr=0.02", f"run_dir={run}"]) == 0
        saved = _saved_config(run)
        assert (saved["seed"], saved["batch_size"], saved["lr"]) == (7, 4, 0.02)  # file < preset < override
        assert saved["total_steps"] == 240  # the debug preset applied


def test_a_run_config_json_is_a_valid_config_file_for_a_new_run(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", "toy", *DEBUG, "seed=3", "lr=0.07", f"run_dir={first}"]) == 0
    # no ALGO needed: the file names it; its run_dir is not reused
    assert main(["train", "--config", str(first / "config.json"), f"run_dir={second}"]) == 0
    a, b = _saved_config(first), _saved_config(second)
    assert {k for k in a if a[k] != b[k]} == {"run_dir"}
    assert json.loads((first / "summary.json").read_text())["eval/return"] == \
        json.loads((second / "summary.json").read_text())["eval/return"]


@pytest.mark.parametrize(("content", "suffix", "message"), [
    ('{"seed": 1, "totl_steps": 3}', ".json", r"config file '.*bad.json': Unknown field 'totl_steps'. "
                                              r"Did you mean 'total_steps'"),
    ('{"seed": "x"}', ".json", r"Cannot parse seed='x'"),
    ("seed: [1", ".yaml", r"config file '.*bad.yaml' does not parse"),
    ("[1, 2]", ".json", r"holds a list, not a mapping"),
    ('{"algo": "pets", "config": {"seed": 1}}', ".json", r"is the config of a 'pets' run, not 'toy'"),
])
def test_a_bad_config_file_exits_2_naming_the_file_and_the_problem(tmp_path, capsys, content, suffix, message):
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(content)
    assert main(["train", "toy", "--config", str(bad), f"run_dir={tmp_path / 'run'}"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_config_file_errors_missing_file_and_resume(tmp_path, capsys):
    assert main(["train", "toy", "--config", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "ok.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "ok.json")]) == 2
    assert "--config cannot be combined with --resume" in capsys.readouterr().err


# ------------------------------------------------------------------ a quiet console
def _output_of(args: list[str], tmp_path: Path) -> tuple[str, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}  # as in containers and CI
    proc = subprocess.run([sys.executable, "-m", "reverie.cli", "train", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_the_console_holds_the_progress_bar_and_our_messages_only(tmp_path):
    """A pixel Dreamer run: no TorchRL INFO line over the progress bar, no SDL
    "XDG_RUNTIME_DIR is invalid" line, no warning; ``verbose=true`` shows TorchRL's INFO."""
    out, err = _output_of(["dreamer", "--preset", "debug", "pixels=true", "env_steps=200", "seed_episodes=1",
                           "eval_every=200", f"run_dir={tmp_path / 'quiet'}"], tmp_path)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("env steps:") for line in lines), lines  # the bar only
    assert [line.split(":")[0] for line in out.splitlines()] == ["Evaluation video", "Final metrics", "Run folder",
                                                                 "Learning curves"]
    out, err = _output_of(["pets", "--preset", "debug", "episodes=2", "verbose=true", "progress=false",
                           f"run_dir={tmp_path / 'verbose'}"], tmp_path)
    assert "[torchrl][INFO]" in out + err and "Initialized LazyTensorStorage" in out + err
