"""RSSM: the three rollout modes, the latent carry, is_init resets, sizes, networks."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from reverie.modules import (
    DreamerActor,
    ObsDecoder,
    ObsEncoder,
    RSSMPosterior,
    RSSMPrior,
    RSSMRollout,
)

S, R, H, E, A = 3, 6, 5, 4, 2  # state, belief (!= hidden), hidden, embedding, action


def nxt(*keys):
    return [("next", k) for k in keys]


def make_rssm(**kwargs):
    torch.manual_seed(0)
    prior = TensorDictModule(RSSMPrior(action_dim=A, hidden_dim=H, rnn_hidden_dim=R, state_dim=S),
                             ["state", "belief", "action"], nxt("prior_mean", "prior_std", "_", "belief"))
    post = TensorDictModule(RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=R, obs_embed_dim=E),
                            nxt("belief", "embedding"), nxt("posterior_mean", "posterior_std", "state"))
    return RSSMRollout(prior, post, **kwargs)


def batch(B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"action": torch.randn(B, T, A, generator=g),
                       ("next", "embedding"): torch.randn(B, T, E, generator=g)}, [B, T])


OUT = [("next", k) for k in ("prior_mean", "prior_std", "posterior_mean", "posterior_std",
                              "state", "belief")] + ["state", "belief"]


def run_mode(rssm, td, seed=3):
    for p in rssm.parameters():
        p.grad = None
    torch.manual_seed(seed)
    out = rssm(td.clone())
    loss = sum((out.get(k) * (i + 1)).sum() for i, k in enumerate(OUT[:6]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in rssm.named_parameters()}
    return {k: out.get(k).detach() for k in OUT}, grads


@pytest.mark.parametrize("resets", [True, False])
@pytest.mark.parametrize("mode", [{"use_scan": True}, {"compile_step": True},
                                  {"use_scan": True, "compile_step": True}])
def test_modes_match_the_loop_in_values_and_gradients(mode, resets):
    td = batch()
    if resets:
        td["is_init"] = torch.zeros(3, 6, 1, dtype=torch.bool)
        td["is_init"][1, 2] = True
    ref_out, ref_grads = run_mode(make_rssm(), td)
    out, grads = run_mode(make_rssm(**mode), td)
    for k in OUT:
        torch.testing.assert_close(out[k], ref_out[k], rtol=1e-5, atol=1e-6, msg=str(k))
    assert ref_grads.keys() == grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
        assert ref_grads[n].abs().sum() > 0, n


def test_latent_carries_from_step_to_step_and_matches_a_hand_loop():
    rssm = make_rssm()
    td = batch()
    torch.manual_seed(5)
    out = rssm(td.clone())
    # the latent entering step t+1 is what step t produced
    torch.testing.assert_close(out["state"][:, 1:], out["next", "state"][:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(out["belief"][:, 1:], out["next", "belief"][:, :-1], rtol=0, atol=0)
    assert (out["state"][:, 0] == 0).all() and (out["belief"][:, 0] == 0).all()
    # a hand-written filter with the same noise gives the same numbers
    prior, post = rssm.rssm_prior.module, rssm.rssm_posterior.module
    torch.manual_seed(5)
    noise = torch.randn(6, 3, S)
    s, h = torch.zeros(3, S), torch.zeros(3, R)
    for t in range(6):
        pm, ps, _, h = prior(s, h, td["action"][:, t])
        qm, qs, s = post(h, td["next", "embedding"][:, t], noise=noise[t])
        torch.testing.assert_close(out["next", "prior_mean"][:, t], pm)
        torch.testing.assert_close(out["next", "belief"][:, t], h)
        torch.testing.assert_close(out["next", "state"][:, t], s)
        torch.testing.assert_close(out["next", "posterior_std"][:, t], qs)
    # and an early observation changes later beliefs (the carry is not frozen)
    changed = td.clone()
    changed["next", "embedding"][:, 0] += 1.0
    torch.manual_seed(5)
    out2 = rssm(changed)
    assert not torch.allclose(out2["next", "belief"][:, 4], out["next", "belief"][:, 4])


def test_is_init_resets_the_latent_at_episode_starts():
    rssm = make_rssm()
    td = batch(T=6)
    td["is_init"] = torch.zeros(3, 6, 1, dtype=torch.bool)
    td["is_init"][:, 3] = True
    out = rssm(td.clone())
    fresh = rssm(td[:, 3:].exclude("is_init").clone())
    # belief and prior at the episode start depend only on the zero latent and the action
    torch.testing.assert_close(out["next", "belief"][:, 3], fresh["next", "belief"][:, 0])
    torch.testing.assert_close(out["next", "prior_mean"][:, 3], fresh["next", "prior_mean"][:, 0])
    assert (out["state"][:, 3] == 0).all() and (out["belief"][:, 3] == 0).all()
    # without the reset the same step differs
    plain = rssm(td.exclude("is_init").clone())
    assert not torch.allclose(plain["next", "belief"][:, 3], out["next", "belief"][:, 3])


@pytest.mark.parametrize("mode", [{}, {"use_scan": True}])
def test_no_is_init_is_the_same_as_is_init_all_false(mode):
    td = batch()
    without, grads_without = run_mode(make_rssm(**mode), td)
    td["is_init"] = torch.zeros(3, 6, 1, dtype=torch.bool)
    with_, grads_with = run_mode(make_rssm(**mode), td)
    for k in OUT:
        torch.testing.assert_close(without[k], with_[k], rtol=0, atol=0, msg=str(k))
    for n in grads_with:
        torch.testing.assert_close(grads_without[n], grads_with[n], rtol=0, atol=0, msg=n)


def test_given_initial_latent_is_used():
    rssm = make_rssm()
    td = batch()
    td["state"] = torch.ones(3, 6, S)
    td["belief"] = torch.ones(3, 6, R)
    out = rssm(td.clone())
    prior = rssm.rssm_prior.module
    _, _, _, h1 = prior(torch.ones(3, S), torch.ones(3, R), td["action"][:, 0])
    torch.testing.assert_close(out["next", "belief"][:, 0], h1)


def test_hidden_dim_different_from_rnn_hidden_dim():
    prior = RSSMPrior(action_dim=1, hidden_dim=16, rnn_hidden_dim=40, state_dim=7)
    mean, std, state, belief = prior(torch.zeros(2, 5, 7), torch.zeros(2, 5, 40), torch.zeros(2, 5, 1))
    assert mean.shape == (2, 5, 7) and belief.shape == (2, 5, 40)
    assert (std >= 0.1).all()
    post = RSSMPosterior(hidden_dim=16, state_dim=7)  # lazy input size
    assert post(belief, torch.zeros(2, 5, 9))[2].shape == (2, 5, 7)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="action_spec or action_dim"):
        RSSMPrior()
    prior = RSSMPrior(action_dim=2, hidden_dim=4, rnn_hidden_dim=4, state_dim=2)
    with pytest.raises(ValueError, match="action_dim=2"):
        prior(torch.zeros(1, 2), torch.zeros(1, 4), torch.zeros(1, 3))
    with pytest.raises(KeyError, match="embedding"):
        make_rssm()(batch().exclude(("next", "embedding")))


def test_spec_example_keys_run_as_written():
    """Spec 004: prior/posterior with root keys, chained by RSSMRollout."""
    from torchrl.data import Bounded
    action_spec = Bounded(-1, 1, (2,))
    rssm_prior = TensorDictModule(
        RSSMPrior(action_spec=action_spec, hidden_dim=200, rnn_hidden_dim=200, state_dim=30),
        in_keys=["state", "belief", "action"],
        out_keys=["prior_mean", "prior_std", "state", "belief"],
    )
    rssm_posterior = TensorDictModule(
        RSSMPosterior(hidden_dim=200, state_dim=30),
        in_keys=["belief", "encoded_obs"],
        out_keys=["posterior_mean", "posterior_std", "state"],
    )
    rssm_rollout = RSSMRollout(rssm_prior=rssm_prior, rssm_posterior=rssm_posterior)
    td = TensorDict({"action": torch.rand(2, 4, 2), "encoded_obs": torch.randn(2, 4, 16)}, [2, 4])
    out = rssm_rollout(td)
    assert out["state"].shape == (2, 4, 30) and out["belief"].shape == (2, 4, 200)
    assert out["posterior_mean"].shape == (2, 4, 30)


def test_networks_shapes():
    enc = ObsEncoder()
    assert enc(torch.rand(2, 3, 3, 64, 64)).shape == (2, 3, 1024)
    dec = ObsDecoder(latent_dim=30 + 200)
    assert dec(torch.zeros(2, 3, 30), torch.zeros(2, 3, 200)).shape == (2, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="num_layers=4"):
        ObsDecoder(num_layers=3)
    loc, scale = DreamerActor(2, num_cells=8)(torch.zeros(4, 3), torch.zeros(4, 6))
    assert loc.shape == scale.shape == (4, 2)
    torch.testing.assert_close(scale, torch.full_like(scale, 5.0 + 1e-4), rtol=0.3, atol=0)


def test_channels_last_convolutions_give_the_same_values_and_gradients():
    pixels = torch.rand(2, 3, 3, 64, 64)
    state, belief = torch.randn(2, 3, 5), torch.randn(2, 3, 7)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        enc = ObsEncoder(4, in_channels=3, channels_last=channels_last)
        dec = ObsDecoder(2, latent_dim=12, channels_last=channels_last)
        emb, reco = enc(pixels), dec(state, belief)
        assert reco.is_contiguous() and reco.shape == (2, 3, 3, 64, 64)
        (emb.square().sum() + (reco - pixels).square().sum()).backward()
        grads = [p.grad for p in [*enc.parameters(), *dec.parameters()]]
        results.append((emb.detach(), reco.detach(), grads))
    assert dec.decoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    (emb0, reco0, grads0), (emb1, reco1, grads1) = results
    torch.testing.assert_close(emb1, emb0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reco1, reco0, rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)


class _PriorSubclass(RSSMPrior):
    """Not RSSMPrior itself: use_scan falls back to torch's scan autograd."""


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("subclass", [False, True])
def test_scan_gradients_reach_every_input_through_resets_and_two_batch_dims(subclass, compiled):
    from reverie.modules.rssm_scan import supports_rssm_scan

    def build(**kwargs):
        torch.manual_seed(0)
        cls = _PriorSubclass if subclass else RSSMPrior
        prior = TensorDictModule(cls(action_dim=A, hidden_dim=H, rnn_hidden_dim=R, state_dim=S),
                                 ["state", "belief", "action"],
                                 nxt("prior_mean", "prior_std", "_", "belief"))
        post = TensorDictModule(
            RSSMPosterior(hidden_dim=H, state_dim=S, rnn_hidden_dim=R, obs_embed_dim=E),
            nxt("belief", "embedding"), nxt("posterior_mean", "posterior_std", "state"))
        return RSSMRollout(prior, post, **kwargs)

    g = torch.Generator().manual_seed(2)
    shape = (2, 3, 5)  # two batch dims, T = 5
    leaves = {"action": torch.randn(*shape, A, generator=g),
              ("next", "embedding"): torch.randn(*shape, E, generator=g),
              "state": torch.randn(*shape, S, generator=g),  # the latent entering step 0
              "belief": torch.randn(*shape, R, generator=g)}
    is_init = torch.zeros(*shape, 1, dtype=torch.bool)
    is_init[0, 1, 0] = is_init[1, 2, 3] = is_init[0, 0, 4] = True
    weights = {k: torch.randn(*shape, d, generator=g) for k, d in zip(OUT, [S, S, S, S, S, R, S, R],
                                                                      strict=True)}

    def grads(rssm):
        for p in rssm.parameters():
            p.grad = None
        inputs = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        td = TensorDict({**inputs, "is_init": is_init}, list(shape))
        torch.manual_seed(3)
        out = rssm(td)
        loss = sum((out.get(k) * w).sum() for k, w in weights.items())  # every output, entering too
        loss.backward()
        res = {str(k): v.grad for k, v in inputs.items()}
        res.update({n: p.grad for n, p in rssm.named_parameters()})
        return loss.detach(), res

    loop, scan = build(), build(use_scan=True, compile_step=compiled)
    assert supports_rssm_scan(scan.rssm_prior.module, scan.rssm_posterior.module) is not subclass
    ref_loss, ref = grads(loop)
    got_loss, got = grads(scan)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert ref.keys() == got.keys()
    for k in ref:
        assert ref[k] is not None and ref[k].abs().sum() > 0, k
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    # the initial latent only matters where step 0 is not an episode start
    assert (ref["state"][0, 1, 0] == 0).all() and (ref["state"][0, 0, 0] != 0).any()
    assert (ref["state"][:, :, 1:] == 0).all()


