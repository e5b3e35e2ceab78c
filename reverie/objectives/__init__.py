"""Losses: thin ``LossModule``s over pure functions."""

from reverie.objectives.world_model_loss import WorldModelLoss, distance

__all__ = ["WorldModelLoss", "distance"]
