"""Where and how tensors are computed, shared by training, inference and selection features.

Device resolution, precision (autocast dtype, CPU bf16 detection, channels-last memory format)
and the per-volume z-scoring every model input goes through.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from sparseseg import distributed


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' / None -> cuda if available else cpu; otherwise ``torch.device(device)``.

    Under torchrun 'auto' and a bare 'cuda' mean ``cuda:LOCAL_RANK``."""
    return distributed.default_device(device)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix support (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r} (expected auto, bf16, fp16 or fp32)")
    if device.type == "cuda":
        if precision == "fp16" or not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if precision == "bf16" or (precision == "auto" and cpu_supports_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """An autocast context for ``device`` and ``precision`` (a null context for fp32)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_format_for(dim: int) -> torch.memory_format:
    """The channels-last memory format of a ``dim``-D tensor (5: 3D volumes, else 2D images)."""
    return torch.channels_last_3d if dim == 5 else torch.channels_last


def zscore(image: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-volume z-scoring: (image - mean) / std over all voxels, as float32; an image
    (C, X, Y, Z) is z-scored per channel. The statistics are summed in float64, so the result
    does not depend on the array's memory order (a volume read flipped is z-scored alike)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 4:
        return np.stack([zscore(channel, eps) for channel in image])
    mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
    return (image - mean) / max(std, eps)
