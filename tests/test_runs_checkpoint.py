"""Atomic checkpoints, RNG capture/restore, replay-buffer round trip, Run save/load/resume."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

from reverie.runs import (
    Run,
    RunConfig,
    capture_rng_state,
    cfg,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

torch.set_num_threads(1)


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        np.random.randn(2).tolist(),  # exercises numpy's cached gaussian
        torch.rand(3).tolist(),
        torch.randint(0, 1000, (4,)).tolist(),
    )


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = _draws()
    _draws()  # move every generator on
    save_checkpoint(tmp_path / "ck.pt", {"rng": state})
    restore_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng"])  # weights_only load
    assert _draws() == expected


def test_save_and_load(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    assert load_checkpoint(path) is None
    model = torch.nn.Linear(3, 2)
    optim = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optim.step()
    save_checkpoint(path, {"step": 7, "model": model.state_dict(), "optim": optim.state_dict()})
    state = load_checkpoint(path)
    assert state["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    optim2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    optim2.load_state_dict(state["optim"])
    assert optim2.state_dict()["state"][0]["step"] == optim.state_dict()["state"][0]["step"]


def test_save_is_atomic_when_torch_save_crashes(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # some bytes reach the temporary file ...
        raise RuntimeError("disk full")  # ... then the writer dies

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_interrupt_during_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted_save(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 0})
    assert list(tmp_path.iterdir()) == []


def _buffer() -> ReplayBuffer:
    return ReplayBuffer(storage=LazyTensorStorage(50), batch_size=8)


def test_replay_buffer_round_trip(tmp_path):
    torch.manual_seed(0)
    rb = _buffer()
    for _ in range(3):
        rb.extend(TensorDict(obs=torch.randn(7, 3), reward=torch.randn(7, 1), batch_size=[7]))
    save_checkpoint(tmp_path / "ck.pt", {"buffer": rb.state_dict(), "rng": capture_rng_state()})

    expected_samples = [rb.sample() for _ in range(3)]
    rb.extend(TensorDict(obs=torch.ones(2, 3), reward=torch.ones(2, 1), batch_size=[2]))

    state = load_checkpoint(tmp_path / "ck.pt")
    restored = _buffer()
    restored.load_state_dict(state["buffer"])
    restore_rng_state(state["rng"])
    assert len(restored) == 21
    assert (restored[:] == rb[:21]).all()  # identical contents
    for expected in expected_samples:  # sampling continues identically
        assert (restored.sample() == expected).all()
    # and it keeps accepting data where it left off
    restored.extend(TensorDict(obs=torch.ones(2, 3), reward=torch.ones(2, 1), batch_size=[2]))
    assert len(restored) == 23 and (restored[21:] == rb[21:23]).all()


# ----------------------------------------------------------------------------- Run


@dataclass
class SmallConfig(RunConfig):
    lr: float = cfg(0.1, "Learning rate.")


def _rows(run_dir) -> list[tuple[int, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["name"]) for r in csv.DictReader(f)]


def test_run_folder_log_save_and_resume_truncation(tmp_path):
    config = SmallConfig(run_dir=str(tmp_path / "r"), progress=False, checkpoint_every=2)
    run = Run("small", config)
    assert run.dir == tmp_path / "r" and run.config.run_dir == str(tmp_path / "r")
    saved = json.loads((run.dir / "config.json").read_text())
    assert saved["algo"] == "small" and saved["config"]["lr"] == 0.1
    assert run.load() is None  # new run: nothing to load
    for step in range(1, 6):
        run.log({"train/loss": torch.tensor(1.0 / step), "eval/return": float(step)}, step)
        if run.checkpoint_due(step):
            run.save({"step": step, "w": torch.full((2,), float(step))})
    assert load_checkpoint(run.checkpoint_path)["step"] == 4
    assert run.path("diag/x.png").parent.is_dir()
    run.close()

    # refuse to reuse a folder that already holds a run
    with pytest.raises(FileExistsError, match="resume"):
        Run("small", config)
    # refuse to resume with another recipe
    with pytest.raises(ValueError, match="'small' run"):
        Run("other", SmallConfig(resume=str(run.dir)))

    resumed = Run("small", SmallConfig(resume=str(run.dir), lr=0.5))
    assert resumed.resumed and resumed.config.lr == 0.5 and resumed.overrides == {"lr": 0.5}
    assert resumed.config.checkpoint_every == 2 and resumed.config.progress is False
    state = resumed.load()
    assert state["step"] == 4 and resumed.start_step == 4
    assert [s for s, _ in _rows(run.dir)] == [1, 1, 2, 2, 3, 3, 4, 4]  # step 5 dropped
    assert not (run.dir / "logs" / "csv").exists()  # one CSV of metrics per run: metrics.csv
    assert not resumed.checkpoint_due(5) and resumed.checkpoint_due(6)
    resumed.log({"train/loss": 0.1}, 5)
    summary = resumed.finish({"eval/return": np.float64(5.0), "w": torch.ones(2)})
    assert summary["eval/return"] == 5.0
    assert json.loads((run.dir / "summary.json").read_text()) == {
        "eval/return": 5.0,
        "w": [1.0, 1.0],
    }
    assert (run.dir / "learning_curve.png").stat().st_size > 0
    assert json.loads((run.dir / "config.json").read_text())["config"]["lr"] == 0.5


def test_save_requires_step(tmp_path):
    run = Run("small", SmallConfig(run_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="'step'"):
        run.save({"w": torch.ones(1)})
    run.close()


def test_default_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Run("small", SmallConfig(env="dm_control/cheetah-run", seed=3, progress=False))
    assert run.dir.parent == tmp_path.joinpath(
        "runs", "small", "dm_control-cheetah-run"
    ).relative_to(tmp_path)
    assert run.dir.name.endswith("-s3")
    other = Run("small", SmallConfig(env="dm_control/cheetah-run", seed=3, progress=False))
    assert other.dir != run.dir  # two runs in the same second get distinct folders
    run.close()
    other.close()


# ------------------------------------------------------------------ unreadable checkpoints
def _two_checkpoints(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    return path


def test_the_previous_checkpoint_is_kept(tmp_path):
    from reverie.runs.checkpoint import previous_checkpoint_path

    path = _two_checkpoints(tmp_path)
    assert previous_checkpoint_path(path) == tmp_path / "checkpoint.prev.pt"
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(tmp_path / "checkpoint.prev.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_an_unreadable_checkpoint_names_its_file_and_never_advises_unsafe_loading(tmp_path, damage):
    from reverie.runs import CheckpointError

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "random": bytes(range(256)) * 40}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "weights_only" not in message
    assert ("empty" if damage == "empty" else "truncated or corrupt") in message


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = _two_checkpoints(tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # the latest is truncated
    with pytest.warns(RuntimeWarning, match="checkpoint.prev.pt"):
        state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_a_save_killed_between_its_renames_loads_the_previous_checkpoint(tmp_path):
    path = _two_checkpoints(tmp_path)
    path.unlink()  # renamed to .prev, the new file not yet in place
    with pytest.warns(RuntimeWarning, match="missing"):
        assert load_checkpoint(path)["step"] == 1


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from reverie.runs import CheckpointError

    path = _two_checkpoints(tmp_path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint is intact"):
        save_checkpoint(path, {"step": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_orphan_temporary_files_are_removed_at_the_next_save(tmp_path):
    (tmp_path / ".checkpoint-abc123.pt.tmp").write_bytes(b"left by a killed writer")
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
