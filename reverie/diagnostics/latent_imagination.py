"""Imagined vs real observations for RSSM world models (Dreamer): open loop, decoded."""

from __future__ import annotations

import os

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn

__all__ = ["imagine_open_loop", "plot_imagined_vs_real", "write_latent_diagnostics"]


@torch.no_grad()
def imagine_open_loop(world_model: TensorDictModuleBase, prior: nn.Module, decoder: nn.Module,
                      real: TensorDictBase, context: int,
                      obs_key: str = "observation") -> tuple[Tensor, Tensor]:
    """Filter ``context`` real steps, then predict the rest of ``real`` open loop.

    The world model (encoder + :class:`~reverie.modules.RSSMRollout` or
    :class:`~reverie.modules.RSSMRolloutV3`) filters ``real[:context]``; from its last
    posterior latent the prior's most likely step (``prior.mode``: the Gaussian mean for
    Dreamer, the most likely class of every categorical for DreamerV3) is rolled forward with
    the real actions ``real["action"][context:]`` and decoded.

    Args:
        world_model: writes ``("next", "state")``/``("next", "belief")`` for a ``[T]`` episode.
        prior: a prior with ``mode(state, belief, action) -> (state, belief)``
            (:class:`~reverie.modules.RSSMPrior`, :class:`~reverie.modules.RSSMPriorV3`).
        decoder: ``(state, belief) -> observation``.
        real: one real episode ``[T]`` with ``action`` and ``("next", obs_key)``.
        context: filtered steps (``0 < context < T``).
        obs_key: the observation key.

    Returns:
        ``(truth, imagined)``, each ``(T - context, *obs)``.
    """
    T = real.shape[0]
    if not 0 < context < T:
        raise ValueError(f"imagine_open_loop: context={context} must be in (0, {T}).")
    filtered = world_model(real[:context].clone()).get("next")
    state, belief = filtered["state"][-1], filtered["belief"][-1]
    imagined = []
    for t in range(context, T):
        state, belief = prior.mode(state, belief, real["action"][t])
        imagined.append(decoder(state, belief))
    return real["next", obs_key][context:], torch.stack(imagined)


def plot_imagined_vs_real(truth: Tensor, imagined: Tensor, path: str | os.PathLike, title: str,
                          context: int = 0, columns: int = 10) -> None:
    """Frames (``(T, C, H, W)``: a real row over an imagined row, ``columns`` of them) or
    curves (``(T, D)``: one panel per dimension) of real vs imagined observations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = truth.shape[0]
    if truth.ndim == 4:
        cols = list(range(0, horizon, max(1, horizon // columns)))
        fig, axes = plt.subplots(2, len(cols), figsize=(1.2 * len(cols), 2.8), squeeze=False)
        for j, t in enumerate(cols):
            for i, img in enumerate((truth[t], imagined[t])):
                axes[i, j].imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy())
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[0, j].set_title(f"t+{t + 1}", fontsize=7)
        axes[0, 0].set_ylabel("real", fontsize=8)
        axes[1, 0].set_ylabel("imagined", fontsize=8)
    else:
        dims = truth.shape[-1]
        fig, axes = plt.subplots(dims, 1, figsize=(6, 1.8 * dims), sharex=True, squeeze=False)
        for d in range(dims):
            ax = axes[d, 0]
            ax.plot(truth[:, d].cpu().numpy(), label="real")
            ax.plot(imagined[:, d].cpu().numpy(), "--", label="imagined (open loop)")
            ax.set_ylabel(f"obs[{d}]")
        axes[0, 0].legend(fontsize=7)
        axes[-1, 0].set_xlabel(f"steps after {context} filtered steps")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def write_latent_diagnostics(env, policy, world_model: TensorDictModuleBase, prior: nn.Module,
                             decoder: nn.Module, obs_key: str, out_dir: str | os.PathLike,
                             seed: int, title: str, context: int = 5, horizon: int = 30,
                             device: torch.device | str = "cpu", decode=None,
                             video: bool = False) -> bool:
    """Real vs imagined observations of an RSSM world model on a fresh episode.

    Seeds ``env``, runs ``policy`` (sampling) for ``context + horizon`` steps, filters the
    first ``context`` with the world model and imagines the rest open loop with the real
    actions (:func:`imagine_open_loop`); writes ``imagined_vs_real.png`` (frames or curves)
    and, with ``video``, ``imagined_vs_real.gif`` (real | imagined side by side) into
    ``out_dir``. ``decode`` maps the decoder's output to observations (e.g. ``symexp`` for a
    decoder that predicts ``symlog(obs)``). Returns ``False`` (and writes nothing) when the
    episode ends within ``context`` steps.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from reverie.diagnostics.video import write_video

    env.set_seed(seed)
    with set_exploration_type(ExplorationType.RANDOM):
        real = env.rollout(context + horizon, policy, break_when_any_done=False,
                           auto_cast_to_device=True)
    if real.shape[0] <= context:
        return False
    truth, imagined = imagine_open_loop(world_model, prior, decoder, real.to(device), context,
                                        obs_key)
    if decode is not None:
        imagined = decode(imagined)
    truth, imagined = truth.cpu(), imagined.cpu()
    out_dir = os.fspath(out_dir)
    plot_imagined_vs_real(truth, imagined, os.path.join(out_dir, "imagined_vs_real.png"),
                          context=context, title=title)
    if video:
        write_video(torch.cat([truth, imagined.clamp(0, 1)], -1),
                    os.path.join(out_dir, "imagined_vs_real.gif"))
    return True
