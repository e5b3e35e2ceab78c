"""A miniature recipe for the run-infrastructure tests, shaped like a real recipe.

It fits a linear model to noisy targets ``y = x @ w_true + noise``: every step it
"collects" a small batch of fresh samples into a TorchRL replay buffer, samples a
minibatch from the buffer and takes one SGD step. It has everything a real recipe has:
a typed ``Config`` with presets, a ``train(config) -> dict`` loop that logs through
:class:`~reverie.runs.Run`, periodic atomic checkpoints (model, optimizer, replay buffer,
step; the Run adds the RNG state), exact resume through ``run.load()``, and an
``evaluate(config) -> dict`` used by ``reverie eval``.

The ``env`` field is unused (it only names the run folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer

from reverie.runs import Run, RunConfig, cfg, load_checkpoint

NAME = "toy"


@dataclass
class Config(RunConfig):
    """Toy regression recipe used by the tests."""

    total_steps: int = cfg(300, "Number of collect-and-update steps.")
    collect_per_step: int = cfg(4, "New samples added to the replay buffer every step.")
    batch_size: int = cfg(16, "Minibatch size sampled from the replay buffer.")
    buffer_size: int = cfg(10_000, "Replay buffer capacity.")
    obs_dim: int = cfg(3, "Input dimension of the linear model.")
    lr: float = cfg(0.05, "SGD learning rate.")
    momentum: float = cfg(0.9, "SGD momentum (optimizer state that must survive a resume).")
    noise: float = cfg(0.1, "Standard deviation of the target noise.")
    eval_every: int = cfg(50, "Log eval/error every this many steps.")
    checkpoint_every: int = cfg(100, "Save checkpoint.pt every this many steps.")
    stop_after: int | None = cfg(
        None, "Testing aid: raise KeyboardInterrupt after this step, like a killed run."
    )

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {
        "debug": {"total_steps": 60, "eval_every": 10, "checkpoint_every": 20, "progress": False},
        "small_batch": {"batch_size": 4},
    }


def _true_weights(config: Config) -> torch.Tensor:
    """Target weights, from a private generator so the global RNG is untouched."""
    g = torch.Generator().manual_seed(1000 + config.seed)
    return torch.randn(config.obs_dim, 1, generator=g)


def _eval_error(model: nn.Module, config: Config) -> float:
    """Mean squared error on a fixed evaluation set (private generator)."""
    g = torch.Generator().manual_seed(2000 + config.seed)
    x = torch.randn(256, config.obs_dim, generator=g)
    with torch.no_grad():
        return float(((model(x) - x @ _true_weights(config)) ** 2).mean())


def _make_model(config: Config) -> nn.Module:
    return nn.Linear(config.obs_dim, 1).to(config.device)


def train(config: Config) -> dict:
    """Train the toy model; returns the final metrics (also written to summary.json)."""
    run = Run(NAME, config)
    config = run.config  # on resume: the saved config
    w_true = _true_weights(config)
    model = _make_model(config)
    optim = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(config.buffer_size), batch_size=config.batch_size
    )

    step = 0
    state = run.load()  # None for a new run
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        buffer.load_state_dict(state["buffer"])
        step = state["step"]

    def checkpoint() -> dict:
        return {
            "step": step,
            "model": model.state_dict(),
            "optim": optim.state_dict(),
            "buffer": buffer.state_dict(),
        }

    bar = run.progress(config.total_steps, "toy")
    loss = torch.tensor(float("nan"))
    while step < config.total_steps:
        x = torch.randn(config.collect_per_step, config.obs_dim)
        y = x @ w_true + config.noise * torch.randn(config.collect_per_step, 1)
        buffer.extend(TensorDict(obs=x, target=y, batch_size=[config.collect_per_step]))

        batch = buffer.sample()
        loss = nn.functional.mse_loss(model(batch["obs"]), batch["target"])
        optim.zero_grad()
        loss.backward()
        optim.step()

        step += 1
        bar.update(1)
        metrics = {"train/loss": loss.item()}
        if step % config.eval_every == 0:
            metrics["eval/error"] = _eval_error(model, config)
        run.log(metrics, step)  # log first ...
        run.progress_postfix(run.latest)
        if run.checkpoint_due(step):  # ... then checkpoint at the same step
            run.save(checkpoint())
        if config.stop_after is not None and step >= config.stop_after:
            raise KeyboardInterrupt

    run.save(checkpoint())
    return run.finish(
        {
            "eval/error": _eval_error(model, config),
            "train/loss": loss.item(),
            "weight": model.weight.detach().flatten().tolist(),
            "steps": step,
        }
    )


def evaluate(config: Config) -> dict:
    """Evaluate the checkpoint in ``config.run_dir`` (used by ``reverie eval``)."""
    state = load_checkpoint(f"{config.run_dir}/checkpoint.pt")
    if state is None:
        raise FileNotFoundError(f"No checkpoint in {config.run_dir}.")
    model = _make_model(config)
    model.load_state_dict(state["model"])
    return {"eval/error": _eval_error(model, config), "step": state["step"]}
