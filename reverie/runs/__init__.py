"""Shared run infrastructure used by every recipe in :mod:`reverie.algorithms`.

- :mod:`~reverie.runs.config` - typed dataclass configs (:class:`RunConfig`, :func:`cfg`),
  presets and ``field=value`` overrides (:func:`resolve_config`), ``--help`` text.
- :mod:`~reverie.runs.run` - :class:`Run`: run folder, ``config.json``, metric logging
  through TorchRL loggers plus a tidy ``metrics.csv``, progress bar, checkpoints, resume.
- :mod:`~reverie.runs.checkpoint` - atomic :func:`save_checkpoint`, RNG capture/restore.
- :mod:`~reverie.runs.plots` - :func:`plot_learning_curves` from ``metrics.csv`` files.
"""

from .checkpoint import (
    CheckpointError,
    ResumeError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from .config import (
    RunConfig,
    apply_overrides,
    apply_preset,
    cfg,
    cfg_factory,
    config_from_dict,
    config_to_dict,
    explicit_fields,
    format_help,
    parse_value,
    read_config_file,
    resolve_config,
)
from .plots import plot_learning_curves, read_metrics
from .run import Run, RunFolderError, RunLockedError, read_run_info
from .seeds import collect_results, run_seeds

__all__ = [
    "RunLockedError",
    "RunFolderError",
    "RunConfig",
    "cfg",
    "cfg_factory",
    "resolve_config",
    "apply_preset",
    "apply_overrides",
    "parse_value",
    "config_to_dict",
    "config_from_dict",
    "format_help",
    "explicit_fields",
    "read_config_file",
    "Run",
    "read_run_info",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "ResumeError",
    "capture_rng_state",
    "restore_rng_state",
    "seed_everything",
    "plot_learning_curves",
    "read_metrics",
    "run_seeds",
    "collect_results",
]
