"""Run loggers: metrics.csv is the one CSV; TorchRL's TensorBoard, W&B and MLflow loggers by
``logger=`` (issue 18, item 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reverie.cli import main
from reverie.runs import loggers as run_loggers

DEBUG = ["--preset", "debug"]
pytestmark = pytest.mark.usefixtures("toy")  # the toy recipe (tests/conftest.py)


def test_by_default_metrics_csv_is_the_only_log(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, f"run_dir={run}"]) == 0
    assert (run / "metrics.csv").read_text().startswith("step,name,value\n")
    assert not (run / "logs").exists()  # no second CSV, no empty videos/ and texts/ folders


@pytest.mark.parametrize(("value", "message"), [
    ("tensorbord", r"unknown logger 'tensorbord'; choose from csv, tensorboard, wandb, mlflow"),
    ("csv,neptune", r"unknown logger 'neptune'"),
])
def test_an_unknown_logger_is_refused_before_the_run_folder_exists(tmp_path, capsys, value, message):
    assert main(["train", "toy", *DEBUG, f"logger={value}", f"run_dir={tmp_path / 'run'}"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_logger_without_its_package_names_the_extra(tmp_path, capsys, monkeypatch, name):
    real = run_loggers.importlib.util.find_spec
    monkeypatch.setattr(run_loggers.importlib.util, "find_spec",
                        lambda pkg, *a: None if pkg == name else real(pkg, *a))
    assert main(["train", "toy", *DEBUG, f"logger={name}", f"run_dir={tmp_path / 'run'}"]) == 2
    assert f"pip install 'reverie[{name}]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_wandb_logs_offline_inside_the_run_and_a_resume_continues_the_same_wandb_run(tmp_path, capsys):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    assert main(["train", "toy", *DEBUG, "logger=wandb", "stop_after=100", f"run_dir={run}"]) == 130
    first = sorted((run / "logs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and list(first[0].glob("*.wandb"))  # the offline W&B run's data
    run_id = first[0].name.rsplit("-", 1)[-1]
    assert main(["train", "--resume", str(run), "stop_after=none"]) == 0
    runs = sorted((run / "logs" / "wandb" / "wandb").glob("offline-run-*"))
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {run_id}  # the same W&B run id
    assert json.loads((run / "summary.json").read_text())["eval/return"] is not None
    assert Path(run / "metrics.csv").exists()


def test_a_run_saved_with_the_old_tensorboard_field_still_loads():
    from reverie.runs import RunConfig, config_from_dict

    assert config_from_dict(RunConfig, {"seed": 2, "tensorboard": False}).logger == "csv"
    has_tb = run_loggers.importlib.util.find_spec("tensorboard") is not None
    assert config_from_dict(RunConfig, {"tensorboard": True}).logger == ("tensorboard" if has_tb else "csv")
    with pytest.raises(ValueError, match="Unknown field 'tensorbord'"):
        config_from_dict(RunConfig, {"tensorbord": True})
