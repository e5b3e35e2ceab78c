"""Planners: derivative-free optimisers of action sequences (CEM, MPPI, iCEM).

Planners optimise ``objective(actions (*E, N, H, A)) -> values (*E, N)`` and know nothing
of models; :func:`rollout_objective` builds such an objective from an imagination env and
:class:`PlannerPolicy` turns a planner into a TorchRL policy (MPC).
"""

from reverie.planners.base import Objective, Planner
from reverie.planners.cem import CEMPlanner, cem_update, top_k
from reverie.planners.icem import ICEMPlanner, colored_noise
from reverie.planners.mppi import MPPIPlanner, mppi_weights
from reverie.planners.objective import discounted_return, rollout_objective
from reverie.planners.policy import PlannerPolicy

__all__ = [
    "CEMPlanner",
    "ICEMPlanner",
    "MPPIPlanner",
    "Objective",
    "Planner",
    "PlannerPolicy",
    "cem_update",
    "colored_noise",
    "discounted_return",
    "mppi_weights",
    "rollout_objective",
    "top_k",
]
