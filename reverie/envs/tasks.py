"""Task envs by name: Gymnasium ids and DeepMind Control Suite tasks (``dmc/<domain>-<task>``).

Every recipe builds its task with :func:`make_task_env`, so ``--env dmc/cartpole-swingup``
works wherever ``--env Pendulum-v1`` does (given the ``dmc`` extra and a continuous-action
recipe). A DMC task is TorchRL's ``DMControlEnv`` with its state entries (``position``,
``velocity``, ...) concatenated into one float32 ``observation`` in sorted key order,
float32 rewards and actions in ``[-1, 1]``; its episodes last 1,000 steps (the suite's
time limit) and end as truncations. Rendering (frames for videos, ``from_pixels``) goes
through MuJoCo: ``MUJOCO_GL`` is set to ``egl`` when unset (headless machines).

>>> make_task_env("Pendulum-v1").observation_spec["observation"].shape
torch.Size([3])
"""

from __future__ import annotations

import os

import torch
from torchrl.envs import CatTensors, Compose, DoubleToFloat, EnvBase, GymEnv, TransformedEnv

__all__ = ["DMC_PREFIX", "dmc_task", "make_task_env", "render_kwargs"]

#: the prefix of DeepMind Control Suite task names
DMC_PREFIX = "dmc/"


def render_kwargs(render: bool) -> dict:
    """Keyword arguments of ``gym.make`` for a Gymnasium env that renders frames on
    ``render()``: ``render_mode="rgb_array"`` (nothing when ``render`` is False)."""
    return {"render_mode": "rgb_array"} if render else {}


def dmc_task(name: str) -> tuple[str, str] | None:
    """``"dmc/cartpole-swingup"`` -> ``("cartpole", "swingup")``; ``None`` for other names.

    Raises:
        ValueError: a ``dmc/`` name that is not ``dmc/<domain>-<task>``.

    >>> dmc_task("dmc/ball_in_cup-catch"), dmc_task("Pendulum-v1")
    (('ball_in_cup', 'catch'), None)
    """
    if not name.startswith(DMC_PREFIX):
        return None
    domain, sep, task = name[len(DMC_PREFIX):].partition("-")
    if not sep or not domain or not task:
        raise ValueError(f"env={name!r}: DeepMind Control tasks are named dmc/<domain>-<task>, e.g. "
                         "dmc/cartpole-swingup or dmc/walker-walk.")
    return domain, task


def make_task_env(name: str, *, from_pixels: bool = False, render: bool = False,
                  frame_skip: int = 1, **gym_kwargs) -> EnvBase:
    """The task ``name`` as a TorchRL env on the CPU.

    Args:
        name: a Gymnasium id (``Pendulum-v1``, ``reverie/CartPoleSwingUp-v0``) or
            ``dmc/<domain>-<task>``.
        from_pixels: also observe rendered frames under ``"pixels"`` (``pixels_only=False``).
        render: the env renders frames on ``render()`` (for evaluation videos).
        frame_skip: actions repeated by the env.
        gym_kwargs: passed to ``gym.make`` (Gymnasium ids only).

    Raises:
        ValueError: a malformed ``dmc/`` name, or Gymnasium keyword arguments for a DMC task.
        ImportError: a DMC task without dm-control (``pip install 'reverie[dmc]'``).
    """
    task = dmc_task(name)
    if task is None:
        return GymEnv(name, from_pixels=from_pixels, pixels_only=False, frame_skip=frame_skip,
                      **gym_kwargs, **render_kwargs(render and not from_pixels))
    if gym_kwargs:
        raise ValueError(f"env={name!r} is a DeepMind Control task; it takes no Gymnasium arguments "
                         f"({sorted(gym_kwargs)}).")
    try:
        import dm_control  # noqa: F401
    except ImportError as err:
        raise ImportError(f"env={name!r} needs dm-control: pip install 'reverie[dmc]'.") from err
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = _RenderingDMControlEnv(*task, from_pixels=from_pixels, pixels_only=False, frame_skip=frame_skip)
    states = sorted(k for k in env.observation_spec.keys() if k != "pixels")
    return TransformedEnv(env, Compose(
        CatTensors(in_keys=states, out_key="observation", del_keys=True),
        DoubleToFloat(in_keys=["observation", "reward"], in_keys_inv=["action"])))


def _rendering_dmc_class():
    from torchrl.envs import DMControlEnv

    class RenderingDMControlEnv(DMControlEnv):
        """``DMControlEnv`` with ``render()``: a ``(240, 320, 3)`` uint8 frame of camera 0."""

        def render(self) -> torch.Tensor:
            physics = getattr(self._env, "physics", None) or self._env.env.physics  # plain or pixel wrapper
            return torch.as_tensor(physics.render(height=240, width=320, camera_id=0).copy())

    return RenderingDMControlEnv


def _RenderingDMControlEnv(*args, **kwargs):  # noqa: N802 - a class, built lazily (dm-control is optional)
    return _rendering_dmc_class()(*args, **kwargs)
