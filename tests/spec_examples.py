"""The doc examples of the seed spec, verbatim but for the import paths (torchrl -> reverie).

Each example is the sequence of ``>>>``/``...`` lines of the spec page, and the output the
page prints for its last expression.
"""

WORLD_MODEL = '''
>>> import torch
>>> from tensordict import TensorDict
>>> from tensordict.nn import TensorDictModule
>>> from reverie.modules import WorldModel
>>> obs_dim, latent_dim, action_dim = 8, 4, 2
>>> encoder = TensorDictModule(
...     torch.nn.Linear(obs_dim, latent_dim),
...     in_keys=["observation"],
...     out_keys=["latent"],
... )
>>> dynamics = TensorDictModule(
...     torch.nn.Linear(latent_dim + action_dim, latent_dim),
...     in_keys=["latent", "action"],
...     out_keys=[("next", "latent")],
... )
>>> reward_head = TensorDictModule(
...     torch.nn.Linear(latent_dim, 1),
...     in_keys=[("next", "latent")],
...     out_keys=[("next", "reward")],
... )
>>> world_model = WorldModel(encoder, dynamics, reward_head)
>>> td = TensorDict(
...     {"observation": torch.randn(2, obs_dim), "action": torch.randn(2, action_dim)},
...     batch_size=[2],
... )
>>> out = world_model(td)
>>> out.keys()
dict_keys(['observation', 'action', 'latent', 'next'])
'''

WORLD_MODEL_LOSS = '''
>>> import torch
>>> from tensordict import TensorDict
>>> from tensordict.nn import TensorDictModule
>>> from reverie.modules import WorldModel
>>> from reverie.objectives import WorldModelLoss
>>> obs_dim, latent_dim, action_dim = 8, 4, 2
>>> encoder = TensorDictModule(
...     torch.nn.Linear(obs_dim, latent_dim),
...     in_keys=["observation"], out_keys=["latent"],
... )
>>> dynamics = TensorDictModule(
...     torch.nn.Linear(latent_dim + action_dim, latent_dim),
...     in_keys=["latent", "action"], out_keys=[("next", "latent")],
... )
>>> reward_head = TensorDictModule(
...     torch.nn.Linear(latent_dim, 1),
...     in_keys=[("next", "latent")], out_keys=[("next", "reward")],
... )
>>> world_model = WorldModel(encoder, dynamics, reward_head)
>>> loss_module = WorldModelLoss(world_model, losses=["reward"])
>>> batch = TensorDict(
...     {
...         "observation": torch.randn(4, obs_dim),
...         "action": torch.randn(4, action_dim),
...         "next": {"reward": torch.randn(4, 1)},
...     },
...     batch_size=[4],
... )
>>> loss_td = loss_module(batch)
>>> loss_td.keys()
dict_keys(['loss_reward'])
'''

# spec 003 (ImaginedEnv). The page uses GymEnv and RandomPolicy without importing them;
# the two imports are the only lines added.
IMAGINED_ENV = '''
>>> from torchrl.envs import GymEnv
>>> from torchrl.envs.utils import RandomPolicy
>>> import torch
>>> from tensordict import TensorDict
>>> from tensordict.nn import TensorDictModule
>>> from reverie.envs import ImaginedEnv, ModelBasedEnvBase
>>> from torchrl.data import Composite, Unbounded
>>> base_env = GymEnv("Pendulum-v1")
>>> obs_dim = base_env.observation_spec["observation"].shape[-1]
>>> # A toy world model that returns zero-mean, identity covariance
>>> class DummyWorldModel(torch.nn.Module):
...     def __init__(self, obs_dim):
...         super().__init__()
...         self.obs_dim = obs_dim
...     def forward(self, action, observation):
...         # Assuming observation comes in as a dict with a "mean" key
...         mean = observation.get("mean", observation)
...         var = torch.eye(self.obs_dim).expand(*mean.shape[:-1], -1, -1)
...         return mean, var
>>> wm = TensorDictModule(
...     DummyWorldModel(obs_dim),
...     in_keys=["action", "observation"],
...     out_keys=[("next", "observation", "mean"), ("next", "observation", "var")],
... )
>>> imagined_env = ImaginedEnv(wm, base_env, next_observation_key=("next", "observation"))
>>> # Collect an imagined rollout
>>> rollout = imagined_env.rollout(max_steps=5, policy=RandomPolicy(imagined_env.action_spec))
'''


def run_example(text: str) -> tuple[dict, object, str | None]:
    """Execute a ``>>>`` example; return its namespace, last value and printed output."""
    blocks: list[list[str]] = []
    expected: list[str] = []
    for line in text.strip("\n").splitlines():
        if line.startswith(">>> "):
            blocks.append([line[4:]])
        elif line.startswith("..."):
            blocks[-1].append(line[4:])
        elif line.strip():
            expected.append(line)
    namespace: dict = {}
    last = None
    for i, block in enumerate(blocks):
        source = "\n".join(block)
        if i == len(blocks) - 1 and expected:
            last = eval(compile(source, "<spec>", "eval"), namespace)
        else:
            exec(compile(source + "\n", "<spec>", "exec"), namespace)
    return namespace, last, "\n".join(expected) or None
