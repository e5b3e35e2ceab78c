"""``fit_ensemble``: bootstrap training of a probabilistic ensemble with early stopping and elites."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase

from reverie.modules.ensemble import EnsembleLinear
from reverie.validation import check_finite

__all__ = ["fit_ensemble", "member_mse"]


@torch.no_grad()
def member_mse(loss_module, data: TensorDictBase, chunk: int = 4096) -> torch.Tensor:
    """Per-member mean squared error of the predicted means, in normalised target space.

    Every member is evaluated on all of ``data`` (batch ``(N,)``), in chunks of ``chunk``
    transitions.

    Args:
        loss_module: an :class:`~reverie.objectives.ensemble_loss.EnsembleNLLLoss` (its
            keys and dynamics are used).
        data: transitions, batch size ``(N,)``.
        chunk: transitions per forward pass.

    Returns:
        ``(M,)`` MSE per member (averaged over transitions and target dims).
    """
    total = None
    for start in range(0, data.batch_size[0], chunk):
        part = data[start : start + chunk]
        obs, action, target = loss_module.batch_tensors(part)  # (M, b, ·)
        mean, _ = loss_module.dynamics.predict_members(obs, action)
        sq = (mean - target).pow(2).mean(-1).sum(-1)  # (M,)
        total = sq if total is None else total + sq
    return total / data.batch_size[0]


def _member_tensors(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters stacked per member (leading dim M) and parameters shared by all members."""
    stacked = {
        id(p) for m in model.modules() if isinstance(m, EnsembleLinear) for p in m.parameters()
    }
    params = list(model.parameters())
    return [p for p in params if id(p) in stacked], [p for p in params if id(p) not in stacked]


