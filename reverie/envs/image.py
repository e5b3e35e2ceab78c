"""``ResizeImage``: resize image observations with ``torch.nn.functional.interpolate``.

TorchRL's ``Resize`` needs torchvision; this transform needs only torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.utils import NestedKey
from torch.nn import functional as F  # noqa: N812
from torchrl.data import TensorSpec
from torchrl.envs.transforms import ObservationTransform

__all__ = ["ResizeImage"]


class ResizeImage(ObservationTransform):
    """Resize float images ``(*B, C, H, W)`` to ``(*B, C, h, w)`` (bilinear, antialiased).

    Args:
        w, h: output width and height.
        in_keys: image keys (default ``["pixels"]``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> t = ResizeImage(64, 64)
        >>> t(TensorDict({"pixels": torch.rand(2, 3, 500, 500)}, [2]))["pixels"].shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, w: int, h: int, in_keys: Sequence[NestedKey] | None = None) -> None:
        keys = list(in_keys or ["pixels"])
        super().__init__(in_keys=keys, out_keys=list(keys))
        self.w, self.h = int(w), int(h)

    def _apply_transform(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim < 3 or not image.is_floating_point():
            raise ValueError(
                f"ResizeImage: expected float images (*B, C, H, W); got {tuple(image.shape)} "
                f"{image.dtype}. Put ToTensorImage() before it.")
        lead = image.shape[:-3]
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.interpolate(flat, size=(self.h, self.w), mode="bilinear", antialias=True,
                            align_corners=False)
        return out.reshape(*lead, *out.shape[-3:])

    def _reset(self, tensordict, tensordict_reset):
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        for key in self.in_keys:
            spec = observation_spec[key]
            new = spec.clone()
            new.shape = torch.Size([*spec.shape[:-2], self.h, self.w])
            if hasattr(new, "space") and hasattr(new.space, "low"):
                new.space.low = new.space.low[..., : self.h, : self.w].clone()
                new.space.high = new.space.high[..., : self.h, : self.w].clone()
            observation_spec[key] = new
        return observation_spec
