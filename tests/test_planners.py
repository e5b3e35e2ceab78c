"""Planners (CEM, MPPI, iCEM), rollout_objective and PlannerPolicy.

Optima are known in closed form (separable quadratics, a linear double integrator solved
with torch.linalg), objective values are hand-computed, and warm starts are checked
exactly; every test uses fixed seeds.
"""

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import Compose, GymEnv, InitTracker, SerialEnv, StepCounter, TransformedEnv

import reverie.envs.world_model_env as world_model_env_module
from reverie.envs import WorldModelEnv
from reverie.modules import WorldModel
from reverie.planners import (
    CEMPlanner,
    ICEMPlanner,
    MPPIPlanner,
    Planner,
    PlannerPolicy,
    cem_update,
    colored_noise,
    discounted_return,
    mppi_weights,
    rollout_objective,
    top_k,
)

LOW, HIGH = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 0.5])


# Settings under which each planner is precise to ~1e-2 on the 10-dim problems below.
# MPPI keeps a fixed noise: its update moves the mean to the precision-weighted average of
# the mean and the target (half-way for temperature = 2 noise_std^2) and its averaging
# error is ~ noise_std / sqrt(effective sample size), so the noise must be small. iCEM
# uses pink noise (beta = 1) and a constant population: red noise explores kinks in time
# (clipped optima) and ill-conditioned directions slowly, and its std shrinks faster.
PRECISE = {
    "cem": (CEMPlanner, dict(num_candidates=500, num_elites=50, iterations=16)),
    "mppi": (MPPIPlanner, dict(num_candidates=1000, iterations=20, noise_std=0.07,
                               temperature=0.01)),
    "icem": (ICEMPlanner, dict(num_candidates=1000, num_elites=50, iterations=16,
                               noise_beta=1.0, population_decay=1.0)),
}
PLANNERS = sorted(PRECISE)


def precise(name, low, high, horizon, **overrides):
    cls, kwargs = PRECISE[name]
    return cls(low, high, horizon, **{**kwargs, **overrides})


TOL = 2e-2
PLANNERS = sorted(PRECISE)


def quadratic(target):
    """``-(a - a*)^2`` summed over H and A; ``target`` broadcasts against ``(*E, H, A)``."""
    target = torch.as_tensor(target)
    target = target.unsqueeze(-3) if target.ndim >= 2 else target  # (*E, 1, H, A)

    def objective(actions):  # (*E, N, H, A) -> (*E, N)
        return -(actions - target).pow(2).sum((-2, -1))

    return objective


class Recorder:
    """Wraps an objective; keeps every action batch and the best value of each call."""

    def __init__(self, objective):
        self.objective, self.actions, self.best = objective, [], []

    def __call__(self, actions):
        values = self.objective(actions)
        self.actions.append(actions.clone())
        self.best.append(values.max(-1).values)
        return values


# ----------------------------------------------------------------------------- the math
def test_colored_noise_spectrum_slope_and_unit_variance():
    g = torch.Generator().manual_seed(0)
    horizon = 64
    for beta in (0.0, 1.0, 2.0):
        noise = colored_noise(beta, (20000, horizon), horizon_dim=-1, generator=g)
        assert abs(noise.var(0).mean().item() - 1.0) < 0.02  # every step: unit variance
        assert noise.var(0).min() > 0.95 and noise.var(0).max() < 1.05
        psd = torch.fft.rfft(noise, dim=-1).abs().pow(2).mean(0)[1:]  # drop f = 0
        log_f = torch.log(torch.fft.rfftfreq(horizon)[1:])
        x = log_f - log_f.mean()
        slope = (x * (psd.log() - psd.log().mean())).sum() / x.pow(2).sum()
        assert abs(slope.item() + beta) < 0.05, (beta, slope.item())


