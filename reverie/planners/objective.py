"""Objectives for planners from imagination environments.

Planners optimise ``objective(actions (*E, N, H, A)) -> values (*E, N)`` and know nothing of
models. :func:`rollout_objective` is the one place where an imagination env (any
:class:`~reverie.envs.ModelBasedEnvBase`, e.g. :class:`~reverie.envs.WorldModelEnv`) becomes
such an objective: it plays candidate action sequences back in the env through
``env.rollout`` and sums their discounted imagined rewards.
"""

from __future__ import annotations

import weakref

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torch import nn

__all__ = ["rollout_objective", "discounted_return"]


def discounted_return(
    rewards: torch.Tensor, dones: torch.Tensor | None = None, discount: float = 1.0
) -> torch.Tensor:
    """Discounted sum of rewards over the last dim, ignoring rewards after the first done.

    .. math::

        G = \\sum_{t=0}^{H-1} \\gamma^t\\, r_t\\, \\mathrm{alive}_t, \\qquad
        \\mathrm{alive}_t = \\prod_{s<t} (1 - d_s)

    so the reward of the step that ends a trajectory (``d_t = 1``) counts and the later
    ones do not.

    Args:
        rewards: ``(..., H)``.
        dones: done flags ``(..., H)`` (bool or 0/1), or ``None`` (never done).
        discount: ``gamma``.

    Returns:
        ``(...)`` returns.

    Examples:
        >>> import torch
        >>> rewards = torch.tensor([1.0, 2.0, 4.0, 8.0])
        >>> dones = torch.tensor([False, True, False, True])
        >>> discounted_return(rewards, dones, discount=0.5).item()  # 1 + 0.5 * 2
        2.0
    """
    horizon = rewards.shape[-1]
    weights = discount ** torch.arange(horizon, dtype=rewards.dtype, device=rewards.device)
    if dones is not None:
        alive = (1 - dones.to(rewards.dtype)).cumprod(dim=-1)  # alive after step t
        alive = torch.cat([torch.ones_like(alive[..., :1]), alive[..., :-1]], dim=-1)
        weights = weights * alive
    return (rewards * weights).sum(dim=-1)


class _Playback(nn.Module):
    """Plays back ``actions (*E, N, H, A)``: the t-th call returns step t, over particles.

    Plain ``nn.Module`` inside a plain ``TensorDictModule`` without inputs, so the fast
    rollout path of :class:`~reverie.envs.WorldModelEnv` applies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.actions: torch.Tensor | None = None
        self.particles = 1
        self.t = 0

    def load(self, actions: torch.Tensor, particles: int) -> None:
        self.actions, self.particles, self.t = actions, particles, 0

    def forward(self) -> torch.Tensor:
        if self.actions is None or self.t >= self.actions.shape[-2]:
            raise RuntimeError(
                "rollout_objective: the playback policy was called more often than the "
                "horizon of the action sequences it holds."
            )
        action = self.actions[..., self.t, :]  # (*E, N, A)
        self.t += 1
        shape = (*action.shape[:-1], self.particles, action.shape[-1])
        return action.unsqueeze(-2).expand(shape)  # (*E, N, P, A)


# one playback policy per env, reused by every objective built for it: WorldModelEnv caches
# its fast-rollout plan per policy object, so a fresh policy per call would grow that cache
_PLAYBACK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _playback_policy(env) -> TensorDictModule:
    action_key = unravel_key(env.action_key)
    policy = _PLAYBACK.get(env)
    if policy is None or unravel_key(policy.out_keys[0]) != action_key:
        policy = TensorDictModule(_Playback(), in_keys=[], out_keys=[action_key])
        _PLAYBACK[env] = policy
    return policy


def _flat(value: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``(*batch, *rest)`` to ``(*batch, prod(rest))``."""
    return value.reshape(*value.shape[:batch_dims], -1)


