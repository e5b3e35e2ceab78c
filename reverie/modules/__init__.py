"""Prediction modules: world models and their components."""

from reverie.modules.ensemble import EnsembleDynamics, EnsembleLinear, GaussianEnsemble
from reverie.modules.mlp import mlp
from reverie.modules.world_model import WorldModel, WorldModelStep

__all__ = ["EnsembleDynamics", "EnsembleLinear", "GaussianEnsemble", "WorldModel", "WorldModelStep", "mlp"]