def test_colored_noise_other_dims_white_and_beta0_is_white():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(colored_noise(0.0, (4, 7, 2), 1, g1), torch.randn(4, 7, 2, generator=g2))
    # coloured along dim 0 only: samples along dims 1 are uncorrelated, along dim 0 correlated
    noise = colored_noise(2.0, (16, 20000), horizon_dim=0)
    corr_time = torch.corrcoef(noise[:2])[0, 1]  # neighbouring steps
    corr_other = torch.corrcoef(torch.stack([noise[:, 0::2].flatten(), noise[:, 1::2].flatten()]))
    assert corr_time > 0.5 and abs(corr_other[0, 1]) < 0.02
    # odd lengths and length 1
    assert abs(colored_noise(1.0, (20000, 7)).var().item() - 1) < 0.03
    assert colored_noise(2.0, (5, 1)).shape == (5, 1)


def test_mppi_weights_and_cem_update_golden_values():
    values = torch.tensor([[1.0, 2.0, 3.0], [1000.0, 1000.0, float("-inf")]])
    w = mppi_weights(values, temperature=0.5)
    e = torch.exp(torch.tensor([-4.0, -2.0, 0.0]))
    torch.testing.assert_close(w[0], e / e.sum())
    torch.testing.assert_close(w[1], torch.tensor([0.5, 0.5, 0.0]))  # no overflow
    samples = torch.tensor([[[0.0]], [[4.0]], [[2.0]], [[-1.0]]])  # N=4, H=A=1
    elites, elite_values = top_k(samples, torch.tensor([0.0, 5.0, 3.0, -2.0]), 2)
    assert elites.flatten().tolist() == [4.0, 2.0] and elite_values.tolist() == [5.0, 3.0]
    mean, std = cem_update(torch.full((1, 1), 1.0), torch.full((1, 1), 2.0), elites, 0.25)
    assert mean.item() == pytest.approx(0.25 * 1 + 0.75 * 3)
    assert std.item() == pytest.approx(0.25 * 2 + 0.75 * 1)
    _, std = cem_update(torch.zeros(1, 1), torch.zeros(1, 1), elites[:1], 0.0, min_std=0.1)
    assert std.item() == pytest.approx(0.1)


def test_mppi_one_update_is_the_gaussian_posterior_mean():
    # weights exp(-(a - a*)^2 / lambda) times the N(mu, sigma^2) sampling density give a
    # Gaussian with precision 1/sigma^2 + 2/lambda: the update is its mean
    sigma, lam, target = 0.5, 0.5, 0.3
    planner = MPPIPlanner([-10.0], [10.0], horizon=1, num_candidates=200000, noise_std=sigma,
                          temperature=lam)
    plan = planner.plan(quadratic(target))
    expected = (2 * target / lam) / (1 / sigma**2 + 2 / lam)  # 0.15
    assert plan.item() == pytest.approx(expected, abs=0.005)


def test_discounted_return_alive_mask():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    dones = torch.tensor([[False, False, True, True], [True, False, False, False]])
    torch.testing.assert_close(
        discounted_return(rewards, dones, 0.5), torch.tensor([1 + 0.5 + 0.25, 1.0])
    )
    torch.testing.assert_close(discounted_return(rewards, None, 0.5), torch.full((2,), 1.875))


# ----------------------------------------------------------------------------- optima
STEPS = torch.arange(5.0)


