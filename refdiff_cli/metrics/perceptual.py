"""Optional LPIPS perceptual distance (Zhang et al., CVPR 2018, AlexNet) from local safetensors.

Nothing is downloaded: the weights come only from a ``.safetensors`` file the user supplies.
Expected tensors (float16/bfloat16/float32, cast to float32), names and shapes as in
:data:`EXPECTED_SHAPES`:

- ``features.{0,3,6,8,10}.weight`` / ``.bias``: the AlexNet convolutions, named as in
  torchvision's ``alexnet().features`` state dict (a torchvision AlexNet checkpoint's
  ``features.*`` entries can be saved as they are; in a full ``lpips.LPIPS`` state dict they
  are ``net.slice{1..5}.{0,3,6,8,10}.*``, drop the ``net.slice{n}`` part);
- ``lin0.weight`` ... ``lin4.weight``: the LPIPS 1x1 "lin" layers, shape (1, C, 1, 1), all
  >= 0; the official LPIPS file names them ``lin{k}.model.1.weight`` (rename to
  ``lin{k}.weight``).

Convert the official weights with your own script using ``safetensors.torch.save_file``; refdiff
never reads pickle files. LPIPS is defined for RGB only: images that are not 3-band are not
scored (``distance`` raises ``ValueError``; callers skip LPIPS for them).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from safetensors import SafetensorError, safe_open
from torch import nn

from refdiff_cli.errors import ModelError

#: Channels after each of the five AlexNet ReLU taps.
TAP_CHANNELS = (64, 192, 384, 256, 256)

#: LPIPS ScalingLayer constants: ``(x - shift) / scale`` for x in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

#: Feature normalisation epsilon of LPIPS (``normalize_tensor``).
NORM_EPS = 1e-10

#: Smallest image side the AlexNet taps accept (two 3x3/2 max-pools after a stride-4 conv).
MIN_SIDE_PX = 31

#: Every tensor a weights file must hold, with its shape.
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
    **{f"lin{k}.weight": (1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)},
}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LPIPS(nn.Module):
    """LPIPS-Alex distance network; use :func:`load_lpips` to get one with real weights."""

    shift: torch.Tensor  # (1, 3, 1, 1)
    scale: torch.Tensor  # (1, 3, 1, 1)

    def __init__(self) -> None:
        super().__init__()
        # torchvision alexnet().features up to the last ReLU; taps after indices 1, 4, 7, 9, 11.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.taps = (1, 4, 7, 9, 11)
        for k, channels in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{k}", nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.taps:
                norm = torch.sqrt(torch.sum(h * h, dim=1, keepdim=True))  # (B, 1, h, w)
                out.append(h / (norm + NORM_EPS))
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """LPIPS spatial distance map of two (B, 3, H, W) batches in [-1, 1].

        Returns:
            (B, 1, H, W) map: the sum over the five taps of the lin-weighted squared difference
            of unit-normalised features, each upsampled bilinearly to (H, W). Values >= 0.
        """
        if sr.shape != hr.shape or sr.ndim != 4 or sr.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (B, 3, H, W) batches of the same shape, got "
                f"{tuple(sr.shape)} and {tuple(hr.shape)}"
            )
        size = (sr.shape[2], sr.shape[3])
        total = torch.zeros((sr.shape[0], 1, *size), dtype=sr.dtype, device=sr.device)
        for k, (fa, fb) in enumerate(zip(self._taps(sr), self._taps(hr), strict=True)):
            lin: nn.Module = getattr(self, f"lin{k}")
            layer_map = lin((fa - fb) ** 2)  # (B, 1, h_k, w_k)
            total += F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)
        return total

    def distance(self, sr: ArrayLike, hr: ArrayLike, region: ArrayLike | None = None) -> float:
        """LPIPS distance of two RGB images, averaged over a region.

        Args:
            sr: (3, H, W) image with values in [-1, 1] (see :func:`to_lpips_range`), H and W
                at least :data:`MIN_SIDE_PX`.
            hr: the reference image, same shape and range.
            region: (H, W) mask of the pixels to average the distance map over (non-bool:
                nonzero = used); None = all pixels. Features still see the whole image.

        Returns:
            Mean of the spatial LPIPS map over the region (>= 0, 0 for identical images;
            ``nan`` for an empty region). With ``region=None`` this is the mean of the upsampled
            map, which differs slightly from official LPIPS's per-layer spatial average.
        """
        sr_arr = np.asarray(sr, dtype=np.float32)
        hr_arr = np.asarray(hr, dtype=np.float32)
        if sr_arr.shape != hr_arr.shape or sr_arr.ndim != 3 or sr_arr.shape[0] != 3:
            raise ValueError(
                f"LPIPS needs two (3, H, W) RGB images of the same shape, got {sr_arr.shape} "
                f"and {hr_arr.shape}; it is not computed for other band counts"
            )
        if min(sr_arr.shape[1:]) < MIN_SIDE_PX:
            raise ValueError(
                f"LPIPS needs images of at least {MIN_SIDE_PX}x{MIN_SIDE_PX} pixels, got "
                f"{sr_arr.shape[2]}x{sr_arr.shape[1]}"
            )
        for name, arr in (("sr", sr_arr), ("hr", hr_arr)):
            if not np.isfinite(arr).all() or arr.min() < -1.0 or arr.max() > 1.0:
                raise ValueError(
                    f"{name} must hold finite values in [-1, 1]; convert DN with to_lpips_range"
                )
        mask = None
        if region is not None:
            mask = np.asarray(region)
            if mask.shape != sr_arr.shape[1:]:
                raise ValueError(
                    f"region has shape {mask.shape}; it must be (H, W) = {sr_arr.shape[1:]}"
                )
            mask = mask.astype(bool) if mask.dtype != np.bool_ else mask
            if not mask.any():
                return float("nan")
        param = next(self.parameters())
        with torch.inference_mode():
            a = torch.from_numpy(sr_arr)[None].to(param.device)  # (1, 3, H, W)
            b = torch.from_numpy(hr_arr)[None].to(param.device)  # (1, 3, H, W)
            dist_map = self(a, b)[0, 0].double().cpu().numpy()  # (H, W)
        if mask is None:
            return float(dist_map.mean())
        return float(dist_map[mask].mean())


def to_lpips_range(img: ArrayLike, *, data_range: float) -> NDArray[np.float32]:
    """Map an image in [0, data_range] (DN) to LPIPS's [-1, 1]: ``2 x / data_range - 1``.

    Values outside [0, data_range] are clipped, so reflectances above the range saturate.

    Args:
        img: (3, H, W) image in data units.
        data_range: the value that maps to 1, > 0 (e.g. 255 for 8-bit).

    Returns:
        (3, H, W) float32 array in [-1, 1].
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    arr = np.asarray(img, dtype=np.float64)
    scaled = np.clip(2.0 * arr / data_range - 1.0, -1.0, 1.0)  # (3, H, W)
    return scaled.astype(np.float32)