def rollout_objective(
    env,
    start: TensorDictBase,
    *,
    particles: int = 1,
    discount: float = 1.0,
    reward_key: NestedKey = ("next", "reward"),
    done_key: NestedKey | None = ("next", "done"),
):
    """An objective that scores action sequences by imagined discounted return in ``env``.

    For ``actions`` of shape ``(*E, N, H, A)`` the objective

    1. expands ``start`` (batch ``(*E,)``) to batch ``(*E, N, P)``, ``P = particles``;
    2. calls ``env.rollout(H, playback, tensordict=start_expanded,
       break_when_any_done=False)``, where ``playback`` is a plain ``TensorDictModule``
       whose t-th call writes ``actions[..., t, :]`` expanded to ``(*E, N, P, A)`` under
       ``env.action_key`` (so :class:`~reverie.envs.WorldModelEnv` takes its fast path);
    3. returns :func:`discounted_return` of the ``(*E, N, P, H)`` rewards, averaged over
       particles: ``values = mean_p sum_t discount^t r_t alive_t``, shape ``(*E, N)``.

    Done handling: ``alive_t = 1`` up to and including the first step whose done flag is
    set and 0 after it, so an imagined termination's own reward counts and nothing
    imagined past it does (the env keeps stepping ended trajectories; their rewards are
    ignored). Rewards and flags with several trailing entries are summed / or-ed per step.
    ``done_key=None`` ignores done flags.

    Particle layout: particles are the innermost batch dim. Flattened, the rollout's row
    ``r`` is candidate ``r // P`` and particle ``r % P`` (within env ``r // (N P)``). An
    ensemble world model that assigns member ``r % M`` to flattened row ``r`` (``M``
    members, ``P`` a multiple of ``M``; ``P = M`` for one particle per member, as in
    PETS' TS-inf) thus evaluates every candidate with every member, equally often.

    The env is only read through ``env.rollout``; it must be unbatched (``batch_size=[]``,
    not batch-locked: it steps any batch), and ``start`` must hold what its ``reset``
    needs (for a ``WorldModelEnv`` the latent). Root ``"next"`` entries of ``start`` are
    dropped. Gradients are not disabled here (planners call objectives under
    ``torch.no_grad()``). Actions are moved to ``env.device`` and values back to the
    actions' device.

    Args:
        env: a :class:`~reverie.envs.ModelBasedEnvBase` (or any unbatched ``EnvBase``
            whose ``rollout`` accepts a start tensordict).
        start: start states, batch ``(*E,)``.

    Keyword Args:
        particles: ``P`` rollouts per candidate (stochastic models, ensembles).
        discount: ``gamma``.
        reward_key: key of the rewards in the rollout.
        done_key: key of the done flags in the rollout, or ``None``.

    Returns:
        ``objective(actions (*E, N, H, A)) -> values (*E, N)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import GymEnv
        >>> from reverie.envs import WorldModelEnv
        >>> from reverie.modules import WorldModel
        >>> from reverie.planners import CEMPlanner, rollout_objective
        >>> base_env = GymEnv("Pendulum-v1")
        >>> world_model = WorldModel(
        ...     TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["latent"]),
        ...     TensorDictModule(torch.nn.Linear(5, 4), ["latent", "action"], [("next", "latent")]),
        ...     TensorDictModule(torch.nn.Linear(4, 1), [("next", "latent")], [("next", "reward")]))
        >>> env = WorldModelEnv(world_model, base_env)
        >>> start = world_model.encode(TensorDict({"observation": torch.randn(2, 3)}, [2]))
        >>> objective = rollout_objective(env, start, discount=0.99)
        >>> objective(torch.zeros(2, 16, 10, 1)).shape  # (E, N, H, A) -> (E, N)
        torch.Size([2, 16])
        >>> planner = CEMPlanner(action_spec=base_env.action_spec, horizon=10,
        ...                      num_candidates=16, num_elites=4, iterations=2)
        >>> planner.plan(objective, batch_shape=start.batch_size).shape
        torch.Size([2, 10, 1])
    """
    if particles < 1:
        raise ValueError(f"rollout_objective: particles must be >= 1, got {particles}.")
    if len(env.batch_size):
        raise ValueError(
            f"rollout_objective: the env has batch_size {tuple(env.batch_size)}; build the "
            "imagination env with batch_size=[] (it is not batch-locked and steps any batch, "
            "here (*E, N, P)), e.g. WorldModelEnv(world_model, base_env, batch_size=[])."
        )
    start = start.exclude("next")
    env_shape = start.batch_size
    reward_key = unravel_key(reward_key)
    done_key = unravel_key(done_key) if done_key is not None else None
    policy = _playback_policy(env)
    unchecked = {"check": False} if hasattr(env, "check") else {}  # WorldModelEnv's own checks

    def objective(actions: torch.Tensor) -> torch.Tensor:
        if actions.ndim != len(env_shape) + 3 or actions.shape[: len(env_shape)] != env_shape:
            raise ValueError(
                f"rollout_objective: actions must have shape (*E, N, H, A) with E = "
                f"{tuple(env_shape)} (the start's batch size); got {tuple(actions.shape)}."
            )
        device = actions.device
        if env.device is not None:
            actions = actions.to(env.device)
        num, horizon = actions.shape[-3], actions.shape[-2]
        batch = (*env_shape, num, particles)
        expanded = start.reshape(*env_shape, 1, 1).expand(*batch)  # (*E, N, P)
        policy.module.load(actions, particles)
        try:
            rollout = env.rollout(  # candidates with NaN returns are ranked last by the planners
                horizon, policy, tensordict=expanded, break_when_any_done=False, **unchecked
            )  # (*E, N, P, H)
        finally:
            policy.module.load(None, 1)  # do not keep the candidates alive
        dims = len(batch) + 1
        rewards = _flat(rollout.get(reward_key), dims).sum(-1)  # (*E, N, P, H)
        dones = None
        if done_key is not None:
            dones = _flat(rollout.get(done_key), dims).any(-1)  # (*E, N, P, H)
        values = discounted_return(rewards, dones, discount).mean(dim=-1)  # (*E, N)
        return values.to(device)

    return objective
