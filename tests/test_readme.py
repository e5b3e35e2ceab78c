"""The README's quick start runs as written and prints what it says."""

import contextlib
import io
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_opens_with_the_two_commands():
    head = README.read_text().split("## Quick start")[0]
    assert "make run" in head and "make test" in head


def test_quick_start_runs_and_prints_the_stated_shape():
    code = _quick_start()
    assert len(code.strip().splitlines()) <= 30
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    assert out.getvalue().strip() == "torch.Size([8, 15, 1])"
    # the reward head learned something: much better than predicting the mean reward
    data, loss_module = namespace["data"], namespace["loss_module"]
    reward = data["next", "reward"]
    assert loss_module(data)["loss_reward"] < 0.5 * reward.var()


def test_pilco_snippet_runs_and_prints_the_stated_shape():
    section = README.read_text().split("### PILCO", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    assert out.getvalue().strip() == "torch.Size([1, 20, 6, 6])"
    grads = [p.grad for p in namespace["controller"].parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_dreamer_snippet_runs_and_prints_the_stated_shape():
    section = README.read_text().split("### Dreamer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    assert out.getvalue().strip() == "torch.Size([400, 15, 1])"
    namespace["actor_td"]["loss_actor"].backward()
    assert all(p.grad is not None for p in namespace["actor"].parameters())
    assert all(p.grad is None for p in namespace["prior"].parameters())
    assert torch.isfinite(namespace["value_td"]["loss_value"])


def test_trained_agent_snippet_plays_an_episode(tmp_path):
    """The "Using a trained agent" example, on a PETS debug run."""
    from reverie.algorithms import pets
    from reverie.runs import resolve_config

    run_dir = tmp_path / "run"
    pets.train(resolve_config(pets.Config, ["debug"], [f"run_dir={run_dir}", "progress=false"]))
    section = README.read_text().split("### Using a trained agent", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = io.StringIO()
    namespace: dict = {"run_dir": str(run_dir)}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    printed = out.getvalue().strip()
    assert re.fullmatch(r"return -?\d+\.\d", printed), printed
    assert -2000 < namespace["episode_return"] < 0  # a whole episode: Pendulum rewards are in [-16.3, 0]