def _check_safetensors_header(path: Path) -> None:
    """Refuse missing, truncated, pickled or otherwise non-safetensors files before parsing."""
    if not path.is_file():
        raise ModelError(f"LPIPS weights file not found: {path}")
    with path.open("rb") as stream:
        head = stream.read(9)
    if len(head) < 9:
        raise ModelError(f"LPIPS weights file {path} is empty or truncated")
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ModelError(
            f"LPIPS weights file {path} is a pickle (torch.save) file; refdiff refuses pickles "
            "because loading one can run arbitrary code",
            hint="convert it to .safetensors with safetensors.torch.save_file",
        )
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > path.stat().st_size - 8:
        raise ModelError(f"LPIPS weights file {path} is not a safetensors file (bad header)")


def load_lpips(path: Path, *, device: str | torch.device = "cpu") -> LPIPS:
    """Load LPIPS-Alex weights from a local safetensors file (keys in :data:`EXPECTED_SHAPES`).

    Args:
        path: ``.safetensors`` file with exactly the tensors of :data:`EXPECTED_SHAPES`.
        device: where the network runs.

    Returns:
        The network in eval mode, gradients off.

    Raises:
        ModelError: the file is missing, unreadable, a pickle, lacks a tensor, has an
            unexpected tensor, a wrong shape or dtype, non-finite values or negative lin weights.
    """
    path = Path(path)
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            missing = sorted(set(EXPECTED_SHAPES) - keys)
            if missing:
                raise ModelError(
                    f"LPIPS weights file {path} lacks tensor {missing[0]!r}"
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""),
                    hint=(
                        "see refdiff_cli.metrics.perceptual.EXPECTED_SHAPES for the names expected"
                    ),
                )
            unexpected = sorted(keys - set(EXPECTED_SHAPES))
            if unexpected:
                raise ModelError(
                    f"LPIPS weights file {path} has unexpected tensor(s) {unexpected[:3]}",
                    hint="save only the AlexNet features.* and lin*.weight tensors",
                )
            tensors = {key: handle.get_tensor(key) for key in sorted(keys)}
    except SafetensorError as exc:
        raise ModelError(f"LPIPS weights file {path} is unreadable: {exc}") from exc
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != EXPECTED_SHAPES[key]:
            raise ModelError(
                f"LPIPS weights file {path}: tensor {key} has shape {tuple(tensor.shape)}, "
                f"expected {EXPECTED_SHAPES[key]}"
            )
        if tensor.dtype not in _FLOAT_DTYPES:
            raise ModelError(
                f"LPIPS weights file {path}: tensor {key} is {tensor.dtype}, not float"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"LPIPS weights file {path}: tensor {key} has NaN or inf values")
        if key.startswith("lin") and bool((tensor < 0).any()):
            raise ModelError(
                f"LPIPS weights file {path}: tensor {key} has negative weights; LPIPS lin "
                "weights are >= 0 (the distance would not be a distance)"
            )
    model = LPIPS()
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return model.to(device).eval()