@pytest.mark.parametrize("name", PLANNERS)
def test_quadratic_optimum_inside_bounds(name):
    target = torch.stack([0.2 + 0.15 * STEPS, -1.5 + 0.3 * STEPS], -1)  # (H=5, A=2)
    planner = precise(name, LOW, HIGH, 5)
    plan = planner.plan(quadratic(target))
    assert plan.shape == (5, 2)
    torch.testing.assert_close(plan, target, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", PLANNERS)
def test_quadratic_optimum_outside_bounds_is_clipped(name):
    target = torch.stack([0.45 + 0.3 * STEPS, -2.9 + 0.6 * STEPS], -1)
    clipped = torch.clamp(target, LOW, HIGH)
    assert (clipped != target).sum() == 5  # 3 steps past the high bound, 2 past the low one
    planner = precise(name, LOW, HIGH, 5)
    plan = planner.plan(quadratic(target))
    torch.testing.assert_close(plan, clipped, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", PLANNERS)
def test_batched_envs_solved_in_one_call(name):
    targets = torch.tensor([[0.5, -1.5], [-0.8, 0.2], [0.1, -0.3]])[:, None, :]  # (E=3, 1, A)
    recorder = Recorder(quadratic(targets))
    planner = precise(name, LOW, HIGH, 4)
    plan = planner.plan(recorder, batch_shape=(3,))
    assert plan.shape == (3, 4, 2)
    torch.testing.assert_close(plan, targets.expand(3, 4, 2), atol=TOL, rtol=0)
    # one objective call per iteration, all envs and candidates at once
    assert len(recorder.actions) == planner.iterations
    assert all(a.shape[:1] == (3,) and a.shape[2:] == (4, 2) for a in recorder.actions)
    # two batch dims work the same
    plan2 = precise(name, LOW, HIGH, 4).plan(
        quadratic(targets.reshape(3, 1, 1, 2).expand(3, 2, 1, 2)), batch_shape=(3, 2))
    torch.testing.assert_close(plan2, targets[:, None].expand(3, 2, 4, 2), atol=TOL, rtol=0)


def _double_integrator(horizon=10, dt=0.2, goal=1.0, weight=10.0, rho=0.1):
    """Minimum-energy control of a double integrator and its exact optimum (least squares).

    ``v_{t+1} = v_t + dt a_t``, ``p_{t+1} = p_t + dt v_{t+1}`` from rest at 0; the cost
    ``weight (p_H - goal)^2 + weight v_H^2 + rho sum_t a_t^2`` is ``||M a - c||^2``.
    """

    def cost(actions):  # (..., H, 1) -> (...), by simulating the system step by step
        p = v = torch.zeros(actions.shape[:-2], dtype=actions.dtype)
        for t in range(horizon):
            v = v + dt * actions[..., t, 0]
            p = p + dt * v
        return weight * (p - goal) ** 2 + weight * v**2 + rho * actions.pow(2).sum((-2, -1))

    steps = torch.arange(horizon, dtype=torch.float64)
    gain_p, gain_v = dt * dt * (horizon - steps), torch.full((horizon,), dt, dtype=torch.float64)
    matrix = torch.cat([math.sqrt(weight) * torch.stack([gain_p, gain_v]),
                        math.sqrt(rho) * torch.eye(horizon, dtype=torch.float64)])
    rhs = torch.zeros(horizon + 2, 1, dtype=torch.float64)
    rhs[0] = math.sqrt(weight) * goal
    best = torch.linalg.lstsq(matrix, rhs).solution  # (H, 1)
    assert torch.allclose(cost(best), (matrix @ best - rhs).pow(2).sum())  # same system
    return (lambda a: -cost(a)), best.float(), cost(best).item()


@pytest.mark.parametrize("name", PLANNERS)
def test_linear_system_open_loop_optimum(name):
    objective, best, best_cost = _double_integrator()
    assert best.abs().max() < 2.0  # the optimum (a ramp from 1.2 to -1.1) is inside the bounds
    planner = precise(name, torch.tensor([-2.0]), torch.tensor([2.0]), 10,
                      **({"iterations": 30} if name == "mppi" else {}))
    plan = planner.plan(objective)
    planned_cost = -objective(plan).item()
    assert best_cost <= planned_cost <= 1.01 * best_cost, (planned_cost, best_cost)
    assert -objective(torch.zeros(10, 1)).item() > 10 * best_cost  # the test can fail


# ----------------------------------------------------------------------------- warm start
@pytest.mark.parametrize("name", PLANNERS)
def test_warm_start_shifts_previous_solution_and_reset_forgets(name):
    planner = precise(name, LOW, HIGH, 4)
    targets = torch.tensor([[0.5, -1.5], [-0.8, 0.2], [0.1, -0.3]])[:, None, :]
    plan = planner.plan(quadratic(targets), batch_shape=(3,))
    assert torch.equal(planner.solution, plan)
    middle = (LOW + HIGH) / 2
    guess = planner.initial_guess((3,))
    assert torch.equal(guess[:, :-1], plan[:, 1:]) and torch.equal(guess[:, -1], middle.expand(3, 2))
    # the next plan starts from that guess: with zero noise its first candidates are the guess
    for buffer in ("init_std", "noise_std"):
        if hasattr(planner, buffer):
            getattr(planner, buffer).zero_()
    recorder = Recorder(quadratic(targets))
    planner.plan(recorder, batch_shape=(3,))
    assert torch.equal(recorder.actions[0][:, 0], guess)
    # another batch shape starts cold; reset(mask) forgets some envs, reset() all
    assert torch.equal(planner.initial_guess((2,)), middle.expand(2, 4, 2))
    previous = planner.solution.clone()
    planner.reset(torch.tensor([True, False, True]))
    assert torch.equal(planner.solution[1], previous[1])
    assert torch.equal(planner.solution[[0, 2]], middle.expand(2, 4, 2))
    planner.reset()
    assert planner.solution is None
    assert torch.equal(planner.initial_guess((3,)), middle.expand(3, 4, 2))
    # warm_start=False never uses the stored solution
    cold = precise(name, LOW, HIGH, 4, warm_start=False)
    cold.plan(quadratic(targets), batch_shape=(3,))
    assert torch.equal(cold.initial_guess((3,)), middle.expand(3, 4, 2))


def test_icem_reuses_shifted_elites_and_reset_forgets_them():
    planner = ICEMPlanner(LOW, HIGH, 4, num_candidates=50, num_elites=10, iterations=2)
    targets = torch.tensor([[0.5, -1.5], [-0.8, 0.2]])[:, None, :]
    planner.plan(quadratic(targets), batch_shape=(2,))
    kept = planner.kept_elites.clone()
    assert kept.shape == (2, 3, 4, 2)  # ceil(0.3 * 10)
    recorder = Recorder(quadratic(targets))
    planner.plan(recorder, batch_shape=(2,))
    first = recorder.actions[0]  # (2, N_0 + 3, 4, 2): the kept elites shifted come last
    assert first.shape == (2, 50 + 3, 4, 2)
    assert torch.equal(first[:, -3:, :-1], kept[:, :, 1:])
    assert torch.equal(first[:, -3:, -1], ((LOW + HIGH) / 2).expand(2, 3, 2))
    # later iterations: N_i = max(50 / 1.25^i, 20) samples, the previous best 3, and the mean
    assert recorder.actions[1].shape == (2, 40 + 3 + 1, 4, 2)
    planner.reset(torch.tensor([True, False]))
    assert torch.equal(planner.kept_elites[0], ((LOW + HIGH) / 2).expand(3, 4, 2))
    planner.reset()
    assert planner.kept_elites is None


@pytest.mark.parametrize("name", PLANNERS)
def test_warm_start_needs_fewer_iterations_on_a_moving_target(name):
    """MPC on a slowly moving target: iterations until the best value so far reaches -0.4."""
    make = {
        "cem": lambda warm: CEMPlanner(LOW, HIGH, 8, num_candidates=200, num_elites=20,
                                       iterations=8, init_std=0.5, warm_start=warm),
        "mppi": lambda warm: MPPIPlanner(LOW, HIGH, 8, num_candidates=200, iterations=8,
                                         noise_std=0.2, temperature=0.05, warm_start=warm),
        "icem": lambda warm: ICEMPlanner(LOW, HIGH, 8, num_candidates=200, num_elites=20,
                                         iterations=8, init_std=0.5, warm_start=warm),
    }[name]
    needed, first_values = {}, {}
    for warm in (True, False):
        torch.manual_seed(0)
        planner = make(warm)
        for step in range(6):  # the target moves by 0.02 per control step
            target = torch.tensor([0.6 + 0.02 * step, 0.1 - 0.02 * step])
            recorder = Recorder(quadratic(target))
            planner.plan(recorder)
        best_so_far = torch.stack(recorder.best).cummax(0).values  # after each iteration
        assert best_so_far[-1] >= -0.4  # both get there within their 8 iterations
        needed[warm] = int((best_so_far < -0.4).sum()) + 1
        first_values[warm] = recorder.best[0]
    assert needed[True] < needed[False], needed
    assert first_values[True] > first_values[False]


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("name", PLANNERS)
def test_bounds_always_respected(name):
    recorder = Recorder(lambda a: a.sum((-2, -1)) * 100 - a[..., 0].pow(2).sum(-1) * 50)
    planner = {
        "cem": CEMPlanner(LOW, HIGH, 3, num_candidates=64, num_elites=8, iterations=3,
                          init_std=10.0),
        "mppi": MPPIPlanner(LOW, HIGH, 3, num_candidates=64, iterations=3, noise_std=10.0),
        "icem": ICEMPlanner(LOW, HIGH, 3, num_candidates=64, num_elites=8, iterations=3,
                            init_std=10.0),
    }[name]
    for _ in range(3):  # warm-started calls too
        plan = planner.plan(recorder, batch_shape=(2,))
        assert ((plan >= LOW) & (plan <= HIGH)).all()
    seen = torch.cat([a.reshape(-1, 2) for a in recorder.actions])
    assert ((seen >= LOW) & (seen <= HIGH)).all()
    assert (seen == HIGH).any() and (seen == LOW).any()  # samples did reach past the bounds


def test_bounds_from_spec_and_errors():
    spec = Bounded(-2.0, 3.0, (4, 1))  # batched spec with the same bounds everywhere
    planner = CEMPlanner(action_spec=spec, horizon=2)
    assert planner.action_low.tolist() == [-2.0] and planner.action_high.tolist() == [3.0]
    assert planner.init_std.tolist() == [2.5]
    with pytest.raises(TypeError, match="action_spec"):
        CEMPlanner(horizon=2)
    with pytest.raises(ValueError, match="finite"):
        CEMPlanner([-float("inf")], [1.0])
    with pytest.raises(ValueError, match=r"values \(\*E, N\)"):
        CEMPlanner([-1.0], [1.0], 2).plan(lambda a: a.sum(-1))


def test_planner_follows_the_bounds_device_and_dtype():
    planner = CEMPlanner(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0]),
                         horizon=2, num_candidates=8, num_elites=2, iterations=1)
    plan = planner.plan(quadratic(0.5))
    assert plan.dtype == torch.float64 and planner.solution.dtype == torch.float64
    planner.to(torch.float32)
    assert planner.solution.dtype == torch.float32  # the warm start is a buffer


