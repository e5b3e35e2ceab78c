"""Spec 004's Dreamer code blocks, verbatim but for the import paths (torchrl -> reverie).

The page leaves some names to the reader (``action_spec``, ``world_model``, ``actor``,
``value_net``, ``batch``, ``obs_encoder``, ``replay_buffer``); the preambles define them with
small networks. One substitution beyond import paths: ``device="cuda"`` -> ``"cpu"`` (these
machines have no GPU).
"""

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

RSSM_BLOCK = '''
from reverie.modules import RSSMPrior, RSSMPosterior, RSSMRollout
from tensordict.nn import TensorDictModule

# Prior: p(s_{t+1} | s_t, a_t, h_t)
rssm_prior = TensorDictModule(
    RSSMPrior(action_spec=action_spec, hidden_dim=200, rnn_hidden_dim=200, state_dim=30),
    in_keys=["state", "belief", "action"],
    out_keys=["prior_mean", "prior_std", "state", "belief"],
)

# Posterior: q(s_t | h_t, o_t)
rssm_posterior = TensorDictModule(
    RSSMPosterior(hidden_dim=200, state_dim=30),
    in_keys=["belief", "encoded_obs"],
    out_keys=["posterior_mean", "posterior_std", "state"],
)

# RSSMRollout chains prior and posterior over a time dimension
rssm_rollout = RSSMRollout(rssm_prior=rssm_prior, rssm_posterior=rssm_posterior)
'''

MODEL_LOSS_BLOCK = '''
from reverie.objectives import DreamerModelLoss

world_model_loss = DreamerModelLoss(
    world_model=world_model,        # TensorDictModule wrapping encoder + RSSM + decoder
    lambda_kl=1.0,                  # weight for KL divergence term
    lambda_reco=1.0,                # weight for reconstruction term
    lambda_reward=1.0,              # weight for reward prediction term
    free_nats=3,                    # KL clamping floor (nats)
    reco_loss="l2",
    reward_loss="l2",
    delayed_clamp=False,            # clamp before (False) or after (True) averaging
)

# Forward returns (loss_td, updated_tensordict)
loss_td, _ = world_model_loss(batch)
# loss_td has keys: "loss_model_kl", "loss_model_reco", "loss_model_reward"
total_model_loss = loss_td["loss_model_kl"] + loss_td["loss_model_reco"] + loss_td["loss_model_reward"]
total_model_loss.backward()
'''

ACTOR_VALUE_BLOCK = '''
from reverie.objectives import DreamerActorLoss, DreamerValueLoss
from reverie.envs import DreamerEnv

model_env = DreamerEnv(
    world_model=world_model,
    prior_shape=(30,),
    belief_shape=(200,),
    device="cpu",
)

actor_loss = DreamerActorLoss(
    actor_model=actor,
    value_model=value_net,
    model_based_env=model_env,
    imagination_horizon=15,   # rollout length in latent space
    discount_loss=True,       # discount lambda targets by gamma^t
)

value_loss = DreamerValueLoss(
    value_model=value_net,
)
'''

ENV_BLOCK = '''
from reverie.envs import ModelBasedEnvBase, DreamerEnv, WorldModelEnv

# DreamerEnv is pre-wired for Dreamer-style imagination
env = DreamerEnv(
    world_model=world_model,
    prior_shape=(30,),
    belief_shape=(200,),
    device="cpu",
    batch_size=[32],
)

# A rollout inside latent space - no real simulator calls
fake_data = env.rollout(
    max_steps=15,
    policy=actor,
    tensordict=initial_latent_state,
    auto_reset=False,
)
'''

TRAIN_STEP_BLOCK = '''
# Sample from replay buffer
batch = replay_buffer.sample(batch_size=32)

# Encode observations
encoded = obs_encoder(batch)

# Unroll RSSM over the trajectory time dimension
latent_batch = rssm_rollout(encoded)

# Compute world model losses
loss_td, _ = world_model_loss(latent_batch)
wm_optimizer.zero_grad()
(loss_td["loss_model_kl"] + loss_td["loss_model_reco"] + loss_td["loss_model_reward"]).backward()
wm_optimizer.step()

# Start from posterior states obtained during world-model training
posterior_states = latent_batch.select("state", "belief")

# DreamerActorLoss internally rolls out imagination_horizon steps
actor_loss_td, fake_data = actor_loss(posterior_states)
value_loss_td, _ = value_loss(fake_data)

actor_optimizer.zero_grad()
actor_loss_td["loss_actor"].backward()
actor_optimizer.step()

value_optimizer.zero_grad()
value_loss_td["loss_value"].backward()
value_optimizer.step()
'''

