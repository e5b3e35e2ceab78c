"""The library never imports TorchRL's model-based code (the published reference).

Reverie uses TorchRL for infrastructure only (``EnvBase``, specs, collectors, replay
buffers, ``LossModule``, value estimators, model-free losses). Its model-based parts are
its own: no file under ``reverie/`` may import ``torchrl.envs.model_based``, TorchRL's
world-model modules, planners, GP/RBF models, Dreamer/PILCO losses or the DreamerV3
trainer. Benchmarks (outside ``reverie/``) may import them for side-by-side comparisons.

Imports are found with ``ast``: ``import a.b [as c]``, ``from a.b import (c, d)``, relative
imports are irrelevant (they stay inside ``reverie``), and string literals passed to
``importlib.import_module`` / ``__import__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reverie

FORBIDDEN_MODULES = (
    "torchrl.envs.model_based",
    "torchrl.modules.models.model_based",
    "torchrl.modules.models.gp",
    "torchrl.modules.models.rbf_controller",
    "torchrl.modules.planners",
    "torchrl.modules.tensordict_module.world_models",  # WorldModel, WorldModelWrapper
    "torchrl.objectives.world_model_loss",
    "torchrl.objectives.pilco",
    "torchrl.trainers.algorithms.dreamer_v3",
)
# module prefixes: anything starting with these (torchrl.objectives.dreamer, ...dreamer_v3, ...)
FORBIDDEN_MODULE_PREFIXES = ("torchrl.objectives.dreamer", "torchrl.modules.WorldModel")

# names re-exported by TorchRL packages that come from the modules above
FORBIDDEN_NAMES = {
    "torchrl.envs": {
        "ModelBasedEnvBase",
        "DreamerEnv",
        "DreamerDecoder",
        "ImaginedEnv",
        "MeanActionSelector",
        "model_based",
    },
    "torchrl.modules": {
        "RSSMPrior",
        "RSSMPosterior",
        "RSSMRollout",
        "RSSMPriorV3",
        "RSSMPosteriorV3",
        "RSSMRolloutV3",
        "ObsEncoder",
        "ObsDecoder",
        "DreamerActor",
        "CEMPlanner",
        "MPPIPlanner",
        "MPCPlannerBase",
        "GPWorldModel",
        "RBFController",
        "planners",
    },
    "torchrl.modules.models": {
        "RSSMPrior",
        "RSSMPosterior",
        "RSSMRollout",
        "ObsEncoder",
        "ObsDecoder",
        "DreamerActor",
        "GPWorldModel",
        "RBFController",
        "model_based",
        "gp",
        "rbf_controller",
    },
    "torchrl.objectives": {
        "DreamerModelLoss",
        "DreamerActorLoss",
        "DreamerValueLoss",
        "DreamerV3ModelLoss",
        "DreamerV3ActorLoss",
        "DreamerV3ValueLoss",
        "WorldModelLoss",
        "ExponentialQuadraticCost",
        "symlog",
        "symexp",
        "two_hot_encode",
        "two_hot_decode",
        "world_model_loss",
        "pilco",
    },
    "torchrl.trainers.algorithms": {"dreamer_v3"},
}
FORBIDDEN_NAMES["torchrl.modules"] |= {"SymExpTwoHot", "symlog", "symexp", "world_models"}
FORBIDDEN_NAMES["torchrl.modules.functional"] = {"symlog", "symexp"}
FORBIDDEN_NAMES["torchrl.modules.tensordict_module"] = {"world_models"}
# any name starting with these, from these packages (WorldModelWrapper, Dreamer*, RSSM*, ...)
FORBIDDEN_NAME_PREFIXES = {
    "torchrl.modules": ("WorldModel", "RSSM", "Dreamer", "two_hot"),
    "torchrl.modules.models": ("WorldModel", "RSSM", "Dreamer", "two_hot"),
    "torchrl.modules.tensordict_module": ("WorldModel",),
    "torchrl.objectives": ("Dreamer", "dreamer", "two_hot", "categorical_kl"),
    "torchrl.envs": ("Dreamer",),
    "torchrl.trainers.algorithms": ("Dreamer", "dreamer"),
}


def _reexported_names() -> dict[str, set[str]]:
    """Names that TorchRL's public packages re-export from the forbidden modules.

    Read from the installed TorchRL (``obj.__module__``), so a re-export the lists above
    miss is still caught.
    """
    import importlib
    import warnings

    found: dict[str, set[str]] = {}
    for package in FORBIDDEN_NAME_PREFIXES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(package)
        except ImportError:  # pragma: no cover - depends on the TorchRL version
            continue
        for name in dir(module):
            owner = getattr(getattr(module, name), "__module__", None)
            if not isinstance(owner, str):  # submodules: use their own name
                owner = getattr(getattr(module, name), "__name__", "")
            if isinstance(owner, str) and _forbidden_module(owner):
                found.setdefault(package, set()).add(name)
    return found


def _forbidden_module(module: str) -> bool:
    if any(module == m or module.startswith(m + ".") for m in FORBIDDEN_MODULES):
        return True
    return any(module.startswith(prefix) for prefix in FORBIDDEN_MODULE_PREFIXES)


def _forbidden_name(package: str, name: str) -> bool:
    if _forbidden_module(f"{package}.{name}"):
        return True
    if name in FORBIDDEN_NAMES.get(package, ()) or name in _REEXPORTED.get(package, ()):
        return True
    return name.startswith(FORBIDDEN_NAME_PREFIXES.get(package, ()))


_REEXPORTED = _reexported_names()


def _import_call_target(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("...")`` / ``__import__("...")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every forbidden import in ``source``, as ``"line N: what"``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _forbidden_module(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _forbidden_module(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
                continue
            for alias in node.names:
                if alias.name == "*" and node.module in FORBIDDEN_NAMES:
                    found.append(f"line {node.lineno}: from {node.module} import *")
                elif _forbidden_name(node.module, alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            target = _import_call_target(node)
            if target is None:
                continue
            if _forbidden_module(target):
                found.append(f"line {node.lineno}: import_module({target!r})")
    return found


# ---------------------------------------------------------------- the checker itself
@pytest.mark.parametrize(
    "snippet",
    [
        "import torchrl.envs.model_based",
        "import torchrl.envs.model_based.dreamer as d",
        "from torchrl.envs.model_based import ModelBasedEnvBase",
        "from torchrl.envs.model_based.dreamer import DreamerEnv",
        "from torchrl.envs import ModelBasedEnvBase",
        "from torchrl.envs import (\n    EnvBase,\n    DreamerEnv,\n)",
        "from torchrl.modules import WorldModelWrapper",
        "from torchrl.modules import (EnvBase, RSSMPrior)",
        "from torchrl.modules import ObsEncoder as Enc",
        "from torchrl.modules import CEMPlanner",
        "from torchrl.modules import MPPIPlanner",
        "from torchrl.modules import GPWorldModel",
        "from torchrl.modules.models.model_based import RSSMPosterior",
        "import torchrl.modules.models.gp",
        "from torchrl.modules.models import rbf_controller",
        "from torchrl.modules.planners.cem import CEMPlanner",
        "import torchrl.modules.planners as planners",
        "from torchrl.objectives import DreamerModelLoss",
        "from torchrl.objectives import WorldModelLoss",
        "from torchrl.objectives import ExponentialQuadraticCost",
        "from torchrl.objectives import symlog, two_hot_encode",
        "from torchrl.modules import SymExpTwoHot",
        "from torchrl.modules import DreamerV3MLP, RSSMStateEstimatorV3",
        "from torchrl.modules.tensordict_module.world_models import WorldModelWrapper",
        "from torchrl.modules.tensordict_module import WorldModelWrapper",
        "from torchrl.objectives import DreamerV3Loss",
        "from torchrl.trainers.algorithms import DreamerV3Optimizer",
        "from torchrl.objectives.dreamer import DreamerActorLoss",
        "import torchrl.objectives.dreamer_v3",
        "from torchrl.objectives.world_model_loss import WorldModelLoss",
        "from torchrl.objectives.pilco import ExponentialQuadraticCost",
        "from torchrl.objectives import pilco",
        "from torchrl.trainers.algorithms.dreamer_v3 import DreamerV3Trainer",
        "from torchrl.trainers.algorithms import dreamer_v3",
        "import importlib\nm = importlib.import_module('torchrl.envs.model_based')",
        "from importlib import import_module\nimport_module('torchrl.objectives.dreamer')",
        "__import__('torchrl.modules.planners')",
        "def f():\n    from torchrl.objectives import DreamerValueLoss\n    return DreamerValueLoss",
    ],
)
def test_checker_flags_forbidden_imports(snippet):
    assert forbidden_imports(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "from torchrl.envs import EnvBase",
        "from torchrl.envs import EnvBase, TransformedEnv, GymEnv",
        "from torchrl.envs.utils import check_env_specs",
        "from torchrl.objectives import LossModule",
        "from torchrl.objectives import SACLoss, ValueEstimators",
        "from torchrl.objectives.value import GAE, TDLambdaEstimator",
        "from torchrl.modules import MLP, TanhNormal, ProbabilisticActor",
        "from torchrl.data import Composite, Unbounded, ReplayBuffer",
        "from torchrl.collectors import Collector",
        "import torchrl",
        "import torchrl.envs as envs",
        "from reverie.envs.model_based import ModelBasedEnvBase",
        "from .model_based import ModelBasedEnvBase",
        "from reverie.objectives import WorldModelLoss",
        "import importlib\nimportlib.import_module('torchrl.envs')",
        "s = 'torchrl.envs.model_based'  # a string, not an import",
    ],
)
def test_checker_accepts_allowed_imports(snippet):
    assert forbidden_imports(snippet) == []


def test_reexported_names_are_read_from_torchrl():
    # the dynamic list finds re-exports of the installed TorchRL (0.14: all of these exist)
    assert {"ModelBasedEnvBase", "ImaginedEnv"} <= _REEXPORTED["torchrl.envs"]
    assert {"CEMPlanner", "RSSMPrior", "WorldModelWrapper"} <= _REEXPORTED["torchrl.modules"]
    assert {"DreamerModelLoss", "ExponentialQuadraticCost"} <= _REEXPORTED["torchrl.objectives"]


def test_checker_reports_line_numbers():
    source = "import torch\n\nfrom torchrl.objectives import (\n    LossModule,\n    DreamerModelLoss,\n)\n"
    assert forbidden_imports(source) == ["line 3: from torchrl.objectives import DreamerModelLoss"]


# ---------------------------------------------------------------- the library
LIBRARY_FILES = sorted(Path(reverie.__file__).parent.rglob("*.py"))


def test_library_files_found():
    names = {path.name for path in LIBRARY_FILES}
    assert {"world_model.py", "model_based.py", "world_model_loss.py"} <= names


@pytest.mark.parametrize(
    "path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(Path(reverie.__file__).parent))
)
def test_library_never_imports_torchrl_model_based_code(path):
    found = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert not found, f"{path} imports TorchRL's model-based code: {found}"