# ----------------------------------------------------------------------------- rollout_objective
class MemberReward(torch.nn.Module):
    """Linear reward plus ``10 * m`` where member ``m = row % 3`` of the flattened batch."""

    def __init__(self, latent_dim):
        super().__init__()
        self.linear = torch.nn.Linear(latent_dim, 1)

    def forward(self, latent):
        rows = latent.reshape(-1, latent.shape[-1]).shape[0]
        member = (torch.arange(rows) % 3).to(latent.dtype).reshape(*latent.shape[:-1], 1)
        return self.linear(latent) + 10 * member


def _linear_env(done_threshold=None, member_reward=False):
    latent_dim, action_dim = 3, 2
    encoder = TensorDictModule(torch.nn.Linear(2, latent_dim), ["observation"], ["latent"])
    dynamics = TensorDictModule(torch.nn.Linear(latent_dim + action_dim, latent_dim),
                                ["latent", "action"], [("next", "latent")])
    head = MemberReward(latent_dim) if member_reward else torch.nn.Linear(latent_dim, 1)
    reward = TensorDictModule(head, [("next", "latent")], [("next", "reward")])
    done = None
    if done_threshold is not None:
        class Done(torch.nn.Module):
            def forward(self, latent):
                return latent[..., :1] > done_threshold

        done = TensorDictModule(Done(), [("next", "latent")], [("next", "done")])
    wm = WorldModel(encoder, dynamics, reward, done_head=done)
    env = WorldModelEnv(
        wm,
        observation_spec=Composite(latent=Unbounded((latent_dim,))),
        action_spec=Bounded(-1.0, 1.0, (action_dim,)),
    )
    return wm, env


