"""``WorldModelLoss``: supervised losses of a world model on real transitions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from reverie.validation import NonFiniteError, check_finite

__all__ = ["WorldModelLoss", "distance"]

_DISTANCES = ("l1", "l2", "smooth_l1")


def distance(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise distance between a prediction and its target.

    * ``"l2"``: ``(p - y)^2``
    * ``"l1"``: ``|p - y|``
    * ``"smooth_l1"``: ``0.5 (p - y)^2`` if ``|p - y| < 1`` else ``|p - y| - 0.5``
    * ``"bce"``: ``-[y log s(p) + (1 - y) log(1 - s(p))]`` with ``s`` the sigmoid (``p``
      are logits, ``y`` in ``[0, 1]``)

    Args:
        prediction: ``(*S)`` predictions.
        target: ``(*S)`` targets, same shape (no broadcasting: a ``(B, 1)`` vs ``(B,)``
            mismatch would silently become ``(B, B)``).
        kind: one of ``l1``, ``l2``, ``smooth_l1``, ``bce``.

    Returns:
        ``(*S)`` element-wise losses.

    Examples:
        >>> distance(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), "l2")
        tensor([1., 4.])
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"distance: prediction shape {tuple(prediction.shape)} != target shape "
            f"{tuple(target.shape)}; make the head output the target's shape."
        )
    target = target.to(prediction.dtype)
    if kind == "l2":
        return (prediction - target).pow(2)
    if kind == "l1":
        return (prediction - target).abs()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, reduction="none")
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(prediction, target, reduction="none")
    raise ValueError(f"Unknown distance {kind!r}; choose one of {[*_DISTANCES, 'bce']}.")


def _next(key: NestedKey) -> tuple:
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


class WorldModelLoss(LossModule):
    """Supervised losses of a :class:`~reverie.modules.WorldModel` on real transitions.

    The batch's ground truth ``("next", reward)`` / ``("next", done)`` (and
    ``terminated``) is moved to ``("next", true_reward)`` / ``("next", true_done)`` /
    ``("next", true_terminated)`` before the model runs, so the model can write its
    predictions under the usual keys. Each selected term is the mean element-wise
    :func:`distance` times its weight:

    * ``loss_reward``: ``d(r_hat, r)`` on ``("next", reward)``.
    * ``loss_done``: ``d(done_hat, y)`` where ``y`` is the true *terminated* flag when
      the batch has one, else the true done flag: a time-limit truncation is not
      something the model can or should predict. With ``done_loss="bce"`` the head
      outputs logits.
    * ``loss_reconstruction``: ``d(observation_hat, observation)`` at the root.
    * ``loss_latent``: ``d(predicted_latent, target_latent)`` (e.g. dynamics vs the
      encoding of the next observation; detach the target yourself if wanted).

    Args:
        world_model: the model (called once on the batch).

    Keyword Args:
        losses: subset of ``{"reward", "done", "reconstruction", "latent"}``
            (default ``["reward"]``), each at most once; the output keeps this order.
        reward_loss, reconstruction_loss, latent_loss: ``l1 | l2 | smooth_l1``.
        done_loss: ``l1 | l2 | smooth_l1 | bce`` (bce on logits).
        reward_weight, done_weight, reconstruction_weight, latent_weight: weights.

    Returns (forward):
        a TensorDict of scalar ``loss_<name>`` entries, one per selected loss, in the
        order of ``losses``.

    Raises:
        ValueError: an unknown or repeated loss name, an unknown distance name (the
            message lists valid ones), or a prediction whose shape differs from its target's.
        KeyError: a ground-truth or predicted key is missing (named in the message).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import WorldModel
        >>> from reverie.objectives import WorldModelLoss
        >>> wm = WorldModel(
        ...     TensorDictModule(torch.nn.Linear(8, 4), ["observation"], ["latent"]),
        ...     TensorDictModule(torch.nn.Linear(6, 4), ["latent", "action"], [("next", "latent")]),
        ...     TensorDictModule(torch.nn.Linear(4, 1), [("next", "latent")], [("next", "reward")]))
        >>> batch = TensorDict({"observation": torch.randn(4, 8), "action": torch.randn(4, 2),
        ...                     "next": {"reward": torch.randn(4, 1)}}, [4])
        >>> list(WorldModelLoss(wm)(batch).keys())
        ['loss_reward']
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read and written by :class:`WorldModelLoss` (change with ``set_keys``).

        Attributes:
            reward: predicted reward, under ``"next"``. Default ``"reward"``.
            true_reward: where the true reward is moved, under ``"next"``.
            done: predicted done flag, under ``"next"``.
            true_done: where the true done flag is moved, under ``"next"``.
            terminated: true terminated flag in the batch, under ``"next"``.
            true_terminated: where it is moved, under ``"next"``.
            observation: the real observation (reconstruction target).
            reconstructed_observation: the decoder's output.
            predicted_latent: the dynamics' latent prediction.
            target_latent: its target.
        """

        reward: NestedKey = "reward"
        true_reward: NestedKey = "true_reward"
        done: NestedKey = "done"
        true_done: NestedKey = "true_done"
        terminated: NestedKey = "terminated"
        true_terminated: NestedKey = "true_terminated"
        observation: NestedKey = "observation"
        reconstructed_observation: NestedKey = "reconstructed_observation"
        predicted_latent: NestedKey = "predicted_latent"
        target_latent: NestedKey = "target_latent"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    VALID_LOSSES = ("reward", "done", "reconstruction", "latent")

    def __init__(
        self,
        world_model,
        *,
        losses: Sequence[str] | None = None,
        reward_loss: str = "l2",
        done_loss: str = "l2",
        reconstruction_loss: str = "l2",
        latent_loss: str = "l2",
        reward_weight: float = 1.0,
        done_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        latent_weight: float = 1.0,
    ) -> None:
        super().__init__()
        losses = ["reward"] if losses is None else list(losses)
        unknown = [name for name in losses if name not in self.VALID_LOSSES]
        if unknown:
            raise ValueError(
                f"Unknown loss type(s) {unknown}; valid choices are {list(self.VALID_LOSSES)}."
            )
        if not losses:
            raise ValueError(f"WorldModelLoss needs at least one loss of {list(self.VALID_LOSSES)}.")
        duplicates = sorted({name for name in losses if losses.count(name) > 1})
        if duplicates:
            raise ValueError(f"WorldModelLoss: loss(es) {duplicates} requested more than once.")
        for arg, value, valid in (
            ("reward_loss", reward_loss, _DISTANCES),
            ("done_loss", done_loss, (*_DISTANCES, "bce")),
            ("reconstruction_loss", reconstruction_loss, _DISTANCES),
            ("latent_loss", latent_loss, _DISTANCES),
        ):
            if value not in valid:
                raise ValueError(f"Unknown {arg}={value!r}; choose one of {list(valid)}.")
        self.world_model = world_model
        self.losses = losses
        self.distances = {
            "reward": reward_loss,
            "done": done_loss,
            "reconstruction": reconstruction_loss,
            "latent": latent_loss,
        }
        self.weights = {
            "reward": reward_weight,
            "done": done_weight,
            "reconstruction": reconstruction_weight,
            "latent": latent_weight,
        }

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _get(self, td: TensorDictBase, key: NestedKey, what: str) -> torch.Tensor:
        value = td.get(key, None)
        if value is None:
            raise KeyError(
                f"WorldModelLoss: {what} {key!r} is not in the tensordict (keys: "
                f"{sorted(map(str, td.keys(True, True)))}). Check the batch or `set_keys(...)`."
            )
        return value

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Compute the selected losses on a batch of real transitions ``(*B)``.

        Returns:
            TensorDict with scalar ``loss_<name>`` entries.
        """
        keys = self.tensor_keys
        check_finite("WorldModelLoss", tensordict, tensordict.keys(True, True),
                     "A batch with NaN/inf is never trained on: drop or repair those transitions.")
        td = tensordict.copy()
        if "reward" in self.losses:
            self._get(td, _next(keys.reward), "the true reward")
            td.rename_key_(_next(keys.reward), _next(keys.true_reward))
        if "done" in self.losses:
            has_terminated = td.get(_next(keys.terminated), None) is not None
            if has_terminated:
                td.rename_key_(_next(keys.terminated), _next(keys.true_terminated))
            if td.get(_next(keys.done), None) is not None:
                td.rename_key_(_next(keys.done), _next(keys.true_done))
            elif not has_terminated:
                raise KeyError(
                    f"WorldModelLoss: the done loss needs the true flag {_next(keys.terminated)!r} "
                    f"or {_next(keys.done)!r} in the batch (it holds "
                    f"{sorted(map(str, td.keys(True, True)))})."
                )
        td = self.world_model(td)

        terms = {}
        if "reward" in self.losses:
            terms["reward"] = (
                self._get(td, _next(keys.reward), "the predicted reward"),
                td.get(_next(keys.true_reward)),
            )
        if "done" in self.losses:
            target = td.get(_next(keys.true_terminated), None)
            if target is None:
                target = td.get(_next(keys.true_done))
            terms["done"] = (self._get(td, _next(keys.done), "the predicted done flag"), target)
        if "reconstruction" in self.losses:
            terms["reconstruction"] = (
                self._get(td, keys.reconstructed_observation, "the reconstruction"),
                self._get(td, keys.observation, "the observation"),
            )
        if "latent" in self.losses:
            terms["latent"] = (
                self._get(td, keys.predicted_latent, "the predicted latent"),
                self._get(td, keys.target_latent, "the target latent"),
            )
        out = {}
        for name in self.losses:  # the caller's order
            prediction, target = terms[name]
            if prediction.is_floating_point() and not bool(torch.isfinite(prediction).all()):
                raise NonFiniteError(
                    f"WorldModelLoss ({name}): the world model's prediction holds NaN/inf "
                    f"(shape {tuple(prediction.shape)}) on a finite batch: the model has "
                    "diverged (lower the learning rate, clip gradients, or restart from a "
                    "checkpoint).")
            if name == "done" and self.distances["done"] != "bce":
                prediction = prediction.float()
            try:
                value = distance(prediction, target, self.distances[name]).mean()
            except ValueError as err:
                raise ValueError(f"WorldModelLoss ({name}): {err}") from err
            out[f"loss_{name}"] = self.weights[name] * value
        return TensorDict(out, batch_size=[])
