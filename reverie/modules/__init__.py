"""Prediction modules: world models and their components."""

from reverie.modules.dreamer_nets import DreamerActor, ObsDecoder, ObsEncoder
from reverie.modules.dreamer_policy import DreamerPolicy
from reverie.modules.dreamer_v3_nets import (
    ClippedNormal,
    DreamerV3ContinuousActor,
    DreamerV3DiscreteActor,
    DreamerV3ImageDecoder,
    DreamerV3ImageEncoder,
    DreamerV3MLP,
    SymExpTwoHot,
)
from reverie.modules.ensemble import EnsembleDynamics, EnsembleLinear, GaussianEnsemble
from reverie.modules.gp_world_model import GPWorldModel
from reverie.modules.mlp import mlp
from reverie.modules.rbf_controller import PseudoTargetRBFController, RBFController
from reverie.modules.rssm import RSSMPosterior, RSSMPrior, RSSMRollout
from reverie.modules.rssm_v3 import BlockLinear, RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3
from reverie.modules.rssm_world_model import RSSMStart, RSSMStep, RSSMWorldModel
from reverie.modules.world_model import WorldModel, WorldModelStep

__all__ = [
    "DreamerActor",
    "DreamerPolicy",
    "ObsDecoder",
    "ObsEncoder",
    "RSSMPosterior",
    "RSSMPrior",
    "RSSMRollout",
    "BlockLinear",
    "ClippedNormal",
    "DreamerV3ContinuousActor",
    "DreamerV3DiscreteActor",
    "DreamerV3ImageDecoder",
    "DreamerV3ImageEncoder",
    "DreamerV3MLP",
    "RSSMPosteriorV3",
    "RSSMPriorV3",
    "RSSMRolloutV3",
    "RSSMStart",
    "RSSMStep",
    "RSSMWorldModel",
    "SymExpTwoHot",
    "EnsembleDynamics",
    "EnsembleLinear",
    "GPWorldModel",
    "GaussianEnsemble",
    "PseudoTargetRBFController",
    "RBFController",
    "WorldModel",
    "WorldModelStep",
    "mlp",
]
