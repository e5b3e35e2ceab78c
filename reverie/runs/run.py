"""The :class:`Run` object: one run folder with its config, metrics, checkpoint and plots.

Layout of a run folder::

    runs/<algo>/<env>/<YYYYmmdd-HHMMSS>-s<seed>/
        config.json          {"algo": ..., "config": {...}}: what `--resume` and `eval` read
        metrics.csv          tidy scalar log: columns step,name,value (one row per scalar)
        logs/tensorboard/    TorchRL TensorboardLogger events (logger=tensorboard)
        logs/wandb/, logs/mlflow/   offline W&B / MLflow runs (logger=wandb, logger=mlflow)
        checkpoint.pt        latest checkpoint (atomic), see Run.save
        checkpoint.prev.pt   the one before: loaded when the latest is missing or unreadable
        summary.json         final metrics returned by the recipe
        learning_curve.png   one subplot per metric, drawn by Run.finish

Step and checkpoint convention: ``step`` is the recipe's monotone progress counter
(environment steps for online recipes, updates for offline ones). At a given step a
recipe first calls :meth:`Run.log`, then (if :meth:`Run.checkpoint_due`) :meth:`Run.save`
with a state dict whose ``"step"`` key is that counter. On resume, :meth:`Run.load`
restores the RNGs and drops every metric row logged after the checkpoint's step, so the
resumed run has neither duplicated nor missing rows.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from .checkpoint import (
    ResumeError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from .config import RunConfig, config_from_dict, config_to_dict, explicit_fields
from .loggers import make_tracking_logger, parse_loggers, tensorboard_logger
from .plots import METRICS_FILE, plot_learning_curves

__all__ = ["Run", "read_run_info"]

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder (see :meth:`Run._lock`)."""


class RunFolderError(ValueError):
    """A run folder that cannot be used: ``run_dir`` is a file or not writable, or its
    ``config.json`` is damaged."""
CURVE_FILE = "learning_curve.png"
_NOT_RESUMED = ("resume", "run_dir")


def quiet_console(verbose: bool = False) -> None:
    """Keep the console to the progress bar and the run's own messages.

    TorchRL's INFO lines (``Initialized LazyTensorStorage ...``) print over the progress bar:
    its logger is set to WARNING unless ``verbose``. Pixel envs rendered through SDL print
    "XDG_RUNTIME_DIR is invalid or not set" when that variable is missing (containers,
    CI): it is set to a private folder of this process when unset.
    """
    logging.getLogger("torchrl").setLevel(logging.INFO if verbose else logging.WARNING)
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="reverie-xdg-")  # mode 0700


