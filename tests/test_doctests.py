"""Every ``>>>`` example in the library's docstrings runs and prints what it says.

One case per module under ``reverie/`` (found with ``pkgutil.walk_packages``), run with
``doctest`` under ``ELLIPSIS | NORMALIZE_WHITESPACE`` after ``torch.manual_seed(0)``. A
module with a failing example fails its case, with doctest's report as the message.

A module that cannot be imported because an *optional* extra is missing (``reverie[gp]``,
``reverie[mujoco]``, ...) is skipped with the missing package named; any other import
error fails. Examples marked ``# doctest: +SKIP`` are not checked: a module with any
reports them as an xfail naming the module and the count, after its other examples pass.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import tempfile

import pytest
import torch

import reverie

OPTIONAL_EXTRAS = {"gpytorch", "botorch", "mujoco", "dm_control", "tensorboard", "wandb", "mlflow", "yaml"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    names = [reverie.__name__]
    for info in pkgutil.walk_packages(reverie.__path__, prefix=f"{reverie.__name__}."):
        names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def run_doctests(module) -> tuple[doctest.TestResults, str, int]:
    """Run the docstring examples of ``module``.

    Returns:
        doctest's results, its report of the failures, and the number of examples marked
        ``# doctest: +SKIP`` (not run, so not checked).
    """
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    skipped = 0
    for test in sorted(finder.find(module, module.__name__), key=lambda t: t.name):
        skipped += sum(bool(ex.options.get(doctest.SKIP)) for ex in test.examples)
        if test.examples:
            runner.run(test, out=report.write)
    return runner.summarize(verbose=False), report.getvalue(), skipped


def test_modules_found():
    assert {
        "reverie.envs.model_based",
        "reverie.envs.imagined",
        "reverie.modules.world_model",
        "reverie.objectives.world_model_loss",
    } <= set(MODULES)


def test_runner_reports_a_failing_example():
    import types

    module = types.ModuleType("fake_module")
    module.__doc__ = ">>> 1 + 1\n3\n>>> 2 + 2  # doctest: +SKIP\n5\n>>> print('a   b')\na b\n"
    results, report, skipped = run_doctests(module)
    assert results.attempted == 2 and results.failed == 1 and skipped == 1
    assert "Expected:\n    3\nGot:\n    2" in report


def test_core_modules_have_examples():
    for name in (
        "reverie.envs.model_based",
        "reverie.envs.imagined",
        "reverie.modules.world_model",
        "reverie.objectives.world_model_loss",
    ):
        results, _, _ = run_doctests(importlib.import_module(name))
        assert results.attempted > 0, name


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in OPTIONAL_EXTRAS:
            pytest.skip(f"{name} needs the optional package {err.name!r}")
        raise
    # files an example writes (relative paths, tempfile.mkdtemp()) land in pytest's tmp dir
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    torch.manual_seed(0)
    results, report, skipped = run_doctests(module)
    assert results.failed == 0, f"{results.failed} failing example(s) in {name}:\n{report}"
    if skipped:
        # not a pass: those examples were never checked (visible as an xfail, not hidden)
        pytest.xfail(f"{name}: {skipped} example(s) marked '# doctest: +SKIP' are not run")
