"""Recipes: one readable module per algorithm.

Each recipe module defines a typed dataclass ``Config`` (a subclass of
:class:`reverie.runs.RunConfig`, with a ``PRESETS`` mapping that contains at least
``"debug"``), ``make_env(config)`` (the task, on the CPU), ``make_agent(config, env,
device)`` (its :class:`reverie.training.Agent`: modules, optimisers, update maths) and
``train(config) -> dict``, which hands the three to the shared loop
:func:`reverie.training.train`. ``reverie eval`` and :func:`reverie.load_agent` rebuild the
agent with ``make_env`` and ``make_agent``. The ``reverie`` command finds recipes through
:data:`ALGORITHMS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: algorithm name -> (module path, one-line description)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "worldmodel": (
        "reverie.algorithms.world_model",
        "fit a WorldModel to real transitions and report open-loop diagnostics",
    ),
    "pilco": (
        "reverie.algorithms.pilco",
        "PILCO: GP dynamics + moment matching + analytic policy gradients (RBF controller)",
    ),
    "dreamer": (
        "reverie.algorithms.dreamer",
        "Dreamer v1: RSSM world model, actor and value learned in latent imagination",
    ),
    "dreamer_v3": (
        "reverie.algorithms.dreamer_v3",
        "DreamerV3: discrete-latent RSSM, symlog/two-hot heads, actor-critic in imagination",
    ),
    "pets": (
        "reverie.algorithms.pets",
        "PETS: probabilistic ensemble + trajectory sampling + MPC (CEM/MPPI/iCEM)",
    ),
}


def register_algorithm(name: str, module: str, description: str = "") -> None:
    """Register a recipe module under ``name`` so ``reverie train NAME`` finds it."""
    ALGORITHMS[name] = (module, description)


def load_algorithm(name: str) -> ModuleType:
    """Import the recipe module registered under ``name``.

    Raises:
        KeyError: if ``name`` is not registered; the message lists the known names.
    """
    if name not in ALGORITHMS:
        raise KeyError(
            f"Unknown algorithm {name!r}. Known algorithms: {sorted(ALGORITHMS)}. "
            "Run `reverie --help` to list them."
        )
    return importlib.import_module(ALGORITHMS[name][0])