def _hand_rollout(wm, latent, actions):
    """Latents, rewards and raw reward-head outputs by hand: (*B, H)."""
    weight, bias = wm.dynamics.module.weight, wm.dynamics.module.bias
    head = wm.reward_head.module
    linear = head.linear if isinstance(head, MemberReward) else head
    latents, rewards = [], []
    latent = latent.expand(*actions.shape[:-2], latent.shape[-1])
    for t in range(actions.shape[-2]):
        latent = torch.cat([latent, actions[..., t, :]], -1) @ weight.T + bias
        latents.append(latent)
        rewards.append((latent @ linear.weight.T + linear.bias)[..., 0])
    return torch.stack(latents, -2), torch.stack(rewards, -1)


def _spy_fast_path(monkeypatch):
    calls = []
    original = world_model_env_module.fast_rollout

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(world_model_env_module, "fast_rollout", spy)
    return calls


@torch.no_grad()
def test_rollout_objective_exact_discounted_sum_on_fast_path(monkeypatch):
    calls = _spy_fast_path(monkeypatch)
    wm, env = _linear_env()
    start = wm.encode(TensorDict({"observation": torch.randn(2, 2)}, [2]))  # E = 2
    actions = torch.rand(2, 5, 4, 2) * 2 - 1  # (E, N, H, A)
    objective = rollout_objective(env, start, discount=0.9)
    values = objective(actions)
    assert values.shape == (2, 5)
    _, rewards = _hand_rollout(wm, start["latent"][:, None], actions)  # (E, N, H)
    expected = (rewards * 0.9 ** torch.arange(4.0)).sum(-1)
    torch.testing.assert_close(values, expected)
    assert calls == [True]  # the WorldModelEnv fast path ran
    # the generic EnvBase.rollout loop gives the same values
    env.fast_rollout = False
    torch.testing.assert_close(objective(actions), expected)
    # a second objective reuses the env's playback policy (no growth of the plan cache)
    env.fast_rollout = True
    rollout_objective(env, start)(actions)
    assert sum(1 for k in env._cache if isinstance(k, tuple) and k[0] == "reverie_fast_plan") == 1
    # unbatched start, E = ()
    values = rollout_objective(env, start[0], discount=0.9)(actions[0])
    torch.testing.assert_close(values, expected[0])


