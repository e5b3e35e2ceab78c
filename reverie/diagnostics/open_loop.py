"""Open-loop prediction diagnostics for a :class:`~reverie.modules.WorldModel`.

A world model that fits one-step transitions well can still drift badly when it is rolled
out on its own predictions, which is what planners and imagination-based agents do. The
functions here measure and show that drift on a *real, held-out* trajectory:

1. :func:`open_loop_predict`: from every start ``s`` encode the real observation ``o_s``
   once, then step the model open-loop with the real actions ``a_s, ..., a_{s+H-1}``
   (never re-encoding) and collect the predicted observation and reward at every
   horizon ``k = 1..H``, next to the true ones.
2. :func:`prediction_errors`: the multi-step prediction error table, RMSE against ``k``,
   together with a "constant prediction" baseline (predict ``o_s`` for every ``k``), so
   you can see whether the model beats doing nothing.
3. :func:`write_error_table`, :func:`plot_open_loop`, :func:`plot_error_curve`: a CSV of
   every ``k``, a short markdown table, and two PNG figures.
4. :func:`run_diagnostics`: all of the above into one folder; what a recipe calls at the
   end of a run.

Trajectory conventions (TorchRL): a trajectory is a TensorDict of batch size ``[T]`` (or
``[N, T]``, ``N`` trajectories of the same length) holding ``T`` transitions: the root has
the observation and action at time ``t`` and the ``"next"`` sub-tensordict the observation,
reward and done flag at ``t + 1``. The ``k``-step-ahead target from start ``s`` is therefore
``trajectory["next", "observation"][s + k - 1]``, and the starts are ``s = 0..T-H``.

Plots use matplotlib's object API with the Agg canvas: no window is opened and the global
pyplot backend is left alone.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey, unravel_key

__all__ = [
    "OpenLoopResult",
    "open_loop_predict",
    "decoded_observation",
    "prediction_errors",
    "write_error_table",
    "plot_open_loop",
    "plot_error_curve",
    "run_diagnostics",
]

#: how the predicted observation is read: a key the step writes under ``"next"``, or a
#: callable ``latent_td -> observation tensor`` (see :func:`open_loop_predict`)
PredictedObservation = NestedKey | Callable[[TensorDictBase], torch.Tensor]

DEFAULT_TABLE_HORIZONS = (1, 5, 10, 25, 50)


@dataclass
class OpenLoopResult:
    """Predicted and true values of an open-loop rollout from every start.

    ``S`` is the number of starts, ``H`` the horizon, ``D`` the number of observation
    features (observations of shape ``obs_shape`` are flattened to ``D = prod(obs_shape)``)
    and ``R`` the reward size (1 for the usual ``(1,)`` reward spec). Index ``k - 1`` of the
    horizon dimension holds the ``k``-step-ahead prediction.

    Attributes:
        predicted_observation: ``(S, H, D)`` model predictions.
        true_observation: ``(S, H, D)`` real observations ``o_{s+k}``.
        predicted_reward: ``(S, H, R)`` model rewards.
        true_reward: ``(S, H, R)`` real rewards ``r_{s+k}``.
        initial_observation: ``(S, D)`` real observation ``o_s`` each rollout started from.
        start: ``(S,)`` time index ``s`` of each start.
        trajectory_index: ``(S,)`` which trajectory each start is in (all 0 for a ``[T]``
            trajectory; the row of the flattened leading batch dims for ``[N, T]``).
    """

    predicted_observation: torch.Tensor
    true_observation: torch.Tensor
    predicted_reward: torch.Tensor
    true_reward: torch.Tensor
    initial_observation: torch.Tensor
    start: torch.Tensor
    trajectory_index: torch.Tensor

    @property
    def num_starts(self) -> int:
        """``S``, the number of open-loop rollouts."""
        return self.predicted_observation.shape[0]

    @property
    def horizon(self) -> int:
        """``H``, the number of steps each rollout predicts."""
        return self.predicted_observation.shape[1]

    @property
    def obs_dim(self) -> int:
        """``D``, the number of (flattened) observation features."""
        return self.predicted_observation.shape[2]

    def to_tensordict(self) -> TensorDict:
        """The same data as a TensorDict of batch size ``[S]``."""
        return TensorDict(
            {
                "predicted_observation": self.predicted_observation,
                "true_observation": self.true_observation,
                "predicted_reward": self.predicted_reward,
                "true_reward": self.true_reward,
                "initial_observation": self.initial_observation,
                "start": self.start,
                "trajectory_index": self.trajectory_index,
            },
            batch_size=[self.num_starts],
        )


# --------------------------------------------------------------------------- helpers
def _latent_keys(latent_key: NestedKey | Sequence[NestedKey]) -> list[NestedKey]:
    """One key (a string or a tuple nested key) or a list of keys -> list of keys."""
    if isinstance(latent_key, list):
        keys = [unravel_key(k) for k in latent_key]
    else:
        keys = [unravel_key(latent_key)]
    if not keys:
        raise ValueError("latent_key must name at least one key.")
    return keys


def _next(key: NestedKey) -> NestedKey:
    return unravel_key(("next", key))


def _is_under_next(key: NestedKey) -> bool:
    key = unravel_key(key)
    return isinstance(key, tuple) and key[0] == "next" and len(key) > 1


def _check_predicted_observation(predicted_observation) -> None:
    if callable(predicted_observation):
        return
    try:
        key = unravel_key(predicted_observation)
    except Exception as err:  # unravel_key raises on non-keys
        raise TypeError(
            "predicted_observation must be a key the world model's step writes under "
            '"next" (e.g. ("next", "latent")) or a callable latent_td -> tensor, got '
            f"{predicted_observation!r}."
        ) from err
    if not _is_under_next(key):
        raise ValueError(
            f"predicted_observation={key!r} is a root key: after WorldModel.step the root "
            "holds the *current* step (time s+k-1), so reading it would be off by one step. "
            f"Pass the key the step writes for the next step, e.g. {_next(key)!r}, or a "
            "callable that decodes the predicted latent (see decoded_observation)."
        )


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode (no dropout, frozen norms) and restore every flag after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _get(td: TensorDictBase, key: NestedKey, where: str) -> torch.Tensor:
    value = td.get(key, None)
    if value is None:
        raise KeyError(
            f"{where}: key {key!r} is not in the tensordict (it holds "
            f"{sorted(map(str, td.keys(True, True)))})."
        )
    return value


def decoded_observation(
    world_model, key: NestedKey | None = None
) -> Callable[[TensorDictBase], torch.Tensor]:
    """A ``predicted_observation`` callable that decodes the predicted latent.

    :func:`open_loop_predict` calls it on a tensordict whose root latent key(s) already
    hold the *predicted next* latent, so it only runs ``world_model.decode`` and reads
    ``key`` (what the decoder writes).

    Args:
        world_model: a :class:`~reverie.modules.WorldModel` with a decoder.
        key: the key the decoder writes, e.g. ``"reconstructed_observation"``. Default:
            the decoder's (last) out key.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import WorldModel
        >>> lin = lambda i, o, ik, ok: TensorDictModule(torch.nn.Linear(i, o), ik, ok)
        >>> wm = WorldModel(
        ...     lin(3, 4, ["observation"], ["latent"]),
        ...     lin(4 + 1, 4, ["latent", "action"], [("next", "latent")]),
        ...     lin(4, 1, [("next", "latent")], [("next", "reward")]),
        ...     decoder=lin(4, 3, ["latent"], ["reconstructed_observation"]))
        >>> decode = decoded_observation(wm)
        >>> decode(TensorDict({"latent": torch.zeros(5, 4)}, batch_size=[5])).shape
        torch.Size([5, 3])
    """
    if key is None:
        if getattr(world_model, "decoder", None) is None:
            raise RuntimeError("decoded_observation: the world model has no decoder; give it "
                               "one (decoder=...) or pass key= for a decoder of your own.")
        key = world_model.decoder.out_keys[-1]
    key = unravel_key(key)

    def predicted_observation(latent_td: TensorDictBase) -> torch.Tensor:
        return _get(world_model.decode(latent_td), key, "decoded_observation")

    return predicted_observation


# --------------------------------------------------------------------------- prediction
def open_loop_predict(
    world_model,
    trajectory: TensorDictBase,
    horizon: int,
    *,
    predicted_observation: PredictedObservation,
    latent_key: NestedKey | list[NestedKey] = "latent",
    observation_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    reward_key: NestedKey = "reward",
    done_key: NestedKey = "done",
) -> OpenLoopResult:
    """Roll the world model open-loop from every start of a real trajectory.

    For every start ``s = 0..T-H`` (all starts at once, as one batch of size ``S``):
    ``world_model.encode`` the real root tensordict at ``s`` (once), then for ``k = 1..H``
    set the real action ``a_{s+k-1}``, call ``world_model.step`` and record the predicted
    observation and the predicted ``("next", reward_key)``. Between steps only the latent
    is carried over: the next step's root ``latent_key`` is this step's
    ``("next", latent_key)`` (like ``step_mdp``); nothing real is fed back in except the
    actions. Runs under ``torch.no_grad()`` with the model in eval mode (restored after).

    If the trajectory has a ``("next", done_key)`` entry, starts whose window crosses an
    episode end (done at any of its first ``H - 1`` transitions) are skipped, so
    collector outputs that concatenate episodes can be passed as they are.

    Args:
        world_model: a :class:`~reverie.modules.WorldModel` (anything with ``encode`` and
            ``step`` that follows its key conventions).
        trajectory: real transitions, batch size ``[T]`` or ``[N, T]`` (the last batch
            dim is time), with root ``observation_key`` and ``action_key`` and
            ``("next", observation_key)``, ``("next", reward_key)``.
        horizon: ``H``, the number of open-loop steps; needs ``T >= H``.

    Keyword Args:
        predicted_observation: how the predicted observation ``o_{s+k}`` is obtained;
            required, so that it is explicit:

            * a key the step writes under ``"next"``, read right after each step:
              ``("next", "latent")`` when the latent *is* the observation,
              ``("next", "observation")`` when a head writes it. Root keys are refused
              (after a step the root holds time ``s+k-1``: off by one).
            * a callable ``latent_td -> tensor of shape (S, *obs_shape)``, called on the
              carried-over tensordict whose root ``latent_key`` holds the predicted latent
              at ``s+k`` (the ``("next", latent)`` already moved to the root), e.g.
              ``lambda td: world_model.decode(td)["reconstructed_observation"]``, or
              :func:`decoded_observation`. It gets a shallow copy: what it writes is not
              carried to the next step.
        latent_key: the latent the dynamics advance; a list of keys for a latent state
            made of several entries (e.g. ``["belief", "state"]``).
        observation_key, action_key, reward_key, done_key: trajectory keys.

    Returns:
        An :class:`OpenLoopResult` with predicted and true observations ``(S, H, D)``,
        rewards ``(S, H, R)``, the starting observations ``(S, D)`` and start indices.

    Raises:
        ValueError: if ``T < H`` (the message names both), if ``horizon < 1``, if every
            window crosses an episode end, if ``predicted_observation`` is a root key or
            the predicted observation does not have the true observation's size.
        KeyError: a key is missing from the trajectory or from what the model writes.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import WorldModel
        >>> add = torch.nn.Linear(2, 1, bias=False)  # x' = x + a (inputs are concatenated)
        >>> _ = torch.nn.init.ones_(add.weight)
        >>> wm = WorldModel(  # the latent is the observation; x' = x + a, r' = -x'^2
        ...     TensorDictModule(torch.nn.Identity(), ["observation"], ["latent"]),
        ...     TensorDictModule(add, ["latent", "action"], [("next", "latent")]),
        ...     TensorDictModule(lambda x: -x.pow(2), [("next", "latent")], [("next", "reward")]))
        >>> obs = torch.arange(13.0).unsqueeze(-1)  # o_t = t under actions a_t = 1
        >>> traj = TensorDict({"observation": obs[:-1], "action": torch.ones(12, 1),
        ...     "next": {"observation": obs[1:], "reward": -obs[1:].pow(2)}}, batch_size=[12])
        >>> result = open_loop_predict(wm, traj, horizon=4, predicted_observation=("next", "latent"))
        >>> result.predicted_observation.shape  # 12 - 4 + 1 starts, 4 steps, 1 feature
        torch.Size([9, 4, 1])
        >>> result.predicted_observation[2, :, 0]  # from o_2: o_3 .. o_6
        tensor([3., 4., 5., 6.])
        >>> bool((result.predicted_reward == result.true_reward).all())
        True
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}.")
    if trajectory.batch_dims == 0:
        raise ValueError(
            "open_loop_predict needs a trajectory with a time batch dimension, batch size "
            "[T] or [N, T]; got batch size []."
        )
    _check_predicted_observation(predicted_observation)
    latent_keys = _latent_keys(latent_key)
    observation_key, action_key = unravel_key(observation_key), unravel_key(action_key)
    n_steps = trajectory.batch_size[-1]
    if n_steps < horizon:
        raise ValueError(
            f"The trajectory has T={n_steps} transitions (batch size "
            f"{list(trajectory.batch_size)}) but a horizon of H={horizon} needs at least "
            f"H={horizon} transitions (H+1 observations) from each start. Pass a longer "
            f"held-out trajectory or a smaller horizon (at most {n_steps})."
        )

    traj = trajectory.reshape(-1, n_steps)  # [N, T]
    true_next_obs = _get(traj, _next(observation_key), "open_loop_predict(trajectory)")
    device = true_next_obs.device
    n_starts = n_steps - horizon + 1
    window = torch.arange(n_starts, device=device)[:, None] + torch.arange(
        horizon, device=device
    )  # (S0, H): the transitions s..s+H-1 each start uses

    valid = torch.ones(traj.batch_size[0], n_starts, dtype=torch.bool, device=device)
    done = traj.get(_next(done_key), None)
    if done is not None and horizon > 1:
        done = done.reshape(*traj.batch_size, -1).any(-1)  # [N, T]
        valid = ~done[:, window[:, :-1]].any(-1)  # no episode end inside the window
    traj_idx, start_idx = valid.nonzero(as_tuple=True)
    if traj_idx.numel() == 0:
        raise ValueError(
            f"Every {horizon}-step window of the trajectory crosses an episode end "
            f"(('next', {done_key!r}) is set inside each): no start is left. Pass longer "
            "episodes or a smaller horizon."
        )
    n = traj_idx.numel()
    rows, cols = traj_idx[:, None], window[start_idx]  # (S, 1), (S, H)

    def windows(key: NestedKey) -> torch.Tensor:  # [N, T, *f] -> (S, H, *f)
        return _get(traj, key, "open_loop_predict(trajectory)")[rows, cols]

    actions = windows(action_key)
    true_obs = true_next_obs[rows, cols].reshape(n, horizon, -1)
    true_reward = windows(_next(reward_key)).reshape(n, horizon, -1)
    root = traj.exclude("next")[traj_idx, start_idx]  # real data at s, batch [S]
    initial_obs = _get(root, observation_key, "open_loop_predict(trajectory)").reshape(n, -1)

    pred_obs, pred_reward = [], []
    with torch.no_grad(), _eval_mode(world_model):
        td = world_model.encode(root)
        for k in range(horizon):
            td.set(action_key, actions[:, k])
            td = world_model.step(td)
            pred_reward.append(_get(td, _next(reward_key), "WorldModel.step output"))
            carried = TensorDict(
                {key: _get(td, _next(key), "WorldModel.step output") for key in latent_keys},
                batch_size=[n],
                device=td.device,
            )
            if callable(predicted_observation):
                obs = predicted_observation(carried.copy())
            else:
                obs = _get(td, predicted_observation, "WorldModel.step output")
            pred_obs.append(obs.reshape(n, -1))
            td = carried  # step_mdp: the predicted next latent becomes the current one

    predicted = torch.stack(pred_obs, dim=1)
    if predicted.shape != true_obs.shape:
        raise ValueError(
            f"The predicted observation has {predicted.shape[-1]} features per step but the "
            f"true observation {observation_key!r} has {true_obs.shape[-1]}: check "
            "predicted_observation (a latent is not an observation unless the encoder is "
            "the identity; decode it with a callable)."
        )
    return OpenLoopResult(
        predicted_observation=predicted,
        true_observation=true_obs,
        predicted_reward=torch.stack(pred_reward, dim=1).reshape(n, horizon, -1),
        true_reward=true_reward,
        initial_observation=initial_obs,
        start=start_idx,
        trajectory_index=traj_idx,
    )


