"""A general, composable world model: encoder, dynamics, reward/done heads and decoder."""

from __future__ import annotations

from collections.abc import Iterable

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key

from reverie.modules.components import call_component

__all__ = ["WorldModel", "WorldModelStep"]

_FULL_ORDER = ("encoder", "dynamics", "reward_head", "done_head", "decoder")
_STEP_ORDER = ("dynamics", "reward_head", "done_head", "decoder")


def _external_keys(modules: Iterable[TensorDictModuleBase]) -> tuple[list, list]:
    """In-keys a chain of modules needs from outside, and every key it writes."""
    produced: list[NestedKey] = []
    needed: list[NestedKey] = []
    for module in modules:
        for key in module.in_keys:
            key = unravel_key(key)
            if key not in produced and key not in needed:
                needed.append(key)
        for key in module.out_keys:
            key = unravel_key(key)
            if key not in produced:
                produced.append(key)
    return needed, produced


def _run_component(name: str, module: TensorDictModuleBase, td: TensorDictBase) -> TensorDictBase:
    return call_component(f"WorldModel.{name}", module, td)


class WorldModel(TensorDictModuleBase):
    """A general, composable world model for model-based RL.

    ``WorldModel`` owns *prediction*: it composes an encoder, a dynamics model, a reward
    head and optionally a done head and a decoder, each a TensorDict module that talks to
    the others through keys. Rollout lives elsewhere: wrap the model in
    :class:`~reverie.envs.WorldModelEnv` and call ``rollout``.

    Components are looked up at call time, so reassigning one after construction
    (``wm.done_head = new_head``) takes effect in :meth:`forward`, :meth:`step` and
    :attr:`step_module`.

    Order of calls:

    * ``forward``: encoder -> dynamics -> reward_head -> [done_head] -> [decoder]
    * ``step`` (no encoder, the latent must be in the tensordict):
      dynamics -> reward_head -> [done_head] -> [decoder]

    Args:
        encoder: maps an observation to a latent, e.g. ``observation -> latent``.
        dynamics: advances the latent, e.g. ``(latent, action) -> ("next", latent)``.
        reward_head: predicts the reward, e.g. ``("next", latent) -> ("next", "reward")``.
            Rewards must have the reward spec's shape, ``(*B, 1)`` for a ``(1,)`` spec.

    Keyword Args:
        done_head: predicts termination, e.g. ``("next", latent) -> ("next", "done")``;
            bool, probability or logit outputs (see :class:`~reverie.envs.WorldModelEnv`).
        decoder: reconstructs an observation from a latent, e.g.
            ``latent -> reconstructed_observation``; required by :meth:`decode`.
        decode_on_step: run the decoder in :meth:`step` (and so in imagination envs).
            ``False`` for imagination that never looks at observations (Dreamer's actor
            learns from latents): :meth:`decode` still decodes on demand.

    Latent keys: :attr:`latent_keys` are the keys the encoder writes that the dynamics
    advance (``["latent"]`` above; ``["state", "belief"]`` for an RSSM, see
    :class:`~reverie.modules.RSSMWorldModel`). Imagination envs
    (:class:`~reverie.envs.WorldModelEnv`) and the open-loop diagnostics carry exactly
    these keys from step to step, whatever the model family.

    Raises:
        KeyError: at call time, naming the component and the missing input key.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import WorldModel
        >>> obs_dim, latent_dim, action_dim = 8, 4, 2
        >>> encoder = TensorDictModule(
        ...     torch.nn.Linear(obs_dim, latent_dim), in_keys=["observation"], out_keys=["latent"])
        >>> dynamics = TensorDictModule(
        ...     torch.nn.Linear(latent_dim + action_dim, latent_dim),
        ...     in_keys=["latent", "action"], out_keys=[("next", "latent")])
        >>> reward_head = TensorDictModule(
        ...     torch.nn.Linear(latent_dim, 1),
        ...     in_keys=[("next", "latent")], out_keys=[("next", "reward")])
        >>> world_model = WorldModel(encoder, dynamics, reward_head)
        >>> td = TensorDict(
        ...     {"observation": torch.randn(2, obs_dim), "action": torch.randn(2, action_dim)},
        ...     batch_size=[2])
        >>> world_model(td)["next", "reward"].shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        encoder: TensorDictModuleBase,
        dynamics: TensorDictModuleBase,
        reward_head: TensorDictModuleBase,
        *,
        done_head: TensorDictModuleBase | None = None,
        decoder: TensorDictModuleBase | None = None,
        decode_on_step: bool = True,
    ) -> None:
        super().__init__()
        for name, module in (("encoder", encoder), ("dynamics", dynamics), ("reward_head", reward_head)):
            if module is None:
                raise TypeError(f"WorldModel needs a {name} module, got None.")
        self.encoder = encoder
        self.dynamics = dynamics
        self.reward_head = reward_head
        self.done_head = done_head
        self.decoder = decoder
        self.decode_on_step = bool(decode_on_step)
        # not a registered submodule: it only points back at this model
        object.__setattr__(self, "_step_view", WorldModelStep(self))

    # ---------------------------------------------------------------- composition
    def components(self, names: Iterable[str] = _FULL_ORDER) -> list[tuple[str, TensorDictModuleBase]]:
        """The present components among ``names``, in call order, as ``(name, module)``."""
        return [(name, getattr(self, name)) for name in names if getattr(self, name) is not None]

    def step_components(self) -> list[tuple[str, TensorDictModuleBase]]:
        """The components :meth:`step` runs, in call order (the decoder only with
        ``decode_on_step``)."""
        names = _STEP_ORDER if self.decode_on_step else _STEP_ORDER[:-1]
        return self.components(names)

    @property
    def latent_keys(self) -> list[NestedKey]:
        """The latent state: keys the encoder writes that the dynamics read, in the
        encoder's order (e.g. ``["latent"]``, or ``["state", "belief"]`` for an RSSM)."""
        dynamics_in = {unravel_key(k) for k in self.dynamics.in_keys}
        keys = [unravel_key(k) for k in self.encoder.out_keys]
        return [k for k in keys if k in dynamics_in]

    @property
    def in_keys(self) -> list[NestedKey]:
        """Keys :meth:`forward` reads from its input (not produced by an earlier component)."""
        return _external_keys(m for _, m in self.components())[0]

    @property
    def out_keys(self) -> list[NestedKey]:
        """Every key :meth:`forward` writes."""
        return _external_keys(m for _, m in self.components())[1]

    @in_keys.setter
    def in_keys(self, value):  # TensorDictModuleBase assigns these; they are derived here
        pass

    @out_keys.setter
    def out_keys(self, value):
        pass

    # ---------------------------------------------------------------- calls
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Run the full pipeline: encoder -> dynamics -> reward_head -> [done_head] -> [decoder]."""
        for name, module in self.components():
            tensordict = _run_component(name, module, tensordict)
        return tensordict

    def encode(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Encode an observation into the latent space (runs the encoder only)."""
        return _run_component("encoder", self.encoder, tensordict)

    def step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Take one imagined step: dynamics -> reward_head -> [done_head] -> [decoder]
        (the decoder only with ``decode_on_step``).

        The encoder is not called; the tensordict must already hold the current latent
        (from :meth:`encode` or an earlier step).
        """
        for name, module in self.step_components():
            tensordict = _run_component(name, module, tensordict)
        return tensordict

    def decode(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Decode a latent back to observation space.

        Raises:
            RuntimeError: if the model has no ``decoder``.
        """
        if self.decoder is None:
            raise RuntimeError(
                "WorldModel.decode needs a decoder, but this WorldModel has decoder=None. "
                "Pass decoder=TensorDictModule(...) at construction or assign wm.decoder."
            )
        return _run_component("decoder", self.decoder, tensordict)

    @property
    def step_module(self) -> WorldModelStep:
        """The step-only module (dynamics + heads, no encoder) that imagination envs drive.

        It is a live view: components reassigned on the world model are used at once.
        """
        return self._step_view


class WorldModelStep(TensorDictModuleBase):
    """A live, step-only view of a :class:`WorldModel` (what :attr:`WorldModel.step_module` returns).

    Calling it is :meth:`WorldModel.step`; its ``in_keys``/``out_keys`` follow the current
    components, so a head reassigned on the world model is used at once. The world model
    is its only child module (``.world_model``), so ``.to(device)``, ``parameters()`` and
    ``TensorDict.from_module(view)`` reach the model's parameters.
    """

    def __init__(self, world_model: WorldModel) -> None:
        super().__init__()
        self.world_model = world_model

    def components(self) -> list[tuple[str, TensorDictModuleBase]]:
        """The step components in call order, as ``(name, module)``."""
        return self.world_model.step_components()

    @property
    def in_keys(self) -> list[NestedKey]:
        return _external_keys(m for _, m in self.components())[0]

    @property
    def out_keys(self) -> list[NestedKey]:
        return _external_keys(m for _, m in self.components())[1]

    @in_keys.setter
    def in_keys(self, value):
        pass

    @out_keys.setter
    def out_keys(self, value):
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self.world_model.step(tensordict)
