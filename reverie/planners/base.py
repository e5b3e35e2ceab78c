"""``Planner``: the base of the derivative-free trajectory optimisers (CEM, MPPI, iCEM).

A planner optimises open-loop action sequences against an *objective*, any callable

.. code-block:: text

    objective(actions) -> values
    actions: (*E, N, H, A)   E: batch of environments (any number of dims, none included),
                             N: candidates, H: horizon, A: action dimension
    values:  (*E, N)         higher is better

Planners know nothing of models or environments: :func:`reverie.planners.rollout_objective`
builds an objective from an imagination env, and :class:`reverie.planners.PlannerPolicy`
turns a planner into a TorchRL policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Objective", "Planner"]

Objective = Callable[[torch.Tensor], torch.Tensor]


def _as_bounds(action_low, action_high, action_spec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` of shape ``(A,)`` from explicit bounds or a bounded TorchRL spec."""
    if action_spec is not None:
        if action_low is not None or action_high is not None:
            raise TypeError(
                "Planner: pass either action_low/action_high or action_spec=, not both."
            )
        space = getattr(action_spec, "space", None)
        if space is None or not hasattr(space, "low"):
            raise TypeError(
                f"Planner: action_spec must be a bounded spec (torchrl.data.Bounded), got "
                f"{type(action_spec).__name__}. Pass action_low=/action_high= for other specs."
            )
        low, high = space.low, space.high
        if low.ndim > 1:  # a batched spec (*B, A): the planner's bounds are per env
            flat_low, flat_high = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
            if not (torch.equal(flat_low, flat_low[:1].expand_as(flat_low))
                    and torch.equal(flat_high, flat_high[:1].expand_as(flat_high))):
                raise ValueError(
                    f"Planner: action_spec of shape {tuple(low.shape)} has different bounds "
                    "across its batch dims; planners take one (A,) box for every env."
                )
            low, high = flat_low[0], flat_high[0]
    else:
        if action_low is None or action_high is None:
            raise TypeError(
                "Planner needs the action bounds: action_low=..., action_high=... (shape (A,)) "
                "or action_spec=<a torchrl Bounded spec>."
            )
        high = torch.as_tensor(action_high)
        low = torch.as_tensor(action_low, device=high.device)
    low = torch.atleast_1d(low)
    if not low.is_floating_point():
        low = low.to(torch.get_default_dtype())
    high = torch.atleast_1d(high).to(low)
    if low.ndim != 1 or low.shape != high.shape:
        raise ValueError(
            f"Planner: action_low and action_high must both have shape (A,); got "
            f"{tuple(low.shape)} and {tuple(high.shape)}."
        )
    if not torch.isfinite(high - low).all() or (low > high).any():  # also +-3.4e38 (Unbounded)
        raise ValueError(
            f"Planner: action bounds must be finite with low <= high and a finite range "
            f"high - low; got low={low.tolist()}, high={high.tolist()}. An unbounded action "
            "spec has no range to sample plans from: give the real bounds, "
            "e.g. action_spec=Bounded(-2.0, 2.0, (A,)) or action_low=..., action_high=...."
        )
    return low, high


