"""The spec's doc examples (files 000 and 003) run as written and print what the pages say."""

import torch

from tests.spec_examples import IMAGINED_ENV, WORLD_MODEL, WORLD_MODEL_LOSS, run_example


def _dict_keys(keys) -> str:
    return f"dict_keys({list(keys)!r})"


def test_world_model_example_prints_its_keys():
    namespace, keys, expected = run_example(WORLD_MODEL)
    assert _dict_keys(keys) == expected
    out = namespace["out"]
    assert out["next", "latent"].shape == (2, 4)
    assert out["next", "reward"].shape == (2, 1)


def test_world_model_loss_example_prints_its_keys():
    namespace, keys, expected = run_example(WORLD_MODEL_LOSS)
    assert _dict_keys(keys) == expected
    loss = namespace["loss_td"]["loss_reward"]
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert namespace["reward_head"].module.weight.grad is not None


def test_imagined_env_example_rolls_out():
    namespace, _, _ = run_example(IMAGINED_ENV)
    rollout = namespace["rollout"]
    env = namespace["imagined_env"]
    assert rollout.batch_size == (1, 5)  # an unbatched base env gives batch [1]
    assert rollout["next", "observation", "mean"].shape == (1, 5, 3)
    assert rollout["next", "observation", "var"].shape == (1, 5, 3, 3)
    # the dummy model keeps the mean and sets the variance to the identity
    torch.testing.assert_close(rollout["next", "observation", "mean"][:, 0],
                               rollout["observation", "mean"][:, 0])
    torch.testing.assert_close(rollout["next", "observation", "var"],
                               torch.eye(3).expand(1, 5, 3, 3))
    assert not rollout["next", "done"].any()
    # no reward module: reward is NaN ("not computed"), never a silent zero
    assert torch.isnan(rollout["next", "reward"]).all()
    assert env.action_spec.shape == (1, 1)