def read_run_info(run_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Read ``<run_dir>/config.json``.

    Returns:
        ``(algo, config_dict)``: the recipe name and the saved config fields.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a run folder.
        RunFolderError: ``config.json`` is truncated or not a run's config.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a reverie run folder (no {CONFIG_FILE} in it).")
    try:
        data = json.loads(path.read_text())
        return data["algo"], dict(data["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise RunFolderError(
            f"{path} is damaged ({type(err).__name__}: {err}): it is not the JSON object "
            '{"algo": ..., "config": {...}} that a run writes. Restore it (each seed folder of '
            "`reverie seeds` also records its command in provenance.json) or start a new run."
        ) from err


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().double().mean().item())
    return float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Run:
    """A training run: folder, resolved config, metrics logging, progress bar, checkpoints.

    Creating a ``Run`` sets ``torch.set_num_threads(config.num_threads)`` and seeds
    ``random``, numpy and torch from ``config.seed``. For a new run it creates the folder
    (``config.run_dir`` or ``runs/<algo>/<env>/<YYYYmmdd-HHMMSS>-s<seed>``) and writes
    ``config.json``. With ``config.resume = RUN_DIR`` it reopens that folder and uses the
    config saved there. Fields of ``config`` (other than ``resume`` and ``run_dir``) that
    differ from the class defaults, or that :func:`~reverie.runs.resolve_config` set
    explicitly, override the saved values (e.g. a larger step budget); they are listed in
    :attr:`overrides` and ``config.json`` is rewritten with them.

    Recipes read hyper-parameters from :attr:`config` (not from the argument), because
    on resume it is the saved config.

    Exact resume: :meth:`save` stores the python/numpy/torch RNG states and :meth:`load`
    restores them, so a recipe whose state is fully in its checkpoint (modules,
    optimizers, replay buffer, counters) continues bit-for-bit. Environments are not
    checkpointed: a recipe should reset its env on resume (seeded from the step, e.g.
    ``env.set_seed(config.seed + step)``), so an env-driven run continues statistically
    rather than identically.

    Args:
        algo: the recipe's name in :data:`reverie.algorithms.ALGORITHMS`.
        config: the recipe's :class:`~reverie.runs.RunConfig` subclass instance.

    Attributes:
        algo: the recipe name.
        config: the resolved config (``run_dir`` filled in).
        dir: the run folder.
        resumed: whether this run continues an earlier one.
        overrides: on resume, the fields changed with respect to the saved config.
        start_step: the step restored by :meth:`load` (0 for new runs).
        loggers: the TorchRL loggers of ``config.logger`` (TensorBoard, W&B, MLflow; for a
            resumed run TensorBoard is opened by :meth:`load`), for anything beyond
            scalars (e.g. ``log_video``). ``metrics.csv`` is written apart.

    Recipes do not use a ``Run`` directly: the shared loop
    :func:`reverie.training.train` opens one and calls :meth:`load`, :meth:`log`,
    :meth:`checkpoint_due`, :meth:`save` and :meth:`finish` in that order. A custom loop
    can do the same::

        run = Run("mytoy", config)
        config = run.config                      # on resume: the saved config
        state = run.load()                       # None for a new run
        step = 0 if state is None else state["step"]
        with run.progress(config.total_steps, "training") as bar:
            while step < config.total_steps:
                loss = ...; step += 1; bar.update(1)
                run.log({"train/loss": loss}, step)
                if run.checkpoint_due(step):
                    run.save({"step": step, "model": model.state_dict()})
        return run.finish({"train/loss": loss})
    """

    #: the folder of the most recently created run (the CLI prints it on Ctrl-C)
    last_dir: ClassVar[Path | None] = None

    def __init__(self, algo: str, config: RunConfig) -> None:
        self.algo = algo
        self.overrides: dict[str, Any] = {}
        self.created_dir = False  # this Run made its folder (a new run in a new folder)
        self._auto_dir = False  # ... under runs/<algo>/<env>/
        self._lock_fh = None
        if config.resume:
            self.dir = Path(config.resume)
            self._lock()
            self.config = self._resumed_config(config)
            self.resumed = True
        else:
            self.dir = self._new_dir(algo, config)
            self._lock()
            self.config = dataclasses.replace(config, run_dir=str(self.dir))
            self.resumed = False
        if not self.resumed:  # a resumed run's config.json is rewritten once it resumes
            self._write_config()
        Run.last_dir = self.dir

        torch.set_num_threads(self.config.num_threads)
        quiet_console(getattr(self.config, "verbose", False))
        seed_everything(self.config.seed)

        self.start_step = 0
        self._last_save_step = 0
        self._bar: tqdm | None = None
        self._latest: dict[str, float] = {}
        self._last_row_step: int | None = None
        self._names_at_last_step: set[str] = set()
        self._metrics_fh = None
        self._closed = False
        if not self.resumed or not self.metrics_path.exists():
            self.metrics_path.write_text("step,name,value\n")
        self.loggers = self._make_loggers()

    # ------------------------------------------------------------------ construction

    def _lock(self) -> None:
        """Hold ``<dir>/.lock`` (an advisory ``flock``, released when this process ends,
        even by SIGKILL) for as long as the run is open: a second process on the same run
        folder is refused before it changes anything."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        if not self.dir.is_dir():
            return  # resume of a missing folder: read_run_info names the problem
        fh = open(self.dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLockedError(
                f"{self.dir} is in use by {holder}: two processes must not train in one run "
                "folder. Wait for it to finish (or stop it), then resume.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._lock_fh = fh

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing the file releases the flock
            self._lock_fh = None

    def _new_dir(self, algo: str, config: RunConfig) -> Path:
        if config.run_dir:
            path = Path(config.run_dir)
            if (path / CONFIG_FILE).exists():
                raise FileExistsError(
                    f"{path} already holds a run. Continue it with `resume={path}` "
                    "(reverie train --resume ...) or choose another run_dir."
                )
            if path.exists() and not path.is_dir():
                raise RunFolderError(f"run_dir={path} is a file, not a folder: give a folder path.")
            self.created_dir = not path.exists()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunFolderError(f"run_dir={path} cannot be created: {err}.") from err
            if not os.access(path, os.W_OK | os.X_OK):
                raise RunFolderError(
                    f"run_dir={path} is not writable: choose a folder you can write to.")
            return path
        env = config.env.replace("/", "-").replace(":", "-")
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-s{config.seed}"
        base = Path("runs") / algo / env
        base.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = base / (stem if i == 0 else f"{stem}-{i}")
            try:
                path.mkdir()
                self.created_dir = self._auto_dir = True
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"Could not create a fresh run folder under {base}.")

    def _resumed_config(self, config: RunConfig) -> RunConfig:
        saved_algo, saved = read_run_info(self.dir)
        if saved_algo != self.algo:
            raise ValueError(
                f"{self.dir} is a {saved_algo!r} run; it cannot be resumed by {self.algo!r}."
            )
        cls = type(config)
        base = config_from_dict(cls, saved)
        for name in ("env", "seed"):  # another task or seed is another run, not a resume
            if name in explicit_fields(config) and getattr(config, name) != getattr(base, name):
                raise ResumeError(
                    f"{self.dir} is a run with {name}={getattr(base, name)!r}; it cannot be "
                    f"resumed with {name}={getattr(config, name)!r}. Start a new run for that.")
        defaults = cls()
        explicit = explicit_fields(config)
        for f in dataclasses.fields(cls):
            if not f.init or f.name in _NOT_RESUMED:
                continue
            value = getattr(config, f.name)
            changed = f.name in explicit or value != getattr(defaults, f.name)
            if changed and value != getattr(base, f.name):
                self.overrides[f.name] = value
        return dataclasses.replace(
            base, **self.overrides, resume=str(self.dir), run_dir=str(self.dir)
        )

    def _make_loggers(self) -> list:
        """TorchRL loggers named by ``config.logger`` (metrics.csv is written apart)."""
        names = parse_loggers(getattr(self.config, "logger", "csv"))
        self._tensorboard_pending = "tensorboard" in names
        loggers = []
        if self._tensorboard_pending and not self.resumed:
            loggers.append(self._tensorboard_logger(purge_step=None))
        # a resumed run opens TensorBoard in load(), which knows the step to purge after
        for name in names:
            if name in ("wandb", "mlflow"):
                loggers.append(make_tracking_logger(
                    name, self.dir, self.dir.name, config_to_dict(self.config),
                    offline=getattr(self.config, "logger_offline", True)))
        return loggers

    def _tensorboard_logger(self, purge_step: int | None) -> Any:
        """TorchRL's TensorboardLogger; ``purge_step`` hides events at or after that step."""
        self._tensorboard_pending = False
        return tensorboard_logger(self.dir / "logs", purge_step)

    def discard(self) -> bool:
        """Remove the folder of a new run that failed while it was being set up (e.g. an
        unknown env id), so no empty run folder is left behind. Only a folder this Run
        created and that holds no checkpoint is removed; returns whether it was."""
        if self.resumed or not self.created_dir or self.checkpoint_path.exists():
            return False
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.config.run_dir or self._auto_dir:  # runs/<algo>/<env>/ if now empty
            try:
                self.dir.parent.rmdir()
            except OSError:
                pass
        return True

    # ------------------------------------------------------------------ paths

    @property
    def checkpoint_path(self) -> Path:
        """``<dir>/checkpoint.pt``."""
        return self.dir / CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        """``<dir>/metrics.csv`` (columns ``step,name,value``)."""
        return self.dir / METRICS_FILE

    def path(self, name: str) -> Path:
        """Path of an extra file in the run folder (e.g. a diagnostic plot); creates subfolders.

        Example: ``run.path("diagnostics/imagined_vs_real.png")`` -> ``<dir>/diagnostics/imagined_vs_real.png``.
        """
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ logging

    def log(self, metrics: Mapping[str, float | torch.Tensor], step: int) -> None:
        """Log scalar metrics at ``step``.

        Writes to the TorchRL loggers and appends one ``step,name,value`` row per metric
        to ``metrics.csv``. Use namespaced names: ``train/loss_reward``, ``eval/return``.

        Args:
            metrics: name -> scalar (Python number or one-element tensor; a larger tensor
                is averaged).
            step: the recipe's progress counter (see the module docstring).
        """
        values = {name: _to_float(v) for name, v in metrics.items()}
        if self._tensorboard_pending:  # resumed without load(): nothing to purge
            self.loggers.append(self._tensorboard_logger(purge_step=None))
        for logger in self.loggers:
            logger.log_metrics(values, step=int(step))
        if self._metrics_fh is None:
            self._metrics_fh = open(self.metrics_path, "a", newline="")
        writer = csv.writer(self._metrics_fh)
        for name, value in values.items():
            writer.writerow([int(step), name, repr(value)])
        self._metrics_fh.flush()
        self._latest.update(values)
        self._note_rows(int(step), values)

    def _note_rows(self, step: int, names) -> None:
        if step != self._last_row_step:
            self._last_row_step, self._names_at_last_step = step, set()
        self._names_at_last_step.update(names)

    def logged_names(self, step: int) -> set[str]:
        """Names with a row at ``step`` in ``metrics.csv``, if ``step`` is the latest step
        logged (resumed runs included); an empty set for any other step. A loop that may
        be resumed after its final rows were written uses it to never write them twice."""
        return set(self._names_at_last_step) if step == self._last_row_step else set()

    @property
    def latest(self) -> dict[str, float]:
        """The last value logged for every metric name."""
        return dict(self._latest)

    def print(self, *args: Any) -> None:
        """Print a message without breaking the progress bar."""
        msg = " ".join(str(a) for a in args)
        if self._bar is not None and not self._bar.disable:
            self._bar.write(msg)
        else:
            print(msg)

    # ------------------------------------------------------------------ progress bar

    def progress(self, total: int, desc: str | None = None, unit: str = "step") -> tqdm:
        """A tqdm progress bar from :attr:`start_step` to ``total`` (disabled if ``config.progress`` is False).

        Call it after :meth:`load` so a resumed run starts the bar at its checkpoint.
        Advance it with ``bar.update(n)``; show metrics with :meth:`progress_postfix`.
        """
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(
            total=total,
            initial=min(self.start_step, total),
            desc=desc or f"{self.algo} {self.config.env}",
            unit=unit,
            disable=not self.config.progress,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        return self._bar

    def progress_postfix(self, metrics: Mapping[str, float] | None = None, **kwargs: float) -> None:
        """Show metrics after the progress bar, e.g. ``run.progress_postfix(run.latest)``.

        Names are shortened to their last ``/`` part; values use 4 significant digits.
        """
        if self._bar is None:
            return
        items = {**(metrics or {}), **kwargs}
        shown = {k.rsplit("/", 1)[-1]: f"{_to_float(v):.4g}" for k, v in items.items()}
        self._bar.set_postfix(shown, refresh=False)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_due(self, step: int) -> bool:
        """True when ``step`` has crossed a multiple of ``config.checkpoint_every`` since the last save.

        Works when the counter advances by more than 1 (e.g. frames per batch).
        Always False when ``checkpoint_every`` is 0.
        """
        every = self.config.checkpoint_every
        return every > 0 and step // every > self._last_save_step // every

    def save(self, state: dict[str, Any]) -> Path:
        """Atomically save a checkpoint to :attr:`checkpoint_path`.

        Args:
            state: must hold ``"step"`` (int, the counter of the last :meth:`log` call
                that this state includes). ``"rng"`` is added automatically with
                :func:`~reverie.runs.capture_rng_state` unless present. Module, optimizer
                and replay buffer ``state_dict()`` s go in as they are.

        Returns:
            The checkpoint path.
        """
        if "step" not in state:
            raise ValueError("A checkpoint state must contain the progress counter under 'step'.")
        state = dict(state)
        state.setdefault("rng", capture_rng_state())
        for logger in self.loggers:
            logger.flush()
        if self._metrics_fh is not None:
            self._metrics_fh.flush()
        save_checkpoint(self.checkpoint_path, state)
        self._last_save_step = int(state["step"])
        return self.checkpoint_path

    def _write_config(self) -> None:
        _write_text_atomic(
            self.dir / CONFIG_FILE,
            json.dumps({"algo": self.algo, "config": config_to_dict(self.config)}, indent=2) + "\n",
        )

    def load(self, *, restore_rng: bool = True, weights_only: bool = True) -> dict[str, Any] | None:
        """Load the checkpoint of a resumed run; None for a new run or when none was saved.

        :meth:`read_checkpoint` then :meth:`begin`: for a resumed run it also restores the
        RNG states saved by :meth:`save`, sets :attr:`start_step`, drops the metric rows
        logged after the checkpoint's step (all rows if there is no checkpoint, since the
        recipe then starts over) and rewrites ``config.json`` with the resumed settings.
        A loop that must first check that the checkpoint fits its model calls the two
        separately, so that a refused resume leaves the run folder as it was.

        Args:
            restore_rng: restore ``state["rng"]``.
            weights_only: passed to :func:`~reverie.runs.load_checkpoint`.
        """
        state = self.read_checkpoint(weights_only=weights_only)
        self.begin(state, restore_rng=restore_rng)
        return state

    def read_checkpoint(self, *, weights_only: bool = True) -> dict[str, Any] | None:
        """The checkpoint of a resumed run (None for a new run or when none was saved),
        read without changing anything in the run folder."""
        if not self.resumed:
            return None
        state = load_checkpoint(self.checkpoint_path, weights_only=weights_only)
        if state is not None and "step" not in state:
            raise ValueError(f"{self.checkpoint_path} has no 'step' entry.")
        return state

    def begin(self, state: dict[str, Any] | None, *, restore_rng: bool = True) -> None:
        """Start (or continue) the run from ``state`` (what :meth:`read_checkpoint` gave):
        see :meth:`load`. Nothing happens for a new run."""
        if not self.resumed:
            return
        self._write_config()
        if state is None:
            self._truncate_metrics(None)
            return
        step = int(state["step"])
        if restore_rng and "rng" in state:
            restore_rng_state(state["rng"])
        self._truncate_metrics(step)
        self.start_step = self._last_save_step = step
        changed = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        self.print(
            f"Resuming {self.dir} from step {step}" + (f" with {changed}" if changed else "")
        )

    def _truncate_metrics(self, step: int | None) -> None:
        """Drop rows with a step above ``step`` (all rows if None) from every CSV log."""

        def keep(row_step: str) -> bool:
            return step is not None and int(row_step) <= step

        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
        with open(self.metrics_path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = (rows[0], rows[1:]) if rows else (["step", "name", "value"], [])
        body = [r for r in body if r and keep(r[0])]
        tmp = self.metrics_path.with_name(f".{METRICS_FILE}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header, *body])
        os.replace(tmp, self.metrics_path)

        self._latest = {}
        self._last_row_step, self._names_at_last_step = None, set()
        for r in body:
            self._latest[r[1]] = float(r[2])
            self._note_rows(int(r[0]), [r[1]])

        if self._tensorboard_pending:
            self.loggers.append(
                self._tensorboard_logger(purge_step=0 if step is None else step + 1)
            )

    # ------------------------------------------------------------------ end

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """End the run: write ``summary.json``, draw ``learning_curve.png``, print where they are.

        Args:
            summary: the recipe's final metrics (numbers, tensors, strings, nested dicts).

        Returns:
            ``summary`` as a plain dict (what ``train`` should return).
        """
        summary = dict(summary)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _write_text_atomic(self.dir / SUMMARY_FILE, json.dumps(_jsonable(summary), indent=2) + "\n")
        self.close()
        png = None
        try:
            png = plot_learning_curves(
                [self.metrics_path],
                self.dir / CURVE_FILE,
                labels=[self.dir.name],
                title=f"{self.algo} on {self.config.env} (seed {self.config.seed})",
            )
        except ValueError:
            pass  # nothing was logged
        except Exception as err:  # a plotting problem must not lose a finished run
            warnings.warn(f"Could not draw the learning curve: {err}", stacklevel=2)
        scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        if scalars:
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}"
                for k, v in scalars.items()
            )
            print(f"Final metrics: {shown}")
        print(f"Run folder: {self.dir}")
        if png is not None:
            print(f"Learning curves: {png}")
        sys.stdout.flush()
        return summary

    def close(self) -> None:
        """Close the progress bar, the metric file and the loggers, and release the run
        folder's lock (idempotent)."""
        self._unlock()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._metrics_fh is not None:
            self._metrics_fh.close()
            self._metrics_fh = None
        if self._closed:
            return
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if close is not None:
                close()
        self._closed = True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run(algo={self.algo!r}, dir='{self.dir}', resumed={self.resumed})"
