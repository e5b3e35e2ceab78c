"""``PlannerPolicy``: a planner as a TorchRL policy (receding-horizon MPC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from reverie.planners.base import Objective, Planner

__all__ = ["PlannerPolicy"]


class PlannerPolicy(TensorDictModuleBase):
    """Model-predictive control: plan at every step and act with the plan's first action.

    On each call with a tensordict ``td`` of batch ``(*E,)`` (one or many real envs):

    1. envs that start a new episode get their warm start forgotten
       (``planner.reset(mask)``, see below);
    2. ``objective = objective_factory(td)`` (e.g. encode the observation and return
       :func:`~reverie.planners.rollout_objective` of an imagination env);
    3. ``plan = planner.plan(objective, batch_shape=td.batch_size)``, ``(*E, H, A)``;
    4. ``td[out_keys[0]] = plan[..., 0, :]``, ``(*E, A)``; the td is returned.

    New episodes: an env starts one when ``td`` holds, at its root, ``is_init`` set
    (TorchRL's ``InitTracker``), ``step_count`` equal to 0 (``StepCounter``), or a
    ``done`` / ``terminated`` / ``truncated`` flag set (the td is the last step of an
    episode, whose next action belongs to a new one). Without these keys the policy cannot
    see episode boundaries: call :meth:`reset` between episodes (e.g. before each
    ``env.rollout``) or add an ``InitTracker`` to the env. A batch of another shape than
    the previous call's starts cold.

    Args:
        planner: a :class:`~reverie.planners.Planner`.
        objective_factory: ``objective_factory(td) -> objective`` with
            ``objective(actions (*E, N, H, A)) -> values (*E, N)``.

    Keyword Args:
        in_keys: keys the factory reads (declared for TorchRL; default ``["observation"]``).
        out_keys: ``[action_key]`` (default ``["action"]``).

    Examples:
        >>> import torch
        >>> from torchrl.envs import GymEnv
        >>> from reverie.planners import CEMPlanner, PlannerPolicy
        >>> env = GymEnv("Pendulum-v1")
        >>> planner = CEMPlanner(action_spec=env.action_spec, horizon=5, num_candidates=32,
        ...                      num_elites=4, iterations=2)
        >>> def objective_factory(td):  # a toy objective: small torques
        ...     return lambda actions: -actions.pow(2).sum((-2, -1))
        >>> policy = PlannerPolicy(planner, objective_factory)
        >>> rollout = env.rollout(3, policy)
        >>> rollout["action"].shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        planner: Planner,
        objective_factory: Callable[[TensorDictBase], Objective],
        *,
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] = ("action",),
    ) -> None:
        super().__init__()
        if len(out_keys) != 1:
            raise ValueError(
                f"PlannerPolicy writes one action: out_keys must hold one key, got {list(out_keys)}."
            )
        self.planner = planner
        self.objective_factory = objective_factory
        self.in_keys = list(in_keys)
        self.out_keys = list(out_keys)

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        """Forget the planner's warm start (all envs, or those in ``env_mask`` ``(*E,)``)."""
        self.planner.reset(env_mask)

    def episode_starts(self, td: TensorDictBase) -> torch.Tensor | None:
        """Bool ``(*E,)`` mask of envs that start a new episode, or ``None`` if ``td`` cannot tell."""
        batch = td.batch_size
        mask = None
        for key, test in (
            ("is_init", lambda v: v.bool()),
            ("step_count", lambda v: v == 0),
            ("done", lambda v: v.bool()),
            ("terminated", lambda v: v.bool()),
            ("truncated", lambda v: v.bool()),
        ):
            value = td.get(key, None)
            if not isinstance(value, torch.Tensor):
                continue
            flag = test(value).reshape(*batch, -1).any(-1)  # (*E,)
            mask = flag if mask is None else mask | flag
        return mask

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        starts = self.episode_starts(tensordict)
        solution = self.planner.solution
        if starts is not None and solution is not None and (
            solution.shape[:-2] == tensordict.batch_size
        ):
            if bool(starts.all()):
                self.planner.reset()
            elif bool(starts.any()):
                self.planner.reset(starts.to(solution.device))
        objective = self.objective_factory(tensordict)
        plan = self.planner.plan(objective, batch_shape=tensordict.batch_size)  # (*E, H, A)
        action = plan[..., 0, :]  # (*E, A)
        if tensordict.device is not None:
            action = action.to(tensordict.device)
        tensordict.set(self.out_keys[0], action)
        return tensordict