@torch.no_grad()
def test_rollout_objective_particles_see_every_member():
    wm, env = _linear_env(member_reward=True)
    start = wm.encode(TensorDict({"observation": torch.randn(2, 2)}, [2]))
    actions = torch.rand(2, 6, 3, 2) * 2 - 1  # N = 6, a multiple of the 3 members
    _, rewards = _hand_rollout(wm, start["latent"][:, None], actions)
    base = (rewards * 0.5 ** torch.arange(3.0)).sum(-1)  # (E, N)
    discount_sum = 1 + 0.5 + 0.25
    # particle dim innermost: with P = 3 every candidate averages members 0, 1, 2
    values = rollout_objective(env, start, particles=3, discount=0.5)(actions)
    torch.testing.assert_close(values, base + 10 * discount_sum * (0 + 1 + 2) / 3)
    # with P = 1 candidate n is member n % 3 (in the flattened (E, N) order)
    values = rollout_objective(env, start, particles=1, discount=0.5)(actions)
    member = (torch.arange(12) % 3).reshape(2, 6).float()
    torch.testing.assert_close(values, base + 10 * discount_sum * member)


@torch.no_grad()
def test_rollout_objective_stops_counting_after_done(monkeypatch):
    calls = _spy_fast_path(monkeypatch)
    wm, env = _linear_env(done_threshold=0.0)
    torch.manual_seed(1)
    start = wm.encode(TensorDict({"observation": torch.randn(3, 2)}, [3]))
    actions = torch.rand(3, 16, 6, 2) * 2 - 1
    latents, rewards = _hand_rollout(wm, start["latent"][:, None], actions)
    dones = latents[..., 0] > 0.0  # (E, N, H)
    first = torch.where(dones.any(-1), dones.float().argmax(-1), torch.full(dones.shape[:-1], 6))
    alive = torch.arange(6) <= first.unsqueeze(-1)  # up to and including the first done
    expected = (rewards * 0.95 ** torch.arange(6.0) * alive).sum(-1)
    # the case this test is about occurs: trajectories end mid-horizon, others never
    assert ((first > 0) & (first < 5)).any() and (first == 6).any()
    assert (dones & ~alive).any()  # imagined steps after an end that must not count
    values = rollout_objective(env, start, particles=2, discount=0.95)(actions)
    torch.testing.assert_close(values, expected)
    assert all(calls) and calls
    # ignoring done flags counts everything
    values = rollout_objective(env, start, discount=0.95, done_key=None)(actions)
    torch.testing.assert_close(values, (rewards * 0.95 ** torch.arange(6.0)).sum(-1))