class Planner(nn.Module):
    """Base class of the trajectory optimisers: bounds, warm start, shape checks.

    A planner searches action sequences ``(*E, H, A)`` that maximise an objective. It is
    batched over environments ``E`` and candidates ``N``: each optimisation iteration makes
    one call ``objective(actions)`` with ``actions`` of shape ``(*E, N, H, A)`` and expects
    values of shape ``(*E, N)`` (higher is better; NaN counts as ``-inf``). Every action it
    samples, evaluates or returns lies in ``[action_low, action_high]``.

    Warm start: :meth:`plan` keeps its result in the ``solution`` buffer. With
    ``warm_start=True`` the next call starts from that solution shifted one step forward
    in time, its last step filled with the middle of the bounds (receding-horizon MPC
    executes the first action, so the rest of the plan is the best guess for the next
    state); see :meth:`initial_guess`. :meth:`reset` forgets it for all or some envs (call
    it at episode starts). A call with a different ``batch_shape`` starts cold. The
    buffer is not persistent (not in ``state_dict``) and moves with ``.to(device)``.

    Planning runs under ``torch.no_grad()``: the optimisers use objective values only.

    Subclasses implement :meth:`_optimize`.

    Args:
        action_low, action_high: bounds of shape ``(A,)`` (or anything ``torch.as_tensor``
            turns into that). The planner works on their device.
        horizon: planning horizon ``H``.

    Keyword Args:
        action_spec: a bounded TorchRL spec (``Bounded``) instead of the two bounds.
        warm_start: start each plan from the previous (shifted) solution.

    Examples:
        >>> import torch
        >>> from reverie.planners import CEMPlanner
        >>> planner = CEMPlanner(-torch.ones(2), torch.ones(2), horizon=4, num_candidates=64,
        ...                      num_elites=8, iterations=3)
        >>> planner.initial_guess().shape  # no solution yet: the middle of the bounds
        torch.Size([4, 2])
        >>> plan = planner.plan(lambda a: -(a - 0.5).pow(2).sum((-2, -1)))
        >>> guess = planner.initial_guess()  # the plan shifted by one step
        >>> torch.equal(guess[:-1], plan[1:]), guess[-1].tolist()
        (True, [0.0, 0.0])
        >>> planner.reset()
        >>> planner.solution is None
        True
    """

    def __init__(
        self,
        action_low: torch.Tensor | Sequence[float] | None = None,
        action_high: torch.Tensor | Sequence[float] | None = None,
        horizon: int = 15,
        *,
        action_spec=None,
        warm_start: bool = True,
    ) -> None:
        super().__init__()
        low, high = _as_bounds(action_low, action_high, action_spec)
        if int(horizon) < 1:
            raise ValueError(f"Planner: horizon must be >= 1, got {horizon}.")
        self.horizon = int(horizon)
        self.warm_start = bool(warm_start)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("_solution", None, persistent=False)
        self._all_finite: torch.Tensor | None = None  # per plan: every iteration had a finite value

    # ------------------------------------------------------------------ properties
    @property
    def action_dim(self) -> int:
        """Action dimension ``A``."""
        return self.action_low.shape[-1]

    @property
    def solution(self) -> torch.Tensor | None:
        """The last plan ``(*E, H, A)`` returned by :meth:`plan` (``None`` after :meth:`reset`)."""
        return self._solution

    def middle(self) -> torch.Tensor:
        """Middle of the bounds ``(low + high) / 2``, shape ``(A,)``: the initial mean."""
        return (self.action_low + self.action_high) / 2

    def half_range(self) -> torch.Tensor:
        """Half the action range ``(high - low) / 2``, shape ``(A,)``: the default spread."""
        return (self.action_high - self.action_low) / 2

    def _spread(self, value, name: str) -> torch.Tensor:
        """A standard deviation of shape ``(A,)`` from ``None`` (half range), a float or a tensor."""
        if value is None:
            return self.half_range()
        std = torch.as_tensor(value, dtype=self.action_low.dtype, device=self.action_low.device)
        std = std.expand(self.action_dim).clone()
        if (std < 0).any():
            raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {std.tolist()}.")
        return std

    # ------------------------------------------------------------------ warm start
    def initial_guess(self, batch_shape: Sequence[int] | torch.Size = ()) -> torch.Tensor:
        """Mean sequence ``(*E, H, A)`` the next :meth:`plan` call starts from.

        The previous solution shifted by one step (``guess[..., t, :] = solution[..., t + 1, :]``,
        last step = middle of the bounds) when ``warm_start`` is on and a solution of this
        batch shape is stored; the middle of the bounds everywhere otherwise.
        """
        batch_shape = torch.Size(batch_shape)
        middle = self.middle().expand(*batch_shape, self.horizon, self.action_dim)
        if not self._has_warm_start(batch_shape):
            return middle.clone()
        return torch.cat([self._solution[..., 1:, :], middle[..., -1:, :]], dim=-2)

    def _has_warm_start(self, batch_shape: torch.Size) -> bool:
        return (
            self.warm_start
            and self._solution is not None
            and self._solution.shape == (*batch_shape, self.horizon, self.action_dim)
        )

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        """Forget the stored solution (warm start) for all envs, or for those in ``env_mask``.

        Args:
            env_mask: ``None`` (all envs) or a bool tensor of the planning batch shape
                ``(*E,)``: the masked envs start from the middle of the bounds next time.
        """
        if env_mask is None or self._solution is None:
            self._solution = None
            self._forget(None)
            return
        env_mask = torch.as_tensor(env_mask, dtype=torch.bool, device=self._solution.device)
        batch_shape = self._solution.shape[:-2]
        if env_mask.shape != batch_shape:
            raise ValueError(
                f"{type(self).__name__}.reset: env_mask has shape {tuple(env_mask.shape)} but the "
                f"stored solution is for a batch of envs {tuple(batch_shape)}."
            )
        self._solution = torch.where(env_mask[..., None, None], self.middle(), self._solution)
        self._forget(env_mask)

    def _forget(self, env_mask: torch.Tensor | None) -> None:
        """Hook: subclasses with more per-env state forget it (all envs when ``None``)."""

    # ------------------------------------------------------------------ planning
    def clip(self, actions: torch.Tensor) -> torch.Tensor:
        """Clamp ``actions (..., A)`` to the bounds."""
        return torch.clamp(actions, self.action_low, self.action_high)

    def evaluate(self, objective, actions: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """``objective(actions)`` with its shape checked; non-finite values (NaN, +-inf)
        become ``-inf`` (the worst). :meth:`plan` raises if, in some iteration, no candidate
        of an env got a finite value."""
        values = objective(actions)
        expected = actions.shape[:-2]
        if not isinstance(values, torch.Tensor) or values.shape != expected:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(
                f"{type(self).__name__}: the objective must map actions (*E, N, H, A) = "
                f"{tuple(actions.shape)} to values (*E, N) = {tuple(expected)}; got {got}. "
                f"(Planning batch_shape E = {tuple(batch_shape)}; reduce over H and any "
                "particle dims inside the objective.)"
            )
        finite = torch.isfinite(values)
        ok = finite.any(-1)  # (*E,): at least one candidate with a finite value
        self._all_finite = ok if self._all_finite is None else self._all_finite & ok
        return torch.where(finite, values, torch.full_like(values, float("-inf")))

    @torch.no_grad()
    def plan(
        self,
        objective: Objective,
        batch_shape: Sequence[int] | torch.Size = (),
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Optimise an action sequence for each env.

        Args:
            objective: ``objective(actions (*E, N, H, A)) -> values (*E, N)``, higher is better.
            batch_shape: the env batch ``E`` (``()`` for a single env).

        Keyword Args:
            generator: a ``torch.Generator`` on the bounds' device for the sampling noise
                (default: the global RNG).

        Returns:
            the plan ``(*E, H, A)``, within the bounds (also kept as ``solution``).

        Raises:
            ValueError: the objective returned no finite value for some env in some
                iteration (see :meth:`evaluate`).
        """
        batch_shape = torch.Size(batch_shape)
        warm = self._has_warm_start(batch_shape)
        mean = self.initial_guess(batch_shape)
        self._all_finite = None
        result = self.clip(self._optimize(objective, mean, batch_shape, warm, generator))
        if self._all_finite is not None and not bool(self._all_finite.all()):  # one sync per plan
            bad = (~self._all_finite).nonzero().tolist()
            raise ValueError(
                f"{type(self).__name__}: the objective gave no finite value (NaN or +-inf for "
                f"every candidate) in some iteration for env index(es) {bad[:10]} of batch "
                f"{tuple(batch_shape)}; no plan is made from it. The model or the reward "
                "produced NaN/inf: check the world model (e.g. a diverged fit) and the reward.")
        self._solution = result.clone()
        return result

    def forward(self, objective: Objective, batch_shape: Sequence[int] | torch.Size = ()):
        """Same as :meth:`plan`."""
        return self.plan(objective, batch_shape)

    def _optimize(
        self,
        objective: Objective,
        mean: torch.Tensor,
        batch_shape: torch.Size,
        warm: bool,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Return the optimised sequence ``(*E, H, A)`` starting from ``mean (*E, H, A)``."""
        raise NotImplementedError

    def _randn(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(
            shape, generator=generator, dtype=self.action_low.dtype, device=self.action_low.device
        )

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, horizon={self.horizon}, warm_start={self.warm_start}"