PREAMBLE = '''
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import Bounded, LazyTensorStorage, ReplayBuffer
from torchrl.modules import ProbabilisticActor, TanhNormal
from reverie.modules import DreamerActor, ObsDecoder, ObsEncoder, RSSMPosterior, RSSMPrior, RSSMRollout

action_spec = Bounded(-1, 1, (2,))
nxt = lambda *k: [("next", x) for x in k]

class OnLatent(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.linear = torch.nn.Linear(230, out)
    def forward(self, state, belief):
        return self.linear(torch.cat([state, belief], -1))

prior = RSSMPrior(action_spec=action_spec)
reward = OnLatent(1)
world_model = TensorDictSequential(          # real-data model for DreamerModelLoss
    TensorDictModule(ObsEncoder(channels=4), nxt("pixels"), nxt("encoded_latents")),
    RSSMRollout(
        TensorDictModule(prior, ["state", "belief", "action"],
                         nxt("prior_mean", "prior_std", "_", "belief")),
        TensorDictModule(RSSMPosterior(), nxt("belief", "encoded_latents"),
                         nxt("posterior_mean", "posterior_std", "state"))),
    TensorDictModule(ObsDecoder(channels=4), nxt("state", "belief"), nxt("reco_pixels")),
    TensorDictModule(reward, nxt("state", "belief"), nxt("reward")))
batch = TensorDict({"action": torch.rand(2, 4, 2) * 2 - 1, "pixels": torch.rand(2, 4, 3, 64, 64),
                    ("next", "pixels"): torch.rand(2, 4, 3, 64, 64),
                    ("next", "reward"): torch.randn(2, 4, 1)}, [2, 4])
'''

LATENT_PREAMBLE = '''
world_model = TensorDictSequential(          # latent transition model for DreamerEnv
    TensorDictModule(prior, ["state", "belief", "action"], ["prior_mean", "prior_std", "state", "belief"]),
    TensorDictModule(reward, ["state", "belief"], ["reward"]))
actor = ProbabilisticActor(
    TensorDictModule(DreamerActor(2, num_cells=16), ["state", "belief"], ["loc", "scale"]),
    in_keys=["loc", "scale"], out_keys=["action"], distribution_class=TanhNormal,
    distribution_kwargs={"tanh_loc": True}, spec=action_spec)
value_net = TensorDictModule(OnLatent(1), ["state", "belief"], ["state_value"])
'''


def test_spec_dreamer_blocks_run_as_written():
    ns: dict = {}
    exec(PREAMBLE, ns)
    exec(RSSM_BLOCK, ns)
    exec(MODEL_LOSS_BLOCK, ns)
    assert sorted(k for k in ns["loss_td"].keys() if k.startswith("loss_")) == [
        "loss_model_kl", "loss_model_reco", "loss_model_reward"]
    assert ns["prior"].rnn.weight_ih.grad is not None
    exec(LATENT_PREAMBLE, ns)
    exec(ACTOR_VALUE_BLOCK, ns)
    ns["initial_latent_state"] = TensorDict(
        {"state": torch.randn(32, 30), "belief": torch.randn(32, 200)}, [32])
    exec(ENV_BLOCK, ns)
    assert ns["fake_data"]["next", "reward"].shape == (32, 15, 1)
    # the training step: replay buffer of real sequences, spec's root-key RSSM
    replay_buffer = ReplayBuffer(storage=LazyTensorStorage(64))
    replay_buffer.extend(ns["batch"].clone())  # 2 sequences of 4 steps
    ns["replay_buffer"] = replay_buffer
    ns["obs_encoder"] = ns["TensorDictModule"](
        ns["ObsEncoder"](channels=4), ["pixels"], ["encoded_obs"])
    ns["wm_optimizer"] = torch.optim.Adam(ns["world_model_loss"].parameters())
    ns["actor_optimizer"] = torch.optim.Adam(ns["actor"].parameters())
    ns["value_optimizer"] = torch.optim.Adam(ns["value_net"].parameters())
    exec(TRAIN_STEP_BLOCK, ns)
    assert ns["fake_data"].batch_size == (32 * 4, 15)
    assert torch.isfinite(ns["value_loss_td"]["loss_value"])
