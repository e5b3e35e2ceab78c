"""Imagined vs real observations of a world model (any family: Dreamer's RSSMs included),
open loop and decoded."""

from __future__ import annotations

import os

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor

__all__ = ["imagine_open_loop", "plot_imagined_vs_real", "write_latent_diagnostics"]


@torch.no_grad()
def imagine_open_loop(world_model, real: TensorDictBase, context: int,
                      obs_key: NestedKey = "observation") -> tuple[Tensor, Tensor]:
    """Start from the real latent at step ``context``, then predict the rest of ``real``
    open loop with the real actions, decoded.

    Works for any :class:`~reverie.modules.WorldModel` (one interface for every family):
    the start latent is ``world_model.filter(real[:context + 1])[-1]`` when the model
    filters sequences (:class:`~reverie.modules.RSSMWorldModel`: it has seen
    ``o_0..o_context``), else ``world_model.encode(real[context])``. From there
    ``world_model.step`` runs with ``a_context, a_context+1, ...``, only the
    ``world_model.latent_keys`` are carried from step to step, and every predicted latent
    is decoded with ``world_model.decode``. Under a deterministic exploration type: the
    most likely latent at every step (an RSSM's prior mean or argmax).

    Args:
        world_model: a world model with a decoder.
        real: one real episode ``[T]`` with ``obs_key``, ``action`` and ``("next", obs_key)``.
        context: steps before the start (``0 <= context < T``).
        obs_key: the observation key.

    Returns:
        ``(truth, imagined)``, each ``(T - context, *obs)``: ``real["next", obs_key][context:]``
        and the decoded predictions of the same observations.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    T = real.shape[0]
    if not 0 <= context < T:
        raise ValueError(f"imagine_open_loop: context={context} must be in [0, {T}).")
    if world_model.decoder is None:
        raise RuntimeError("imagine_open_loop needs a world model with a decoder.")
    keys = world_model.latent_keys
    decoded_key = world_model.decoder.out_keys[0]
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        if hasattr(world_model, "filter"):
            td = world_model.filter(real[: context + 1].exclude("next"))[-1]
        else:
            td = world_model.encode(real[context].exclude("next").clone())
        td = td.select(*keys)
        imagined = []
        for t in range(context, T):
            td.set("action", real["action"][t])
            td = world_model.step(td)
            td = td.get("next").select(*keys)
            imagined.append(world_model.decode(td.copy()).get(decoded_key))
    return real["next", obs_key][context:], torch.stack(imagined)


def plot_imagined_vs_real(truth: Tensor, imagined: Tensor, path: str | os.PathLike, title: str,
                          context: int = 0, columns: int = 10, names=None) -> None:
    """Frames (``(T, C, H, W)``: a real row over an imagined row, ``columns`` of them) or
    curves (``(T, D)``: the common figure of
    :func:`~reverie.diagnostics.figures.plot_real_vs_imagined`, features named ``names``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from reverie.diagnostics.figures import observation_names, plot_real_vs_imagined

    if truth.ndim != 4:
        plot_real_vs_imagined(truth, imagined, path, names=observation_names("", truth.shape[-1], names),
                              title=title, real_start=1, imagined_start=1,
                              xlabel=f"steps imagined open loop after {context} filtered steps")
        return
    horizon = truth.shape[0]
    cols = list(range(0, horizon, max(1, horizon // columns)))
    fig = Figure(figsize=(1.2 * len(cols), 3.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(cols), squeeze=False)
    for j, t in enumerate(cols):
        for i, img in enumerate((truth[t], imagined[t])):
            axes[i, j].imshow(img.clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"t+{t + 1}", fontsize=7)
    axes[0, 0].set_ylabel("real", fontsize=8)
    axes[1, 0].set_ylabel("imagined", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)


@torch.no_grad()
def write_latent_diagnostics(env, policy, world_model, obs_key: NestedKey,
                             out_dir: str | os.PathLike, seed: int, title: str, context: int = 5,
                             horizon: int = 30, device: torch.device | str = "cpu",
                             video: bool = False, names=None) -> bool:
    """Real vs imagined observations of a world model on a fresh episode.

    Seeds ``env``, runs ``policy`` (sampling) for ``context + horizon`` steps, and predicts
    the last ``horizon`` observations open loop from the latent at step ``context`` with
    the real actions (:func:`imagine_open_loop`); writes ``imagined_vs_real.png`` (frames
    or curves) and, with ``video``, ``imagined_vs_real.mp4`` (``.gif`` without an MP4 encoder;
    real | imagined side by side)
    into ``out_dir``. Returns ``False`` (and writes nothing) when the episode ends within
    ``context`` steps.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from reverie.diagnostics.video import video_suffix, write_video

    env.set_seed(seed)
    with set_exploration_type(ExplorationType.RANDOM):
        real = env.rollout(context + horizon, policy, break_when_any_done=False,
                           auto_cast_to_device=True)
    if real.shape[0] <= context:
        return False
    truth, imagined = imagine_open_loop(world_model, real.to(device), context, obs_key)
    truth, imagined = truth.cpu(), imagined.float().cpu()
    out_dir = os.fspath(out_dir)
    plot_imagined_vs_real(truth, imagined, os.path.join(out_dir, "imagined_vs_real.png"),
                          context=context, title=title, names=names)
    if video:
        write_video(torch.cat([truth, imagined.clamp(0, 1)], -1),
                    os.path.join(out_dir, "imagined_vs_real" + video_suffix()))
    return True
