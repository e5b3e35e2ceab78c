"""Reverie: model-based reinforcement learning on PyTorch, TensorDict and TorchRL.

Subpackages:

- :mod:`reverie.modules` - prediction: :class:`~reverie.modules.WorldModel` and its components.
- :mod:`reverie.envs` - rollout: imagination environments (:class:`~reverie.envs.WorldModelEnv`).
- :mod:`reverie.objectives` - losses (:class:`~reverie.objectives.WorldModelLoss`).
- :mod:`reverie.runs` - shared run infrastructure (configs, run folders, logging, checkpoints).
- :mod:`reverie.algorithms` - one readable recipe per algorithm.
- :mod:`reverie.diagnostics` - world-model diagnostics (open-loop prediction error).
"""

__version__ = "0.1.0"


def load_agent(run_dir, **kwargs):
    """Load a trained agent from a run folder; see :func:`reverie.training.load_agent`."""
    from reverie.training import load_agent as _load

    return _load(run_dir, **kwargs)