# --------------------------------------------------------------------------- errors
def prediction_errors(result: OpenLoopResult) -> dict:
    """The multi-step prediction error table: RMSE against the horizon ``k``.

    Every RMSE is the square root of the mean squared error over the ``S`` starts (and,
    for the overall observation RMSE, over the ``D`` features too). The constant baseline
    predicts the starting observation ``o_s`` at every ``k``; a model worth using has a
    lower ``obs_rmse`` than ``baseline_obs_rmse``.

    Args:
        result: the output of :func:`open_loop_predict`.

    Returns:
        A JSON-serialisable dict (lists have one entry per ``k = 1..H``)::

            horizon                    [1, 2, ..., H]
            obs_rmse                   H floats
            obs_rmse_per_dim           H lists of D floats
            reward_rmse                H floats
            baseline_obs_rmse          H floats
            baseline_obs_rmse_per_dim  H lists of D floats
            num_starts                 S
            obs_dim                    D

    Examples:
        >>> import torch
        >>> true = torch.ones(2, 3, 1)
        >>> result = OpenLoopResult(true + 0.5, true, torch.zeros(2, 3, 1), torch.zeros(2, 3, 1),
        ...     torch.zeros(2, 1), torch.arange(2), torch.zeros(2, dtype=torch.long))
        >>> errors = prediction_errors(result)
        >>> errors["obs_rmse"], errors["baseline_obs_rmse"]
        ([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    """
    pred = result.predicted_observation.detach().double()
    true = result.true_observation.detach().double()
    start = result.initial_observation.detach().double()
    mse = (pred - true).pow(2).mean(0)  # (H, D)
    baseline_mse = (start[:, None] - true).pow(2).mean(0)
    reward_mse = (
        (result.predicted_reward.detach().double() - result.true_reward.detach().double())
        .pow(2)
        .mean((0, 2))
    )
    return {
        "horizon": list(range(1, result.horizon + 1)),
        "obs_rmse": mse.mean(-1).sqrt().tolist(),
        "obs_rmse_per_dim": mse.sqrt().tolist(),
        "reward_rmse": reward_mse.sqrt().tolist(),
        "baseline_obs_rmse": baseline_mse.mean(-1).sqrt().tolist(),
        "baseline_obs_rmse_per_dim": baseline_mse.sqrt().tolist(),
        "num_starts": result.num_starts,
        "obs_dim": result.obs_dim,
    }


