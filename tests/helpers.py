"""Small world models and spec-only envs shared by the tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from reverie.modules import WorldModel


class SpecOnlyEnv(EnvBase):
    """A reference env with given specs that is never stepped (like a real base env)."""

    def __init__(self, obs_dim=3, action_dim=1, batch_size=()):
        super().__init__(batch_size=torch.Size(batch_size))
        b = self.batch_size
        self.observation_spec = Composite(observation=Unbounded((*b, obs_dim)), shape=b)
        self.action_spec = Bounded(-1.0, 1.0, (*b, action_dim))
        self.reward_spec = Unbounded((*b, 1))

    def _reset(self, td=None):
        raise AssertionError("a reference env is never reset")

    def _step(self, td):
        raise AssertionError("a reference env is never stepped")

    def _set_seed(self, seed):
        return None


def make_world_model(obs_dim=3, latent_dim=4, action_dim=1, *, done_head=None, decoder=None):
    """Linear encoder/dynamics/reward (the spec's example), optional extra heads."""
    encoder = TensorDictModule(torch.nn.Linear(obs_dim, latent_dim), ["observation"], ["latent"])
    dynamics = TensorDictModule(
        torch.nn.Linear(latent_dim + action_dim, latent_dim),
        ["latent", "action"],
        [("next", "latent")],
    )
    reward_head = TensorDictModule(
        torch.nn.Linear(latent_dim, 1), [("next", "latent")], [("next", "reward")]
    )
    return WorldModel(encoder, dynamics, reward_head, done_head=done_head, decoder=decoder)


def threshold_done_head(latent_dim=4, kind="bool", threshold=0.0, index=0):
    """A done head that fires when latent[index] > threshold, as bool, probability or logit."""

    class Head(torch.nn.Module):
        def forward(self, latent):
            x = latent[..., index : index + 1] - threshold
            if kind == "bool":
                return x > 0
            if kind == "probability":
                return torch.sigmoid(100 * x)
            return 100 * x  # logits

    return TensorDictModule(Head(), [("next", "latent")], [("next", "done")])


def policy_module(latent_dim=4, action_dim=1):
    return TensorDictModule(
        torch.nn.Sequential(torch.nn.Linear(latent_dim, action_dim), torch.nn.Tanh()),
        ["latent"],
        ["action"],
    )


def start_td(world_model, batch=(5,), obs_dim=3):
    return world_model.encode(TensorDict({"observation": torch.randn(*batch, obs_dim)}, batch))
