"""WorldModel: composition order, shortcuts, live components and errors."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from reverie.modules import WorldModel
from tests.helpers import make_world_model, threshold_done_head


def _batch(n=3):
    return TensorDict({"observation": torch.randn(n, 3), "action": torch.randn(n, 1)}, [n])


def test_forward_matches_hand_composition():
    wm = make_world_model()
    td = _batch()
    out = wm(td.clone())
    z = wm.encoder.module(td["observation"])
    z1 = wm.dynamics.module(torch.cat([z, td["action"]], -1))
    torch.testing.assert_close(out["latent"], z)
    torch.testing.assert_close(out["next", "latent"], z1)
    torch.testing.assert_close(out["next", "reward"], wm.reward_head.module(z1))


def test_step_skips_encoder_and_decode_needs_decoder():
    wm = make_world_model()
    td = TensorDict({"latent": torch.randn(3, 4), "action": torch.randn(3, 1)}, [3])
    out = wm.step(td)
    assert "observation" not in out.keys()
    assert out["next", "reward"].shape == (3, 1)
    with pytest.raises(RuntimeError, match="decoder"):
        wm.decode(out)
    wm.decoder = TensorDictModule(torch.nn.Linear(4, 3), ["latent"], ["reconstructed_observation"])
    assert wm.decode(out)["reconstructed_observation"].shape == (3, 3)


def test_in_and_out_keys_follow_components():
    wm = make_world_model()
    assert wm.in_keys == ["observation", "action"]
    assert wm.step_module.in_keys == ["latent", "action"]
    assert ("next", "done") not in wm.out_keys
    wm.done_head = threshold_done_head()
    assert ("next", "done") in wm.out_keys
    assert ("next", "done") in wm.step_module.out_keys


def test_reassigning_a_head_takes_effect_everywhere():
    wm = make_world_model()
    step = wm.step_module
    td = TensorDict({"latent": torch.randn(3, 4), "action": torch.randn(3, 1)}, [3])
    constant = TensorDictModule(lambda z: torch.full((*z.shape[:-1], 1), 7.0),
                                [("next", "latent")], [("next", "reward")])
    wm.reward_head = constant
    assert (step(td.clone())["next", "reward"] == 7.0).all()
    assert (wm(_batch())["next", "reward"] == 7.0).all()
    wm.done_head = threshold_done_head(threshold=-1e9)
    assert step(td.clone())["next", "done"].all()


def test_missing_input_names_component_and_key():
    wm = make_world_model()
    with pytest.raises(KeyError, match=r"WorldModel\.dynamics.*'latent'"):
        wm.step(TensorDict({"action": torch.randn(2, 1)}, [2]))
    with pytest.raises(KeyError, match=r"WorldModel\.encoder.*'observation'"):
        wm(TensorDict({"action": torch.randn(2, 1)}, [2]))


def test_single_input_module_gets_concatenated_inputs_multi_input_does_not():
    class TwoInputs(torch.nn.Module):
        def forward(self, latent, action):
            return latent + action.sum(-1, keepdim=True)

    wm = make_world_model()
    wm.dynamics = TensorDictModule(TwoInputs(), ["latent", "action"], [("next", "latent")])
    td = TensorDict({"latent": torch.zeros(2, 4), "action": torch.ones(2, 1)}, [2])
    assert (wm.step(td)["next", "latent"] == 1.0).all()


def test_parameters_and_state_dict_roundtrip():
    wm = make_world_model(done_head=threshold_done_head())
    names = {n.split(".")[0] for n, _ in wm.named_parameters()}
    assert names == {"encoder", "dynamics", "reward_head"}
    wm2 = make_world_model(done_head=threshold_done_head())
    wm2.load_state_dict(wm.state_dict())
    td = _batch()
    torch.testing.assert_close(wm(td.clone())["next", "reward"], wm2(td.clone())["next", "reward"])


def test_constructor_rejects_missing_components():
    with pytest.raises(TypeError, match="reward_head"):
        WorldModel(make_world_model().encoder, make_world_model().dynamics, None)