def _labels(obs_labels: Sequence[str] | None, obs_dim: int) -> list[str]:
    if obs_labels is None:
        return [f"obs[{i}]" for i in range(obs_dim)]
    labels = [str(label) for label in obs_labels]
    if len(labels) != obs_dim:
        raise ValueError(
            f"obs_labels has {len(labels)} labels but the observation has {obs_dim} features."
        )
    return labels


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def write_error_table(
    errors: dict,
    path_csv: str | os.PathLike,
    path_md: str | os.PathLike | None = None,
    horizons: Sequence[int] = DEFAULT_TABLE_HORIZONS,
    *,
    obs_labels: Sequence[str] | None = None,
) -> Path:
    """Write the prediction error table: a CSV of every ``k`` and a short markdown table.

    The CSV has one row per ``k`` with columns ``k, obs_rmse, baseline_obs_rmse,
    reward_rmse`` and then ``obs_rmse/<label>`` and ``baseline_obs_rmse/<label>`` per
    observation feature. The markdown table has the rows ``k`` in ``horizons`` that are
    at most ``H`` (plus ``H`` itself) with the overall RMSE, the baseline, their ratio
    (below 1: the model beats the constant prediction) and the reward RMSE.

    Args:
        errors: the output of :func:`prediction_errors`.
        path_csv: CSV path (parent folders are created).
        path_md: optional markdown path.
        horizons: the ``k`` shown in the markdown table.

    Keyword Args:
        obs_labels: one name per observation feature for the CSV columns.

    Returns:
        The CSV path.

    Examples:
        >>> import tempfile, pathlib
        >>> errors = {"horizon": [1, 2], "obs_rmse": [0.1, 0.2], "reward_rmse": [0.0, 0.1],
        ...     "baseline_obs_rmse": [0.5, 1.0], "obs_rmse_per_dim": [[0.1], [0.2]],
        ...     "baseline_obs_rmse_per_dim": [[0.5], [1.0]]}
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = write_error_table(errors, folder / "e.csv", folder / "e.md")
        >>> print((folder / "e.md").read_text().splitlines()[3])
        | 2 | 0.2 | 1 | 0.2 | 0.1 |
    """
    ks = list(errors["horizon"])
    per_dim = errors.get("obs_rmse_per_dim", [[] for _ in ks])
    base_per_dim = errors.get("baseline_obs_rmse_per_dim", [[] for _ in ks])
    labels = _labels(obs_labels, len(per_dim[0]) if per_dim else 0)

    path_csv = Path(path_csv)
    path_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(path_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["k", "obs_rmse", "baseline_obs_rmse", "reward_rmse"]
            + [f"obs_rmse/{label}" for label in labels]
            + [f"baseline_obs_rmse/{label}" for label in labels]
        )
        for i, k in enumerate(ks):
            writer.writerow(
                [k, errors["obs_rmse"][i], errors["baseline_obs_rmse"][i], errors["reward_rmse"][i]]
                + list(per_dim[i])
                + list(base_per_dim[i])
            )

    if path_md is not None:
        max_k = ks[-1]
        shown = sorted({k for k in horizons if 1 <= k <= max_k} | {max_k})
        lines = [
            "| k | obs RMSE | constant baseline | model / baseline | reward RMSE |",
            "|--:|--:|--:|--:|--:|",
        ]
        for k in shown:
            i = ks.index(k)
            model, base = errors["obs_rmse"][i], errors["baseline_obs_rmse"][i]
            ratio = _fmt(model / base) if base > 0 else "-"
            lines.append(
                f"| {k} | {_fmt(model)} | {_fmt(base)} | {ratio} | "
                f"{_fmt(errors['reward_rmse'][i])} |"
            )
        path_md = Path(path_md)
        path_md.parent.mkdir(parents=True, exist_ok=True)
        path_md.write_text("\n".join(lines) + "\n")
    return path_csv


