"""DreamerV3 modules: block linear, block-GRU RSSM (core maths, resets, unimix, straight-through
samples, the fast rollout against a naive loop), networks, heads and actors."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from reverie.modules import (
    BlockLinear,
    DreamerV3ContinuousActor,
    DreamerV3DiscreteActor,
    DreamerV3ImageDecoder,
    DreamerV3ImageEncoder,
    DreamerV3MLP,
    RSSMPosteriorV3,
    RSSMPriorV3,
    RSSMRolloutV3,
    SymExpTwoHot,
)
from reverie.objectives.dreamer_v3_math import one_hot_straight_through, unimix_logits

D, H, S, C, G, A, E = 16, 12, 3, 4, 4, 2, 5  # belief, hidden, stoch, classes, blocks, action, embed


def make_rssm(seed=0, **kwargs):
    torch.manual_seed(seed)
    dyn_layers, obs_layers = kwargs.pop("dyn_layers", 1), kwargs.pop("obs_layers", 1)
    prior = RSSMPriorV3(A, deter=D, hidden=H, stoch=S, classes=C, blocks=G,
                        dyn_layers=dyn_layers, **kwargs)
    post = RSSMPosteriorV3(D, E, hidden=H, stoch=S, classes=C, obs_layers=obs_layers, **kwargs)
    rollout = RSSMRolloutV3(
        TensorDictModule(prior, ["state", "belief", "action"],
                         [("next", "prior_logits"), "_", ("next", "belief")]),
        TensorDictModule(post, [("next", "belief"), ("next", "encoded_latents")],
                         [("next", "posterior_logits"), ("next", "state")]))
    return prior, post, rollout


def make_batch(lead=(3,), T=6, seed=1, resets=()):
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({"action": 2 * torch.rand(*lead, T, A, generator=g) - 1,
                     ("next", "encoded_latents"): torch.randn(*lead, T, E, generator=g)},
                    [*lead, T])
    if resets:
        is_init = torch.zeros(*lead, T, 1, dtype=torch.bool)
        for t in resets:
            is_init[..., t, :] = True
        td["is_init"] = is_init
    return td


def uniform_noise(lead, T, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*lead, T, S, C, generator=g)


OUT = [("next", "prior_logits"), ("next", "posterior_logits"), ("next", "state"),
       ("next", "belief"), "state", "belief"]


# ------------------------------------------------------------------------------ BlockLinear
@pytest.mark.parametrize("bias", [True, False])
def test_block_linear_equals_the_dense_block_diagonal_matrix(bias):
    torch.manual_seed(0)
    layer = BlockLinear(12, 8, blocks=4, bias=bias)
    if bias:
        torch.nn.init.normal_(layer.bias)
    dense = torch.zeros(12, 8)
    for g in range(4):  # block g maps inputs [3g, 3g + 3) to outputs [2g, 2g + 2)
        dense[3 * g:3 * g + 3, 2 * g:2 * g + 2] = layer.weight[g]
    x = torch.randn(5, 7, 12)
    expected = x @ dense + (layer.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.dense_weight(), dense)
    assert layer.weight.shape == (4, 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        BlockLinear(10, 8, blocks=4)


def test_init_follows_the_authors_fan_in():
    torch.manual_seed(0)
    layer = BlockLinear(4096, 4096, blocks=8)
    # truncated normal (|z| <= 2) times 1.1368 / sqrt(fan_in), fan_in = all 4096 inputs
    assert layer.weight.abs().max() <= 2 * 1.1368 / 64 + 1e-6
    assert abs(layer.weight.std().item() - 1 / 64) < 5e-4
    assert (layer.bias == 0).all()


# ------------------------------------------------------------------------------ shapes
def test_prior_posterior_and_rollout_shapes():
    prior, post, rollout = make_rssm()
    lead = (2, 3)
    logits, state, belief = prior(torch.zeros(*lead, S * C), torch.zeros(*lead, D),
                                  torch.zeros(*lead, A))
    assert logits.shape == (*lead, S, C) and state.shape == (*lead, S * C)
    assert belief.shape == (*lead, D)
    assert prior.core(state, belief, torch.ones(*lead, A)).shape == (*lead, D)
    assert prior.prior_logits(belief).shape == (*lead, S, C)
    q_logits, q_state = post(belief, torch.zeros(*lead, E))
    assert q_logits.shape == (*lead, S, C) and q_state.shape == (*lead, S * C)
    out = rollout(make_batch(lead=lead, T=5))
    shapes = {("next", "prior_logits"): (S, C), ("next", "posterior_logits"): (S, C),
              ("next", "state"): (S * C,), ("next", "belief"): (D,), "state": (S * C,),
              "belief": (D,)}
    for key, tail in shapes.items():
        assert out.get(key).shape == (*lead, 5, *tail), key
    # the default sizes: the paper's XL with 32 x 32 latents
    big = RSSMPriorV3(4)
    assert (big.deter, big.hidden, big.stoch, big.classes, big.blocks) == (4096, 1024, 32, 32, 8)


def test_rollout_rejects_mismatched_modules():
    prior, post, _ = make_rssm()
    other = RSSMPosteriorV3(D + 4, E, hidden=H, stoch=S, classes=C)
    with pytest.raises(ValueError, match="do not match"):
        RSSMRolloutV3(
            TensorDictModule(prior, ["state", "belief", "action"], ["p", "_", "b"]),
            TensorDictModule(other, ["b", "e"], ["q", "s"]))
    with pytest.raises(TypeError, match="RSSMPriorV3"):
        RSSMRolloutV3(TensorDictModule(post, ["a", "b"], ["c", "d"]),
                      TensorDictModule(post, ["b", "e"], ["q", "s"]))


# ------------------------------------------------------------------------------ core maths
def test_block_gru_gate_maths_with_update_bias_minus_one():
    prior, _, _ = make_rssm()
    k = D // G
    with torch.no_grad():
        prior.gru.weight.zero_()  # gates = bias: per block [reset, cand, update]
        bias = torch.randn(G, 3, k)
        prior.gru.bias.copy_(bias.reshape(-1))
    h = torch.randn(4, D)
    r, c, u = (bias[:, i].reshape(D) for i in range(3))
    u = torch.sigmoid(u - 1)
    expected = u * torch.tanh(torch.sigmoid(r) * c) + (1 - u) * h
    out = prior.core(torch.zeros(4, S * C), h, torch.zeros(4, A))
    torch.testing.assert_close(out, expected)


def test_core_scales_large_actions_by_their_stopped_magnitude():
    prior, _, _ = make_rssm()
    state, belief = torch.zeros(2, S * C), torch.randn(2, D)
    a1 = torch.tensor([[1.0, -0.5], [-1.0, 0.25]])
    a5 = torch.tensor([[5.0, -0.5], [-3.0, 0.25]], requires_grad=True)
    torch.testing.assert_close(prior.core(state, belief, a5), prior.core(state, belief, a1))
    # a / sg(max(1, |a|)): the gradient of |a| > 1 entries is scaled by 1 / |a|, not zero
    prior.core(state, belief, a5).sum().backward()
    assert (a5.grad != 0).all()


def test_linear_layers_before_a_norm_have_no_bias():
    prior, post, _ = make_rssm()
    names = {n for n, _ in prior.named_parameters()} | {n for n, _ in post.named_parameters()}
    assert not [n for n in names if n.endswith("linear.bias")]
    assert {"gru.bias", "prior_logit.bias", "post_logit.bias"} <= names


# ------------------------------------------------------------------------------ sampling
def test_unimix_floor_on_prior_and_posterior():
    prior, post, rollout = make_rssm()
    with torch.no_grad():  # saturate the softmaxes: without the mix, probs would underflow
        prior.prior_logit.weight.mul_(1e3)
        post.post_logit.weight.mul_(1e3)
    out = rollout(make_batch(T=8, resets=(0, 4)))
    floor = 0.01 / C
    for key in (("next", "prior_logits"), ("next", "posterior_logits")):
        probs = out.get(key).exp()
        assert probs.min() >= floor * (1 - 1e-5), key
        assert probs.min() < floor * 1.01, key  # the floor is reached: the mix is 1%, not more
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_straight_through_samples_are_exactly_one_hot_with_gradients():
    prior, post, rollout = make_rssm()
    td = make_batch(T=8, resets=(3,))
    out = rollout(td)
    for key in (("next", "state"), "state"):
        x = out.get(key).view(3, 8, S, C)
        assert ((x == 0) | (x == 1)).all(), key
    x = out.get(("next", "state")).view(3, 8, S, C)
    assert (x.sum(-1) == 1).all()
    assert (out.get("state").view(3, 8, S, C)[:, 3] == 0).all()  # reset entering state
    # the sample's gradient is that of the mixed probabilities: it reaches the posterior logits
    post.zero_grad()
    w = torch.randn(x.shape)
    (x * w).sum().backward()
    assert post.post_logit.weight.grad.abs().sum() > 0
    # and the same draw as the library's maths for the same uniform noise
    u = torch.rand(6, S, C)
    q_logits, q_state = post(torch.zeros(6, D), torch.zeros(6, E), uniform=u)
    raw = post.raw_posterior_logits(torch.zeros(6, D), torch.zeros(6, E))
    torch.testing.assert_close(q_logits, unimix_logits(raw, 0.01))
    ref = one_hot_straight_through(unimix_logits(raw, 0.01), uniform=u)
    assert torch.equal(q_state.view(6, S, C), ref.round())


def test_rollout_noise_is_fixed_by_uniform():
    _, _, rollout = make_rssm()
    td = make_batch(T=5)
    u = uniform_noise((3,), 5)
    a = rollout(td.clone(), uniform=u)
    b = rollout(td.clone(), uniform=u)
    c = rollout(td.clone(), uniform=uniform_noise((3,), 5, seed=9))
    assert torch.equal(a["next", "state"], b["next", "state"])
    assert not torch.equal(a["next", "state"], c["next", "state"])


# ------------------------------------------------------------------------------ resets
@pytest.mark.parametrize("dyn_layers", [1, 2])
def test_reset_masks_state_belief_and_action(dyn_layers):
    """Episode 2 after episode 1, with is_init at its start, equals episode 2 alone."""
    _, _, rollout = make_rssm(dyn_layers=dyn_layers)
    T1, T2 = 4, 5
    first, second = make_batch(T=T1, seed=1), make_batch(T=T2, seed=2)
    both = torch.cat([first, second], 1)
    both["is_init"] = torch.zeros(3, T1 + T2, 1, dtype=torch.bool)
    both["is_init"][:, T1] = True
    u = uniform_noise((3,), T1 + T2)
    alone = second.clone()
    alone["is_init"] = torch.zeros(3, T2, 1, dtype=torch.bool)
    alone["is_init"][:, 0] = True
    alone["state"] = torch.rand(3, T2, S * C)  # any initial latent: reset at t = 0
    alone["belief"] = torch.randn(3, T2, D)
    out_both = rollout(both.clone(), uniform=u)
    out_alone = rollout(alone.clone(), uniform=u[:, T1:])
    for key in OUT:
        torch.testing.assert_close(out_both.get(key)[:, T1:], out_alone.get(key), msg=str(key))
    # the action at the reset step is masked: changing it changes nothing ...
    changed = both.clone()
    changed["action"][:, T1] = torch.tensor([0.9, -0.7])
    out_changed = rollout(changed, uniform=u)
    torch.testing.assert_close(out_changed["next", "belief"], out_both["next", "belief"])
    # ... while it does matter one step later, and the episode-1 latent matters without reset
    changed = both.clone()
    changed["action"][:, T1 + 1] = torch.tensor([0.9, -0.7])
    assert not torch.allclose(rollout(changed, uniform=u)["next", "belief"][:, T1 + 1],
                              out_both["next", "belief"][:, T1 + 1])
    no_reset = both.exclude("is_init")
    assert not torch.allclose(rollout(no_reset, uniform=u)["next", "belief"][:, T1],
                              out_both["next", "belief"][:, T1])
    assert (out_both["belief"][:, T1] == 0).all() and (out_both["state"][:, T1] == 0).all()
    flat = both.clone()
    flat["is_init"] = both["is_init"][..., 0]  # [*B, T] is read the same as [*B, T, 1]
    torch.testing.assert_close(rollout(flat, uniform=u)["next", "belief"],
                               out_both["next", "belief"])


# ------------------------------------------------------------------------------ fast rollout
def naive_rollout(prior, post, td, u):
    """The step-by-step loop over prior(...) and posterior(...) with the same noise."""
    *lead, T = td.batch_size
    state = td.get("state")[..., 0, :] if "state" in td.keys() else torch.zeros(*lead, S * C)
    belief = td.get("belief")[..., 0, :] if "belief" in td.keys() else torch.zeros(*lead, D)
    is_init = td.get("is_init", torch.zeros(*lead, T, 1, dtype=torch.bool))
    outs = {k: [] for k in OUT}
    for t in range(T):
        keep = (~is_init[..., t, :]).float()
        state, belief, action = state * keep, belief * keep, td["action"][..., t, :] * keep
        outs["state"].append(state)
        outs["belief"].append(belief)
        p_logits, _, belief = prior(state, belief, action)
        q_logits, state = post(belief, td["next", "encoded_latents"][..., t, :],
                               uniform=u[..., t, :, :])
        for key, value in zip(OUT[:4], (p_logits, q_logits, state, belief), strict=True):
            outs[key].append(value)
    return {k: torch.stack(v, len(lead)) for k, v in outs.items()}


def loss_and_grads(outs, params, inputs, seed=5):
    g = torch.Generator().manual_seed(seed)
    loss = sum((outs[k] * torch.randn(outs[k].shape, generator=g)).sum() for k in OUT)
    return torch.autograd.grad(loss, [*params, *inputs])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers", [(1, 1), (2, 2)])
@pytest.mark.parametrize("lead", [(3,), (2, 2)])
def test_fast_rollout_equals_naive_loop_in_values_and_gradients(layers, lead, dtype):
    prior, post, rollout = make_rssm(dyn_layers=layers[0], obs_layers=layers[1])
    prior.to(dtype), post.to(dtype)
    T = 7
    td = make_batch(lead=lead, T=T, resets=(0, 4))
    td["is_init"][(0,) * len(lead) + (0,)] = False  # one env starts from the given latent
    one_hot = torch.nn.functional.one_hot(torch.randint(C, (*lead, T, S)), C)
    td["state"] = one_hot.float().flatten(-2)
    td["belief"] = torch.randn(*lead, T, D)
    td = td.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
    embed = td["next", "encoded_latents"].requires_grad_()
    u = uniform_noise(lead, T).to(dtype)
    params = [*prior.parameters(), *post.parameters()]
    fast = rollout(td.clone(), uniform=u)
    fast = {k: fast.get(k) for k in OUT}
    slow = naive_rollout(prior, post, td, u)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for key in OUT:
        torch.testing.assert_close(fast[key], slow[key], msg=str(key), rtol=tol, atol=tol)
    grads_fast = loss_and_grads(fast, params, [embed])
    grads_slow = loss_and_grads(slow, params, [embed])
    names = [n for n, _ in prior.named_parameters()] + [n for n, _ in post.named_parameters()]
    for name, a, b in zip([*names, "embedding"], grads_fast, grads_slow, strict=True):
        # the two sum the same terms in different orders: the rounding is relative to the
        # largest entry (|grad| up to ~50 here), not to each entry
        torch.testing.assert_close(a, b, msg=name, rtol=10 * tol, atol=tol / 10 * b.abs().max())


def test_fast_rollout_equals_naive_loop_without_resets_or_initial_latent():
    prior, post, rollout = make_rssm(seed=3)
    td = make_batch(T=6)
    u = uniform_noise((3,), 6)
    fast = rollout(td.clone(), uniform=u)
    slow = naive_rollout(prior, post, td, u)
    for key in OUT:
        torch.testing.assert_close(fast.get(key), slow[key], msg=str(key))


# ------------------------------------------------------------------------------ networks
def test_mlp_layout_and_output_init():
    mlp = DreamerV3MLP(6, 3, hidden=8, layers=2)
    assert [type(m).__name__ for m in mlp.hidden] == ["LinearNormAct", "LinearNormAct"]
    assert mlp.hidden[0].linear.bias is None and mlp.out.bias is not None
    assert mlp(torch.randn(4, 6)).shape == (4, 3)
    features = DreamerV3MLP(6, None, hidden=8, layers=2)
    assert features(torch.randn(4, 6)).shape == (4, 8) and features.out_features == 8
    zero = DreamerV3MLP(6, 3, hidden=8, layers=2, outscale=0.0)
    assert (zero(torch.randn(4, 6)) == 0).all()


@pytest.mark.parametrize("channels_last", [True, False])
def test_image_encoder_and_decoder_shapes(channels_last):
    torch.manual_seed(0)
    enc = DreamerV3ImageEncoder(depth=2, channels_last=channels_last)
    x = torch.rand(2, 3, 3, 64, 64)
    y = enc(x)
    assert y.shape == (2, 3, 16 * 2 * 4) and enc.out_features == 128
    assert [c.stride for c in enc.convs] == [(1, 1)] * 4 and enc.convs[0].kernel_size == (5, 5)
    dec = DreamerV3ImageDecoder(S * C + D, depth=2, belief_dim=D, hidden=4,
                                channels_last=channels_last)
    img = dec(torch.randn(2, 3, S * C + D))
    assert img.shape == (2, 3, 3, 64, 64) and img.is_contiguous()
    assert ((img > 0) & (img < 1)).all()
    gray = DreamerV3ImageDecoder(S * C + D, depth=2, out_channels=1)
    assert gray(torch.randn(5, S * C + D)).shape == (5, 1, 64, 64)


def test_channels_last_does_not_change_the_networks():
    torch.manual_seed(0)
    enc = DreamerV3ImageEncoder(depth=2)
    dec = DreamerV3ImageDecoder(20, depth=2, belief_dim=8, hidden=4)
    x, f = torch.rand(2, 3, 64, 64), torch.randn(2, 20)
    y1, z1 = enc(x), dec(f)
    enc.channels_last = dec.channels_last = False
    torch.testing.assert_close(enc(x), y1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dec(f), z1, rtol=1e-4, atol=1e-5)


def test_symexp_two_hot_head_starts_at_exactly_zero():
    head = SymExpTwoHot(S * C + D, hidden=8, layers=2)
    logits = head(torch.randn(4, 5, S * C + D) * 100)
    assert logits.shape == (4, 5, 255) and (logits == 0).all()
    assert head.mean(logits).shape == (4, 5, 1) and (head.mean(logits) == 0).all()
    # a trained-looking head decodes its two-hot target
    logits = torch.full((1, 255), -1e4)
    logits[0, 127 + 10] = 0.0
    assert head.mean(logits).item() == pytest.approx(head.bins[137].item(), rel=1e-5)


def test_continuous_actor_bounds():
    torch.manual_seed(0)
    actor = DreamerV3ContinuousActor(10, 3, hidden=8, layers=2, min_std=0.1, max_std=1.0)
    with torch.no_grad():
        actor.mlp.out.weight.mul_(1e4)  # saturate the squashings
    features = torch.randn(200, 10) * 10
    loc, scale = actor(features)
    assert loc.shape == scale.shape == (200, 3)
    assert (loc.abs() <= 1).all() and (scale >= 0.1).all() and (scale <= 1.0).all()
    assert scale.min() < 0.11 and scale.max() > 0.99  # both bounds are reached
    dist = actor.distribution(loc, scale)
    x = dist.sample((50,))
    assert x.shape == (50, 200, 3) and (x.abs() <= 1).all() and (x.abs() == 1).any()
    r = dist.rsample()
    assert (r.abs() <= 1).all()
    r.sum().backward()
    assert actor.mlp.out.weight.grad is not None
    assert dist.log_prob(x).shape == (50, 200)
    raw = actor.distribution(loc.detach(), scale.detach(), clip=False).sample((50,))
    assert (raw.abs() > 1).any()  # the authors' learner-side distribution is unbounded
    # a fresh actor: near-zero means, std near (max - min) sigmoid(2) + min
    fresh = DreamerV3ContinuousActor(10, 3, hidden=8, layers=2)
    loc, scale = fresh(torch.randn(4, 10))
    assert loc.abs().max() < 0.1
    torch.testing.assert_close(scale, torch.full_like(scale, 0.9 * torch.sigmoid(torch.tensor(
        2.0)).item() + 0.1), atol=0.02, rtol=0)


def test_discrete_actor_unimix_sampling_and_mode():
    torch.manual_seed(0)
    actor = DreamerV3DiscreteActor(10, 5, hidden=8, layers=2, unimix=0.01)
    with torch.no_grad():
        actor.mlp.out.weight.mul_(1e4)
    features = torch.randn(100, 10)
    logits = actor(features)
    probs = logits.exp()
    torch.testing.assert_close(probs, 0.99 * torch.softmax(actor.mlp(features), -1) + 0.002)
    assert probs.min() >= 0.002 * (1 - 1e-5)
    a = actor.sample(logits)
    assert ((a == 0) | (a == 1)).all() and (a.sum(-1) == 1).all()
    a.mul(torch.randn(a.shape)).sum().backward()  # straight-through: reaches the actor
    assert actor.mlp.out.weight.grad.abs().sum() > 0
    mode = actor.mode(logits)
    assert torch.equal(mode.argmax(-1), logits.argmax(-1)) and (mode.sum(-1) == 1).all()
    dist = actor.distribution(logits)
    assert dist.log_prob(a.detach()).shape == (100,)
    u = torch.rand(100, 5)
    assert torch.equal(actor.sample(logits, uniform=u), actor.sample(logits, uniform=u))


# ------------------------------------------------------------------------------ world model
def test_gradients_reach_every_world_model_parameter_in_one_backward():
    torch.manual_seed(0)
    prior, post, rollout = make_rssm()
    enc = DreamerV3ImageEncoder(depth=2)
    proj = torch.nn.Linear(enc.out_features, E)  # stands in for a matching embedding size
    dec = DreamerV3ImageDecoder(S * C + D, depth=2, belief_dim=D, hidden=4)
    reward = SymExpTwoHot(S * C + D, hidden=8, layers=1)
    cont = DreamerV3MLP(S * C + D, 1, hidden=8, layers=1)
    B, T = 2, 4
    obs = torch.rand(B, T, 3, 64, 64)
    td = make_batch(lead=(B,), T=T, resets=(0,))
    td["next", "encoded_latents"] = proj(enc(obs))
    out = rollout(td)
    features = torch.cat([out["next", "state"], out["next", "belief"]], -1)
    post_l, prior_l = out["next", "posterior_logits"], out["next", "prior_logits"]
    kl = (post_l.exp() * (post_l - prior_l)).sum((-1, -2))
    loss = ((dec(features) - obs) ** 2).sum((-1, -2, -3)) + kl
    loss = loss - torch.log_softmax(reward(features), -1)[..., 130] + cont(features).squeeze(-1)
    loss.mean().backward()
    modules = {"prior": prior, "post": post, "enc": enc, "dec": dec, "reward": reward,
               "cont": cont}
    for mname, module in modules.items():
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{mname}.{name}"
            assert torch.isfinite(p.grad).all(), f"{mname}.{name}"
            if mname == "reward" and not name.startswith("mlp.out"):
                # behind the zero-initialised output layer: exactly 0 at the first step
                assert (p.grad == 0).all(), f"{mname}.{name}"
            else:
                assert p.grad.abs().sum() > 0, f"{mname}.{name}"


# ------------------------------------------------------------------------------ fast paths
def concat_core(prior, state, belief, action):
    """The block GRU as the module docstring writes it: every block's belief slice
    concatenated with the same embedding, the block layers, the gates in their stored order
    ``[reset, cand, update]`` (the implementation before the split first layer)."""
    action = action / action.abs().clamp_min(1.0).detach()
    x = torch.cat([prior.dyn_in_belief(belief), prior.dyn_in_state(state),
                   prior.dyn_in_action(action)], -1)
    lead, k = belief.shape[:-1], prior.deter // prior.blocks
    x = torch.cat([belief.reshape(*lead, prior.blocks, k),
                   x.unsqueeze(-2).expand(*lead, prior.blocks, x.shape[-1])], -1).flatten(-2)
    for layer in prior.dyn_hidden:
        x = torch.nn.functional.silu(layer.norm(layer.linear(x)))
    reset, cand, update = prior.gru(x).reshape(*lead, prior.blocks, 3, k).unbind(-2)
    reset, cand, update = (y.reshape(*lead, prior.deter) for y in (reset, cand, update))
    update = torch.sigmoid(update - 1.0)
    return update * torch.tanh(torch.sigmoid(reset) * cand) + (1.0 - update) * belief


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dyn_layers", [1, 2])
def test_core_equals_the_concatenation_formula_in_values_and_gradients(dyn_layers, dtype):
    prior, _, _ = make_rssm(dyn_layers=dyn_layers)
    prior.to(dtype)
    g = torch.Generator().manual_seed(3)
    one_hot = torch.nn.functional.one_hot(torch.randint(C, (2, 5, S), generator=g), C)
    inputs = [one_hot.to(dtype).flatten(-2), torch.randn(2, 5, D, generator=g, dtype=dtype),
              3 * torch.randn(2, 5, A, generator=g, dtype=dtype)]
    inputs = [x.requires_grad_() for x in inputs]
    fast, slow = prior.core(*inputs), concat_core(prior, *inputs)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, slow, rtol=tol, atol=tol)
    w = torch.randn(fast.shape, generator=g, dtype=dtype)
    wrt = [*inputs, *prior.parameters()]
    names = ["state", "belief", "action"] + [n for n, _ in prior.named_parameters()]
    grads_fast = torch.autograd.grad((fast * w).sum(), wrt, allow_unused=True)
    grads_slow = torch.autograd.grad((slow * w).sum(), wrt, allow_unused=True)
    for name, a, b in zip(names, grads_fast, grads_slow, strict=True):
        if b is None:  # the prior head takes no part in the core
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, msg=name, rtol=10 * tol, atol=tol * b.abs().max())


def test_shared_input_weight_lays_the_blocks_side_by_side():
    from reverie.modules.rssm_v3 import shared_input_weight

    weight = torch.randn(G, 3 + 7, 3)  # k = 3 belief rows, 7 shared rows per block
    dense = shared_input_weight(weight, 3)
    assert dense.shape == (7, G * 3)
    for g in range(G):
        assert torch.equal(dense[:, 3 * g:3 * (g + 1)], weight[g, 3:])


def reference_sample(raw, unimix, uniform):
    """The sampler as two separate calls: the mixed logits, and the straight-through one-hot
    ``onehot + (1 - u) (softmax - sg(softmax))`` of the Gumbel-max draw."""
    logits = unimix_logits(raw, unimix)
    probs = torch.softmax(raw, -1)
    mixed = probs.detach() * (1 - unimix) + unimix / raw.shape[-1]
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    index = (mixed.log() + gumbel).argmax(-1, keepdim=True)
    onehot = torch.zeros_like(raw).scatter_(-1, index, 1.0)
    return logits, onehot + (1 - unimix) * (probs - probs.detach())


@pytest.mark.parametrize("unimix", [0.01, 0.0])
def test_sample_with_logits_equals_the_separate_computations(unimix):
    from reverie.modules.rssm_v3 import gumbel_from_uniform, sample_one_hot, sample_with_logits

    g = torch.Generator().manual_seed(4)
    raw = (3 * torch.randn(64, S, C, generator=g)).requires_grad_()
    uniform = torch.rand(64, S, C, generator=g)
    logits, state = sample_with_logits(raw, unimix, gumbel_from_uniform(uniform))
    ref_logits, ref_state = reference_sample(raw, unimix, uniform)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)  # the same operations
    assert torch.equal(state, ref_state) and ((state == 0) | (state == 1)).all()
    assert torch.equal(sample_one_hot(raw, unimix, gumbel_from_uniform(uniform)), state)
    # gradients through both outputs: the straight-through path reaches the logits
    w_state, w_logits = torch.randn(state.shape, generator=g), torch.randn(state.shape, generator=g)
    grad = torch.autograd.grad((state * w_state).sum() + (logits * w_logits).sum(), raw)[0]
    ref = torch.autograd.grad((ref_state * w_state).sum() + (ref_logits * w_logits).sum(), raw)[0]
    torch.testing.assert_close(grad, ref)
    grad_st = torch.autograd.grad((sample_one_hot(raw, unimix, gumbel_from_uniform(uniform))
                                   * w_state).sum(), raw)[0]
    ref_state = reference_sample(raw, unimix, uniform)[1]
    torch.testing.assert_close(grad_st, torch.autograd.grad((ref_state * w_state).sum(), raw)[0])
    assert grad_st.abs().sum() > 0


def test_fresh_gumbel_noise_is_the_formula_on_the_same_draw():
    from reverie.modules.rssm_v3 import _gumbel, gumbel_from_uniform

    ref = torch.zeros(1)
    fresh = _gumbel((5, S, C), ref, None, generator=torch.Generator().manual_seed(7))
    uniform = torch.rand(5, S, C, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fresh, gumbel_from_uniform(uniform))
    given = uniform.clone()
    assert torch.equal(_gumbel((5, S, C), ref, given, None), fresh)
    assert torch.equal(given, uniform)  # a given noise tensor is left as it was


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_equals_torch_in_values_and_gradients(dtype):
    from reverie.modules.rssm_v3 import rms_norm

    g = torch.Generator().manual_seed(5)
    norm = torch.nn.RMSNorm(8, eps=1e-4).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(8, generator=g))
    x = (2 * torch.randn(4, 3, 8, generator=g, dtype=dtype)).requires_grad_()
    for inp in (x, x.transpose(0, 1)):  # also on a non-contiguous view
        ours, ref = rms_norm(inp, norm), norm(inp)
        torch.testing.assert_close(ours, ref)
        w = torch.randn(ours.shape, generator=g, dtype=dtype)
        grads = torch.autograd.grad((ours * w).sum(), [x, norm.weight])
        refs = torch.autograd.grad((ref * w).sum(), [x, norm.weight])
        for a, b in zip(grads, refs, strict=True):
            torch.testing.assert_close(a, b)
    if dtype == torch.float64:  # second derivatives too (the backward is made of torch ops)
        assert torch.autograd.gradcheck(lambda t: rms_norm(t, norm), (x.detach().requires_grad_(),))
        assert torch.autograd.gradgradcheck(lambda t: rms_norm(t, norm),
                                            (x.detach().requires_grad_(),))


def test_rms_norm_of_bfloat16_inputs_is_torchs():
    """Under autocast the norm sees bfloat16 activations and a float32 scale: normalised in
    float32 and cast back, as torch does, with the same gradients."""
    from reverie.modules.rssm_v3 import rms_norm

    g = torch.Generator().manual_seed(6)
    norm = torch.nn.RMSNorm(8, eps=1e-4)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(8, generator=g))
    x = torch.randn(16, 8, generator=g).to(torch.bfloat16).requires_grad_()
    ours = rms_norm(x, norm)
    with pytest.warns(UserWarning, match="Mismatch dtype"):  # torch's unfused path
        ref = norm(x)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref)
    w = torch.randn(ours.shape, generator=g).to(torch.bfloat16)
    for a, b in zip(torch.autograd.grad((ours * w).sum(), [x, norm.weight]),
                    torch.autograd.grad((ref * w).sum(), [x, norm.weight]), strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_bfloat16_autocast_rollout_and_float32_gumbel_noise():
    """Under bfloat16 autocast the RSSM runs (the block-GRU step mixes dtypes) and the
    Gumbel noise is still drawn in float32: a bfloat16 draw would stop at 5.5."""
    from reverie.modules.rssm_v3 import _gumbel, sample_with_logits

    prior, post, rollout = make_rssm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rollout(make_batch(T=4, resets=(2,)))
        logits, state, belief = prior(torch.zeros(3, S * C), torch.randn(3, D),
                                      torch.randn(3, A))
    assert torch.isfinite(out["next", "belief"]).all() and belief.dtype == torch.float32
    assert ((state == 0) | (state == 1)).all() and (state.view(3, S, C).sum(-1) == 1).all()
    noise = _gumbel((200_000,), torch.zeros(1, dtype=torch.bfloat16), None,
                    generator=torch.Generator().manual_seed(0))
    assert noise.dtype == torch.float32 and noise.max() > 8.0
    raw = torch.randn(5, C).to(torch.bfloat16)
    logits, state = sample_with_logits(raw, 0.01, noise[:5 * C].view(5, C))
    assert logits.dtype == state.dtype == torch.bfloat16 and (state.sum(-1) == 1).all()


def test_networks_take_state_and_belief_separately():
    from reverie.modules.rssm_v3 import split_linear

    torch.manual_seed(0)
    z = torch.nn.functional.one_hot(torch.randint(C, (2, 5, S)), C).float().flatten(-2)
    h = torch.randn(2, 5, D)
    z.requires_grad_(), h.requires_grad_()
    nets = {"mlp": DreamerV3MLP(S * C + D, 3, hidden=8, layers=2),
            "no hidden layer": DreamerV3MLP(S * C + D, 3, hidden=8, layers=0),
            "features": DreamerV3MLP(S * C + D, None, hidden=8, layers=1),
            "two-hot": SymExpTwoHot(S * C + D, hidden=8, layers=1, outscale=1.0),
            "continuous actor": DreamerV3ContinuousActor(S * C + D, 2, hidden=8, layers=1),
            "discrete actor": DreamerV3DiscreteActor(S * C + D, 4, hidden=8, layers=1)}
    for name, net in nets.items():
        split, joined = net(z, h), net(torch.cat([z, h], -1))
        split, joined = (torch.cat(x, -1) if isinstance(x, tuple) else x for x in (split, joined))
        torch.testing.assert_close(split, joined, msg=name)
        w = torch.randn(split.shape)
        wrt = [z, h, *net.parameters()]
        for a, b in zip(torch.autograd.grad((split * w).sum(), wrt),
                        torch.autograd.grad((joined * w).sum(), wrt), strict=True):
            torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="concatenation"):
        split_linear((z, h[..., :-1]), torch.nn.Linear(S * C + D, 3))
