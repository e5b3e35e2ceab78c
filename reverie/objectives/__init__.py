"""Losses: thin ``LossModule``s over pure functions."""

from reverie.objectives.dreamer_loss import DreamerActorLoss, DreamerModelLoss, DreamerValueLoss
from reverie.objectives.dreamer_math import (
    discount_weights,
    gaussian_kl,
    kl_free_nats,
    lambda_returns,
)
from reverie.objectives.dreamer_v3_loss import (
    DreamerV3ActorLoss,
    DreamerV3ModelLoss,
    DreamerV3ReplayValueLoss,
    DreamerV3ValueLoss,
    two_hot_mean,
)
from reverie.objectives.dreamer_v3_math import (
    categorical_kl,
    ema_update_,
    kl_balance,
    lambda_returns_v3,
    symexp,
    symexp_bins,
    symlog,
    two_hot_cross_entropy,
    two_hot_decode,
    two_hot_encode,
    unimix_logits,
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
    "DreamerV3ActorLoss",
    "DreamerV3ModelLoss",
    "DreamerV3ReplayValueLoss",
    "DreamerV3ValueLoss",
    "symexp",
    "symexp_bins",
    "symlog",
    "two_hot_cross_entropy",
    "two_hot_decode",
    "two_hot_encode",
    "two_hot_mean",
    "unimix_logits",
]