def test_scan_without_gradients_matches_the_loop():
    td = batch()
    torch.manual_seed(4)
    with torch.no_grad():
        ref = make_rssm()(td.clone())
    torch.manual_seed(4)
    with torch.no_grad():
        out = make_rssm(use_scan=True)(td.clone())
    for k in OUT:
        torch.testing.assert_close(out.get(k), ref.get(k), rtol=1e-5, atol=1e-6, msg=str(k))


def test_scan_leaves_unused_heads_without_gradient_like_the_loop():
    td = batch()
    grads = []
    for kwargs in ({}, {"use_scan": True}):
        rssm = make_rssm(**kwargs)
        torch.manual_seed(6)
        rssm(td.clone())["next", "state"].sum().backward()  # the prior head is not used
        grads.append({n: p.grad for n, p in rssm.named_parameters()})
    for n, ref in grads[0].items():
        if ref is None:
            assert grads[1][n] is None, n
        else:
            torch.testing.assert_close(grads[1][n], ref, rtol=1e-4, atol=1e-6, msg=n)
    assert grads[0]["rssm_prior.module.rnn_to_prior_projector.0.weight"] is None


@pytest.mark.parametrize("bad", ["embedding_width", "action_width", "is_init"])
def test_rollout_input_shapes_are_checked_with_the_key_named(bad):
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule

    from reverie.modules import RSSMPosterior, RSSMPrior, RSSMRollout

    prior = TensorDictModule(RSSMPrior(action_dim=2, hidden_dim=8, rnn_hidden_dim=8, state_dim=3),
                             ["state", "belief", "action"],
                             [("next", "pm"), ("next", "ps"), "_", ("next", "belief")])
    post = TensorDictModule(RSSMPosterior(hidden_dim=8, state_dim=3, rnn_hidden_dim=8, obs_embed_dim=5),
                            [("next", "belief"), ("next", "embedding")],
                            [("next", "qm"), ("next", "qs"), ("next", "state")])
    td = TensorDict({"action": torch.randn(4, 6, 2 + (bad == "action_width")),
                     ("next", "embedding"): torch.randn(4, 6, 5 + 2 * (bad == "embedding_width"))},
                    [4, 6])
    if bad == "is_init":
        td["is_init"] = torch.zeros(4, 6, 2, dtype=torch.bool)
    key = {"embedding_width": r"\('next', 'embedding'\) has shape \(4, 6, 7\)",
           "action_width": r"'action' has shape \(4, 6, 3\)",
           "is_init": r"'is_init' has shape \(4, 6, 2\)"}[bad]
    with pytest.raises(ValueError, match=key):
        RSSMRollout(prior, post)(td)