# --------------------------------------------------------------------------- plots
def _new_figure(n_panels: int, panel_size: tuple[float, float] = (3.6, 2.6), max_cols: int = 4):
    from matplotlib.figure import Figure  # lazy: importing reverie stays cheap

    ncols = min(max_cols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig, path_png: str | os.PathLike) -> Path:
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=100)
    return path_png


def plot_open_loop(
    result: OpenLoopResult,
    path_png: str | os.PathLike,
    start: int = 0,
    obs_labels: Sequence[str] | None = None,
    *,
    max_dims: int = 24,
    title: str | None = None,
) -> Path:
    """Plot the real trajectory against the open-loop prediction from one start, in the
    common figure style (:func:`~reverie.diagnostics.figures.plot_real_vs_imagined`).

    One panel per observation feature plus one for the reward, x axis ``k = 0..H``
    steps after the start: the real values (``k = 0`` is the real starting observation)
    and the model's open-loop prediction (``k = 1..H``).

    Args:
        result: the output of :func:`open_loop_predict`.
        path_png: output image path (parent folders are created).
        start: which rollout to show, an index into the ``S`` starts (for a ``[T]``
            trajectory, the start time ``s``).
        obs_labels: one name per observation feature for the panel titles.

    Keyword Args:
        max_dims: plot at most this many observation features (the first ones).
        title: the figure title (default: where the prediction starts and its horizon).

    Returns:
        The PNG path.
    """
    from reverie.diagnostics.figures import plot_real_vs_imagined

    if not -result.num_starts <= start < result.num_starts:
        raise IndexError(f"start={start} is out of range for {result.num_starts} starts.")
    labels = _labels(obs_labels, result.obs_dim)
    n_dims = min(result.obs_dim, max_dims)
    true_obs = torch.cat([result.initial_observation[start, None], result.true_observation[start]], dim=0)
    pred_obs = result.predicted_observation[start]
    true_reward = result.true_reward[start][..., 0]
    pred_reward = result.predicted_reward[start][..., 0]
    s, traj = int(result.start[start]), int(result.trajectory_index[start])
    where = f"t={s}" if int(result.trajectory_index.max()) == 0 else f"t={s} of trajectory {traj}"
    hidden = f", first {n_dims} of {result.obs_dim} features" if n_dims < result.obs_dim else ""
    heading = f"open-loop prediction from {where}, H={result.horizon} steps{hidden}"
    return plot_real_vs_imagined(
        true_obs[:, :n_dims], pred_obs[:, :n_dims], path_png, names=labels[:n_dims],
        title=f"{title}: {heading}" if title else heading.capitalize(),
        real_start=0, imagined_start=1, xlabel="k (steps after start)",
        reward=(torch.cat([true_reward[:1] * float("nan"), true_reward]), pred_reward))