def fit_ensemble(
    dynamics,
    loss_module,
    optimizer: torch.optim.Optimizer,
    data: TensorDictBase,
    *,
    batch_size: int = 256,
    max_epochs: int = 100,
    holdout: float = 0.2,
    patience: int = 5,
    improvement: float = 0.01,
    max_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """Fit an :class:`~reverie.modules.ensemble.EnsembleDynamics` on ``N`` transitions.

    1. Split ``data`` at random into a training set and a holdout set (``holdout`` of it).
    2. Fit the input and target statistics on the training set.
    3. Draw one bootstrap resample of the training set per member (``N_train`` indices with
       replacement); each epoch shuffles every member's resample and walks through it in
       minibatches of batch ``(M, batch_size)``, minimising the sum of the ``loss_*`` terms
       of ``loss_module``.
    4. After each epoch, measure every member's holdout MSE (:func:`member_mse`). A member's
       best weights are kept whenever its MSE drops; training stops once no member has
       improved by more than ``improvement`` (relative) for ``patience`` epochs, or after
       ``max_epochs`` epochs / ``max_steps`` gradient steps.
    5. Restore each member's best weights (the shared log-variance bounds are taken from the
       epoch with the best mean holdout MSE) and keep as elites the members with the lowest
       holdout MSE. Without a holdout set (``holdout=0``) the final weights are kept and the
       elites are ranked by their MSE on the training set.

    All random choices (split, bootstrap, shuffles) use ``generator``, so a fit is
    deterministic given the generator's seed and the model's initial weights.

    Args:
        dynamics: the ensemble dynamics (``loss_module.dynamics``).
        loss_module: an :class:`~reverie.objectives.ensemble_loss.EnsembleNLLLoss`.
        optimizer: over the dynamics' parameters.
        data: ``N`` transitions (batch size ``(N,)``; more batch dims are flattened), with
            the keys ``loss_module`` reads.

    Keyword Args:
        batch_size: transitions per member per gradient step.
        max_epochs: epoch limit.
        holdout: fraction of ``data`` held out for early stopping and elite selection.
        patience: epochs without a significant improvement before stopping.
        improvement: relative MSE decrease that counts as an improvement.
        max_steps: optional limit on gradient steps.
        generator: a :class:`torch.Generator` on the CPU (global RNG when ``None``).

    Returns:
        a dict with ``epochs`` and ``steps`` (done), ``train_nll`` (mean ``loss_nll`` per
        epoch), ``holdout_mse`` (per member, after restoring; the training-set MSE when
        ``holdout=0``), ``holdout_mse_history`` (per epoch, per member) and ``elite_idx``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from reverie.modules.ensemble import EnsembleDynamics
        >>> from reverie.objectives.ensemble_loss import EnsembleNLLLoss
        >>> obs, action = torch.randn(500, 2), torch.rand(500, 1) * 2 - 1
        >>> data = TensorDict({"observation": obs, "action": action,
        ...                    "next": {"observation": obs + 0.1 * action}}, [500])
        >>> dyn = EnsembleDynamics(2, 1, num_members=4, num_elites=2, hidden=32, depth=2)
        >>> loss = EnsembleNLLLoss(dyn)
        >>> metrics = fit_ensemble(dyn, loss, torch.optim.Adam(dyn.parameters(), 1e-2), data,
        ...                        max_epochs=3, generator=torch.Generator().manual_seed(0))
        >>> metrics["epochs"], len(metrics["holdout_mse"]), dyn.model.elite_idx.numel()
        (3, 4, 2)
    """
    if getattr(loss_module, "dynamics", None) is not dynamics:
        raise ValueError("fit_ensemble: loss_module.dynamics must be the `dynamics` being fitted.")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"fit_ensemble: holdout must be in [0, 1), got {holdout}.")
    if batch_size < 1 or max_epochs < 1 or patience < 1:
        raise ValueError(
            f"fit_ensemble: batch_size, max_epochs and patience must be >= 1, got "
            f"{batch_size}, {max_epochs}, {patience}."
        )
    keys = loss_module.tensor_keys
    needed = [keys.observation, keys.action, keys.next_observation]
    if dynamics.learn_reward:
        needed.append(keys.reward)
    missing = [key for key in needed if data.get(key, None) is None]
    if missing:
        raise KeyError(
            f"fit_ensemble: the data lacks {missing} (it holds "
            f"{sorted(map(str, data.keys(True, True)))}). Rename them or `loss_module.set_keys(...)`."
        )
    data = data.select(*needed)  # minibatches index only what the loss reads
    check_finite("fit_ensemble", data, needed,
                 "Drop or repair those transitions (e.g. data[torch.isfinite(...).all(-1)]); "
                 "nothing was fitted.")
    if data.batch_dims != 1:
        data = data.reshape(-1)
    n = data.batch_size[0]
    n_hold = math.ceil(holdout * n) if holdout > 0 else 0
    if n - n_hold < 1:
        raise ValueError(f"fit_ensemble: {n} transitions leave none for training (holdout={holdout}).")
    device = data.device
    perm = torch.randperm(n, generator=generator)
    train = data[perm[n_hold:].to(device)]
    hold = data[perm[:n_hold].to(device)] if n_hold else None
    n_train = n - n_hold

    # ---- normalisation from the training split
    obs, action = train.get(keys.observation), train.get(keys.action)
    reward = train.get(keys.reward, None) if dynamics.learn_reward else None
    dynamics.fit_input_stats(obs, action)
    dynamics.fit_output_stats(obs, train.get(keys.next_observation), reward)

    # ---- one bootstrap resample per member
    members = dynamics.num_members
    bootstrap = torch.randint(n_train, (members, n_train), generator=generator)  # (M, N_train)
    stacked, shared = _member_tensors(dynamics.model)
    best_stacked = [p.detach().clone() for p in stacked]
    best_shared = [p.detach().clone() for p in shared]
    best = torch.full((members,), math.inf)
    best_mean = math.inf
    history: list[list[float]] = []
    train_nll: list[float] = []
    steps, epochs, stale = 0, 0, 0
    while epochs < max_epochs and (max_steps is None or steps < max_steps):
        order = torch.rand(members, n_train, generator=generator).argsort(dim=1)
        epoch_idx = bootstrap.gather(1, order).to(device)  # (M, N_train)
        total, batches = 0.0, 0
        for start in range(0, n_train, batch_size):
            batch = train[epoch_idx[:, start : start + batch_size]]  # (M, b)
            losses = loss_module(batch)
            loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(losses["loss_nll"].detach())
            batches += 1
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        epochs += 1
        train_nll.append(total / batches)
        if hold is None:
            continue
        mse = member_mse(loss_module, hold).cpu()  # (M,)
        history.append(mse.tolist())
        significant = mse < best * (1.0 - improvement)
        better = mse < best
        with torch.no_grad():
            for p, snapshot in zip(stacked, best_stacked, strict=True):
                snapshot[better.to(p.device)] = p[better.to(p.device)]
            if float(mse.mean()) < best_mean:
                best_mean = float(mse.mean())
                for p, snapshot in zip(shared, best_shared, strict=True):
                    snapshot.copy_(p)
        best = torch.minimum(best, mse)
        stale = 0 if bool(significant.any()) else stale + 1
        if stale >= patience:
            break

    if hold is not None:
        with torch.no_grad():
            for p, snapshot in zip(stacked + shared, best_stacked + best_shared, strict=True):
                p.copy_(snapshot)
        final = member_mse(loss_module, hold).cpu()
    else:
        final = member_mse(loss_module, train).cpu()
    dynamics.set_elites(final)
    return {
        "epochs": epochs,
        "steps": steps,
        "train_nll": train_nll,
        "holdout_mse": final.tolist(),
        "holdout_mse_history": history,
        "elite_idx": dynamics.model.elite_idx.tolist(),
    }
