"""The loggers a run writes to besides its ``metrics.csv``: TorchRL's TensorBoard, W&B and MLflow loggers.

``metrics.csv`` (``step,name,value``) is always written: resume, ``reverie plot`` and
``reverie seeds`` read it, so it is the run's one CSV. ``logger=`` adds TorchRL loggers
(comma-separated): ``tensorboard`` (``logs/tensorboard/``), ``wandb`` and ``mlflow``. W&B
and MLflow write offline by default, inside the run folder (``logs/wandb/``,
``logs/mlflow/``): sync later with ``wandb sync`` or open with ``mlflow ui
--backend-store-uri <run>/logs/mlflow``. Each needs its package (extras
``reverie[tensorboard]``, ``reverie[wandb]``, ``reverie[mlflow]``); a missing one is an
error before the run folder is created.

>>> parse_loggers("csv")
[]
>>> parse_loggers("tensorboard, csv")
['tensorboard']
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

__all__ = ["LOGGERS", "parse_loggers", "make_tracking_logger", "tensorboard_logger"]

#: logger name -> the Python package it needs (``csv``: metrics.csv only, always written)
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def parse_loggers(text: str, *, check_packages: bool = False) -> list[str]:
    """The TorchRL loggers named in ``text`` (comma-separated; ``csv`` adds none).

    Raises:
        ValueError: an unknown name, or (``check_packages``) a logger whose package is not
            installed -- the message names the extra to install.
    """
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"logger={text!r}: unknown logger {name!r}; choose from "
                             f"{', '.join(LOGGERS)} (comma-separated for several).")
        package = LOGGERS[name]
        if check_packages and package and importlib.util.find_spec(package) is None:
            raise ValueError(f"logger={name} needs the {package!r} package, which is not installed: "
                             f"pip install 'reverie[{name}]' (or use logger=csv).")
    return [n for n in dict.fromkeys(names) if n != "csv"]


def tensorboard_logger(log_dir: Path, purge_step: int | None) -> Any:
    """TorchRL's TensorboardLogger under ``log_dir/tensorboard``; ``purge_step`` hides the
    events at or after that step (a resumed run rewrites them)."""
    from torchrl.record.loggers.tensorboard import TensorboardLogger

    class _PurgingTensorboardLogger(TensorboardLogger):
        def _create_experiment(self):
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=os.path.join(self.log_dir, self.exp_name), purge_step=purge_step)

    return _PurgingTensorboardLogger(exp_name="tensorboard", log_dir=str(log_dir))


def make_tracking_logger(name: str, run_dir: Path, experiment: str, config: dict, offline: bool) -> Any:
    """TorchRL's ``WandbLogger`` or ``MLFlowLogger`` for the run in ``run_dir``.

    W&B: project ``reverie``, the run's name, its config, offline (``logs/wandb/``) unless
    ``offline`` is False; the W&B run id is derived from the run folder, so a resumed run
    continues the same W&B run. MLflow: experiment ``reverie``, a file store under
    ``logs/mlflow/`` when ``offline``, else ``MLFLOW_TRACKING_URI``.
    """
    logs = Path(run_dir) / "logs"
    if name == "wandb":
        from torchrl.record.loggers.wandb import WandbLogger

        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        (logs / "wandb").mkdir(parents=True, exist_ok=True)
        return WandbLogger(exp_name=experiment, save_dir=str(logs / "wandb"), offline=offline,
                           project="reverie", config=config, id=run_id, resume="allow")
    if name == "mlflow":
        from torchrl.record.loggers.mlflow import MLFlowLogger

        uri = (logs / "mlflow").resolve().as_uri() if offline else os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ValueError("logger=mlflow with logger_offline=false needs MLFLOW_TRACKING_URI "
                             "(the MLflow server to log to).")
        return MLFlowLogger(exp_name="reverie", tracking_uri=uri, run_name=experiment)
    raise ValueError(f"not a tracking logger: {name!r}")
