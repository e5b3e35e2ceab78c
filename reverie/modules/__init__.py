"""Prediction modules: world models and their components."""

from reverie.modules.world_model import WorldModel, WorldModelStep

__all__ = ["WorldModel", "WorldModelStep"]
