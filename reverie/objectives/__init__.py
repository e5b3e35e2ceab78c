"""Losses: thin ``LossModule``s over pure functions."""

from reverie.objectives.ensemble_fit import fit_ensemble, member_mse
from reverie.objectives.ensemble_loss import EnsembleNLLLoss, gaussian_nll
from reverie.objectives.saturating_cost import ExpectedCostReward, ExponentialQuadraticCost
from reverie.objectives.world_model_loss import WorldModelLoss, distance

__all__ = [
    "ExpectedCostReward",
    "ExponentialQuadraticCost",
    "EnsembleNLLLoss",
    "WorldModelLoss",
    "distance",
    "fit_ensemble",
    "gaussian_nll",
    "member_mse",
]