def test_rollout_objective_with_planners_and_errors():
    wm, env = _linear_env()
    start = wm.encode(TensorDict({"observation": torch.randn(2, 2)}, [2]))
    objective = rollout_objective(env, start, particles=2)
    for planner in (CEMPlanner(action_spec=env.action_spec, horizon=3, num_candidates=16,
                               num_elites=4, iterations=2),
                    MPPIPlanner(action_spec=env.action_spec, horizon=3, num_candidates=16),
                    ICEMPlanner(action_spec=env.action_spec, horizon=3, num_candidates=16,
                                num_elites=4, iterations=2)):
        assert planner.plan(objective, batch_shape=(2,)).shape == (2, 3, 2)
    with pytest.raises(ValueError, match=r"\(\*E, N, H, A\)"):
        objective(torch.zeros(16, 3, 2))
    batched = WorldModelEnv(wm, observation_spec=Composite(latent=Unbounded((3,))),
                            action_spec=Bounded(-1.0, 1.0, (2,)), batch_size=[2])
    with pytest.raises(ValueError, match="batch_size=\\[\\]"):
        rollout_objective(batched, start)


# ----------------------------------------------------------------------------- PlannerPolicy
def _toy_factory(td):
    return quadratic(0.5)  # broadcasts over any (*E, N, H, A)


def test_planner_policy_in_gym_rollout_and_collector():
    from torchrl.collectors import Collector

    env = GymEnv("Pendulum-v1")  # a plain env first, then one with InitTracker (collector)
    planner = CEMPlanner(action_spec=env.action_spec, horizon=4, num_candidates=100,
                         num_elites=10, iterations=8)
    policy = PlannerPolicy(planner, _toy_factory)
    rollout = env.rollout(5, policy)
    assert rollout["action"].shape == (5, 1)
    torch.testing.assert_close(rollout["action"], torch.full((5, 1), 0.5), atol=0.1, rtol=0)
    # the collector wants an InitTracker (PlannerPolicy uses is_init to reset warm starts)
    env = TransformedEnv(env, InitTracker())
    collector = Collector(env, policy, frames_per_batch=4, total_frames=8)
    batches = [batch for batch in collector]
    collector.shutdown()
    assert len(batches) == 2 and all(b["action"].shape == (4, 1) for b in batches)
    assert all(((b["action"] >= -2) & (b["action"] <= 2)).all() for b in batches)


def test_planner_policy_with_world_model_objective_and_batched_env():
    env = SerialEnv(2, lambda: GymEnv("Pendulum-v1"))
    wm = WorldModel(
        TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["latent"]),
        TensorDictModule(torch.nn.Linear(5, 4), ["latent", "action"], [("next", "latent")]),
        TensorDictModule(torch.nn.Linear(4, 1), [("next", "latent")], [("next", "reward")]),
    )
    imagination = WorldModelEnv(wm, GymEnv("Pendulum-v1"))

    def factory(td):
        return rollout_objective(imagination, wm.encode(td.select("observation")), particles=2)

    planner = ICEMPlanner(action_spec=imagination.action_spec, horizon=5, num_candidates=32,
                          num_elites=4, iterations=2)
    with torch.no_grad():
        rollout = env.rollout(3, PlannerPolicy(planner, factory))
    env.close()
    assert rollout["action"].shape == (2, 3, 1)
    assert planner.solution.shape == (2, 5, 1)


