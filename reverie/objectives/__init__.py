"""Losses: thin ``LossModule``s over pure functions."""

from reverie.objectives.dreamer_loss import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss
from reverie.objectives.dreamer_math import (
    discount_weights,
    gaussian_kl,
    kl_free_nats,
    lambda_returns,
)
from reverie.objectives.dreamer_v3_math import (
    categorical_kl,
    ema_update_,
    kl_balance,
    lambda_returns_v3,
)
from reverie.objectives.ensemble_fit import fit_ensemble, member_mse
from reverie.objectives.ensemble_loss import EnsembleNLLLoss, gaussian_nll
from reverie.objectives.return_normalizer import ReturnNormalizer
from reverie.objectives.saturating_cost import ExpectedCostReward, ExponentialQuadraticCost
from reverie.objectives.world_model_loss import WorldModelLoss, distance

__all__ = [
    "DreamerActorLoss",
    "DreamerModelLoss",
    "DreamerValueLoss",
    "discount_weights",
    "gaussian_kl",
    "kl_free_nats",
    "lambda_returns",
    "ExpectedCostReward",
    "ExponentialQuadraticCost",
    "EnsembleNLLLoss",
    "WorldModelLoss",
    "distance",
    "fit_ensemble",
    "gaussian_nll",
    "member_mse",
    "categorical_kl",
    "ema_update_",
    "kl_balance",
    "lambda_returns_v3",
    "ReturnNormalizer",
]