def plot_error_curve(errors: dict, path_png: str | os.PathLike) -> Path:
    """Plot prediction RMSE against the horizon ``k``: model vs the constant baseline.

    Two panels: observation RMSE (model and constant prediction ``o_s``) and reward RMSE.

    Args:
        errors: the output of :func:`prediction_errors`.
        path_png: output image path (parent folders are created).

    Returns:
        The PNG path.
    """
    ks = errors["horizon"]
    fig, (ax_obs, ax_rew) = _new_figure(2, panel_size=(4.8, 3.4))
    ax_obs.plot(ks, errors["obs_rmse"], marker=".", color="tab:orange", label="world model")
    ax_obs.plot(
        ks,
        errors["baseline_obs_rmse"],
        marker=".",
        color="gray",
        linestyle="--",
        label="constant prediction",
    )
    ax_obs.set_title("observation RMSE")
    ax_obs.legend(fontsize="small")
    ax_rew.plot(ks, errors["reward_rmse"], marker=".", color="tab:orange", label="world model")
    ax_rew.set_title("reward RMSE")
    for ax in (ax_obs, ax_rew):
        ax.set_xlabel("horizon k (open-loop steps)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    n = errors.get("num_starts")
    fig.suptitle("Multi-step prediction error" + (f" ({n} starts)" if n else ""))
    return _save(fig, path_png)


# --------------------------------------------------------------------------- all at once
def run_diagnostics(
    world_model,
    trajectory: TensorDictBase,
    out_dir: str | os.PathLike,
    horizon: int = 50,
    *,
    predicted_observation: PredictedObservation,
    obs_labels: Sequence[str] | None = None,
    start: int = 0,
    title: str | None = None,
    latent_key: NestedKey | list[NestedKey] = "latent",
    observation_key: NestedKey = "observation",
    action_key: NestedKey = "action",
    reward_key: NestedKey = "reward",
    done_key: NestedKey = "done",
) -> dict:
    """Open-loop diagnostics of a world model on a held-out trajectory, written to a folder.

    Runs :func:`open_loop_predict`, :func:`prediction_errors`, :func:`write_error_table`,
    :func:`plot_open_loop` and :func:`plot_error_curve`, writing into ``out_dir``:
    ``imagined_vs_real.png``, ``prediction_error.png``, ``prediction_error.csv`` and
    ``prediction_error.md``.

    Args:
        world_model: the :class:`~reverie.modules.WorldModel` to check.
        trajectory: real held-out transitions, batch size ``[T]`` or ``[N, T]``, ``T >= H``.
        out_dir: output folder (created if needed).
        horizon: ``H``, the number of open-loop steps.

    Keyword Args:
        predicted_observation: a ``("next", ...)`` key or a ``latent_td -> tensor``
            callable; see :func:`open_loop_predict`.
        obs_labels: one name per observation feature, for the plot and the CSV.
        start: the rollout shown in ``imagined_vs_real.png``.
        title: the figure's title (algorithm, env, seed, env steps).
        latent_key, observation_key, action_key, reward_key, done_key: see
            :func:`open_loop_predict`.

    Returns:
        The errors dict of :func:`prediction_errors`.

    Raises:
        ValueError: if the trajectory is shorter than the horizon (``T < H``).

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from reverie.modules import WorldModel
        >>> add = torch.nn.Linear(2, 1, bias=False)  # x' = x + a
        >>> _ = torch.nn.init.ones_(add.weight)
        >>> wm = WorldModel(
        ...     TensorDictModule(torch.nn.Identity(), ["observation"], ["latent"]),
        ...     TensorDictModule(add, ["latent", "action"], [("next", "latent")]),
        ...     TensorDictModule(lambda x: -x.pow(2), [("next", "latent")], [("next", "reward")]))
        >>> obs = torch.arange(13.0).unsqueeze(-1)
        >>> traj = TensorDict({"observation": obs[:-1], "action": torch.ones(12, 1),
        ...     "next": {"observation": obs[1:], "reward": -obs[1:].pow(2)}}, batch_size=[12])
        >>> errors = run_diagnostics(wm, traj, tempfile.mkdtemp(), horizon=5,
        ...     predicted_observation=("next", "latent"), obs_labels=["x"])
        >>> errors["obs_rmse"], errors["baseline_obs_rmse"]
        ([0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    """
    result = open_loop_predict(
        world_model,
        trajectory,
        horizon,
        predicted_observation=predicted_observation,
        latent_key=latent_key,
        observation_key=observation_key,
        action_key=action_key,
        reward_key=reward_key,
        done_key=done_key,
    )
    errors = prediction_errors(result)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_error_table(
        errors,
        out_dir / "prediction_error.csv",
        out_dir / "prediction_error.md",
        obs_labels=obs_labels,
    )
    plot_open_loop(result, out_dir / "imagined_vs_real.png", start=start, obs_labels=obs_labels, title=title)
    plot_error_curve(errors, out_dir / "prediction_error.png")
    return errors