class StepPlanner(Planner):
    """Adds 0.1 to the initial guess: the first action tells whether the warm start was kept."""

    def _optimize(self, objective, mean, batch_shape, warm, generator):
        return mean + 0.1


def test_planner_policy_resets_warm_start_at_episode_starts():
    policy = PlannerPolicy(StepPlanner([-1.0], [1.0], horizon=3), _toy_factory)
    td = TensorDict({"observation": torch.zeros(2, 3)}, [2])
    assert policy(td.clone())["action"].flatten().tolist() == pytest.approx([0.1, 0.1])
    assert policy(td.clone())["action"].flatten().tolist() == pytest.approx([0.2, 0.2])
    starts = td.clone().set("is_init", torch.tensor([[True], [False]]))
    assert policy(starts)["action"].flatten().tolist() == pytest.approx([0.1, 0.3])
    done = td.clone().set("done", torch.tensor([[False], [True]]))
    assert policy(done)["action"].flatten().tolist() == pytest.approx([0.2, 0.1])
    counted = td.clone().set("step_count", torch.tensor([[0], [0]]))
    assert policy(counted)["action"].flatten().tolist() == pytest.approx([0.1, 0.1])
    policy.reset()
    assert policy.planner.solution is None


def test_planner_policy_resets_between_episodes_of_a_transformed_env():
    env = TransformedEnv(GymEnv("Pendulum-v1"), Compose(InitTracker(), StepCounter()))
    policy = PlannerPolicy(StepPlanner(action_spec=env.action_spec, horizon=3), _toy_factory)
    first = env.rollout(2, policy)["action"].flatten().tolist()
    second = env.rollout(2, policy)["action"].flatten().tolist()
    assert first == pytest.approx([0.1, 0.2]) and second == pytest.approx([0.1, 0.2])


# ------------------------------------------------------------------ non-finite objectives
@pytest.mark.parametrize("cls", ["CEMPlanner", "ICEMPlanner", "MPPIPlanner"])
def test_an_objective_without_any_finite_value_is_an_error_not_a_nan_plan(cls):
    import reverie.planners as planners

    elites = {} if cls == "MPPIPlanner" else {"num_elites": 4}
    planner = getattr(planners, cls)(action_low=[-1.0], action_high=[1.0], horizon=3,
                                     num_candidates=16, iterations=2, **elites)

    def nan_for_env_1(actions):  # (2, N, H, 1) -> (2, N): env 1 is all NaN
        values = -actions.pow(2).sum((-2, -1))
        values[1] = float("nan")
        return values

    with pytest.raises(ValueError, match=r"no finite value.*\[\[1\]\]"):
        planner.plan(nan_for_env_1, (2,))


@pytest.mark.parametrize("cls", ["CEMPlanner", "ICEMPlanner", "MPPIPlanner"])
def test_non_finite_candidates_count_as_the_worst(cls):
    """Some NaN / +inf candidates: they are never chosen; the plan is finite."""
    import reverie.planners as planners

    elites = {} if cls == "MPPIPlanner" else {"num_elites": 4}
    planner = getattr(planners, cls)(action_low=[-1.0], action_high=[1.0], horizon=2,
                                     num_candidates=32, iterations=3, **elites)

    def objective(actions):  # best at +0.5; candidates with a positive first action are broken
        values = -(actions - 0.5).pow(2).sum((-2, -1))
        broken = actions[..., 0, 0] > 0.9
        values[broken] = float("inf")
        values[actions[..., 0, 0] < -0.9] = float("nan")
        return values

    plan = planner.plan(objective, (), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(plan).all() and (plan[0, 0] <= 0.9)


def test_an_unbounded_action_spec_is_refused():
    from torchrl.data import Unbounded

    from reverie.planners import CEMPlanner

    with pytest.raises(ValueError, match="finite range"):
        CEMPlanner(action_spec=Unbounded((1,)), horizon=3)
