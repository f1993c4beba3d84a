"""Prediction with the base models: 3D sliding windows and 2D plane-by-plane.

Both functions take an image (X, Y, Z) or (Cin, X, Y, Z) as numpy, run the model in eval mode under
bf16 autocast where the device supports it (``precision='fp32'`` turns that off), in channels-last
memory order on the CPU (``channels_last=False`` turns that off), and return softmax
probabilities (C, X, Y, Z) float32 in the input's extent (padding is cropped away). On the
benchmark machine bf16 + channels-last predicts about 3x faster than plain fp32 MONAI with
99.95% argmax agreement (docs/performance.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from sparseseg.data.planes import PLANES, to_slices, with_neighbours
from sparseseg.runtime import autocast, memory_format_for, resolve_device, zscore


def _as_channels(image: np.ndarray, normalize: bool) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = (zscore(image) if normalize else image)[None]
    elif image.ndim == 4:
        if normalize:
            image = np.stack([zscore(image[0]), *image[1:]])
    else:
        raise ValueError(f"expected (X, Y, Z) or (Cin, X, Y, Z), got shape {image.shape}")
    return np.ascontiguousarray(image)


def valid_roi(
    patch: Sequence[int], shape: Sequence[int], stride: int | Sequence[int], cap: bool = True
) -> tuple[int, ...]:
    """The window size: ``patch`` (with ``cap``, capped at the image size), rounded up to a
    multiple of ``stride`` (one for all axes or one per axis; MONAI pads the image, centred,
    where the window is larger)."""
    strides = [stride] * len(patch) if isinstance(stride, int) else list(stride)
    return tuple(
        int(math.ceil((min(p, s) if cap else p) / k) * k)
        for p, s, k in zip(patch, shape, strides, strict=True)
    )


def window_is_canvas(model: nn.Module) -> bool:
    """True for models whose output depends on the whole window (instance norm): they predict a
    volume smaller than the patch inside a full patch, as they were trained."""
    return bool(getattr(model, "window_is_canvas", False))


def _prefers_channels_last(model: nn.Module) -> bool:
    """False for models that run slower in channels-last order (DynUNet's instance norm)."""
    return bool(getattr(model, "prefers_channels_last", True))


def _model_stride(model: nn.Module, default: int) -> int | tuple[int, ...]:
    stride = getattr(model, "stride", default)
    return tuple(int(k) for k in stride) if isinstance(stride, (tuple, list)) else int(stride)


def predict_volume_3d(
    model: nn.Module,
    image: np.ndarray,
    patch: Sequence[int],
    overlap: float = 0.5,
    *,
    sw_batch_size: int = 2,
    device: str | torch.device | None = None,
    precision: str = "auto",
    normalize: bool = False,
    channels_last: bool = True,
    progress: bool = False,
    mirror_axes: Sequence[int] = (),
) -> np.ndarray:
    """Gaussian-weighted sliding-window probabilities (C, X, Y, Z) of a 3D model.

    ``image``: (X, Y, Z) or (Cin, X, Y, Z); with ``normalize`` the first channel is z-scored
    (A(Y)-style extra channels are left alone). Windows of ``patch`` (rounded to the model's
    stride, capped at the image size except for models that set ``window_is_canvas``) overlap
    by ``overlap``; MONAI's
    ``sliding_window_inference`` averages the windows' softmax outputs with Gaussian weights.
    ``mirror_axes`` (spatial axes, 0-2): test-time mirroring, each window's softmax averaged over
    every combination of flips along them (2^n passes, as nnU-Net predicts).
    """
    device = resolve_device(device)
    flips = mirror_flips(mirror_axes)
    x = torch.from_numpy(_as_channels(image, normalize))[None]
    roi = valid_roi(patch, x.shape[2:], _model_stride(model, 4), not window_is_canvas(model))
    model.eval().to(device)
    use_cl = channels_last and device.type == "cpu" and _prefers_channels_last(model)
    if use_cl:
        model.to(memory_format=torch.channels_last_3d)

    def softmax(window: torch.Tensor) -> torch.Tensor:
        if use_cl:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        with autocast(device, precision):
            logits = model(window)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.softmax(logits.float(), dim=1)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        total = softmax(window)
        for dims in flips:
            total += softmax(window.flip(dims)).flip(dims)
        return total / (len(flips) + 1)

    with torch.inference_mode():
        probs = _gaussian_windows(
            x, roi, sw_batch_size, predictor, overlap,
            sw_device=device, device=torch.device("cpu"), progress=progress,
        )  # fmt: skip
    return probs[0].float().numpy()


def predict_meta(
    model: torch.nn.Module,
    inputs: np.ndarray,
    inference,
    plane: str = "",
    patch2d: Sequence[int] | None = None,
    *,
    mirror_axes: Sequence[int] = (),
    device=None,
    precision: str = "auto",
) -> np.ndarray:
    """The meta-model's softmax (C, X, Y, Z) float32 for ``inputs`` (Cin + C, X, Y, Z): the
    image channels and A(Y). A 3D meta-model runs in sliding windows of ``inference.patch``
    (mirrored along ``mirror_axes``); a 2D one (``plane``) over the slices of its plane, in
    windows of its training patch ``patch2d``."""
    if plane:
        return predict_planes_2d(
            model,
            inputs,
            (plane,),
            patch=patch2d,
            overlap=inference.overlap,
            batch_size=inference.slice_batch_size,
            device=device,
            precision=precision,
        )[plane]
    return predict_volume_3d(
        model,
        inputs,
        inference.patch,
        inference.overlap,
        sw_batch_size=inference.sw_batch_size,
        mirror_axes=mirror_axes,
        device=device,
        precision=precision,
    )


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The tensor dims (B, C, X, Y, Z) to flip for each non-empty combination of the spatial
    ``axes`` (0-2): 2^n - 1 flips."""
    from sparseseg.config import check_mirror_axes

    axes = check_mirror_axes(tuple(axes))
    return [
        tuple(a + 2 for a in combo)
        for n in range(1, len(axes) + 1)
        for combo in itertools.combinations(axes, n)
    ]


def _gaussian_windows(x: torch.Tensor, roi, batch_size: int, predictor, overlap: float, **kw):
    """MONAI's sliding window over ``x`` (B, C, *spatial): windows of ``roi`` overlapping by
    ``overlap``, Gaussian-weighted, zero padding."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        x,
        roi_size=roi,
        sw_batch_size=batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        padding_mode="constant",
        cval=0.0,
        **kw,
    )


def argmax_uint8(probs: np.ndarray, chunk: int = 8) -> np.ndarray:
    """(C, X, Y, Z) -> (X, Y, Z) uint8 argmax, computed in slabs to avoid an int64 volume."""
    out = np.empty(probs.shape[1:], dtype=np.uint8)
    for x0 in range(0, probs.shape[1], chunk):
        out[x0 : x0 + chunk] = probs[:, x0 : x0 + chunk].argmax(0)
    return out


def predict_planes_2d(
    model: nn.Module,
    image: np.ndarray,
    planes: Sequence[str] = PLANES,
    *,
    patch: Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    precision: str = "auto",
    normalize: bool = False,
    labels_only: bool = False,
    channels_last: bool = True,
    context: int = 0,
) -> dict[str, np.ndarray]:
    """Run a 2D model over every slice of each plane (with ``context`` k, each slice with the k
    on either side as extra channels, as the model was trained).

    Returns ``{plane: probs (C, X, Y, Z) float32}``, or with ``labels_only`` ``{plane: argmax
    (X, Y, Z) uint8}`` (C times less memory). Slices go through in batches of ``batch_size``.
    A model that sets ``window_is_canvas`` sees them as it was trained on crops of ``patch``
    (a, b; required for such models): a slice smaller than the patch centred in a full patch,
    a larger one by Gaussian-weighted sliding windows of the patch overlapping by ``overlap``.
    Other models see each whole slice zero-padded (after its end) to multiples of their stride.
    """
    device = resolve_device(device)
    x = _as_channels(image, normalize)
    stride = _model_stride(model, 16)
    canvas = window_is_canvas(model)
    if canvas and patch is None:
        raise ValueError("this 2D model predicts in windows of its training patch: pass patch")
    model.eval().to(device)
    use_cl = channels_last and device.type == "cpu" and _prefers_channels_last(model)
    if use_cl:
        model.to(memory_format=torch.channels_last)

    def predictor(t: torch.Tensor) -> torch.Tensor:
        if use_cl:
            t = t.contiguous(memory_format=memory_format_for(4))
        with autocast(device, precision):
            logits = model(t)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return torch.softmax(logits.float(), 1)

    num_classes = int(model.num_classes)
    out: dict[str, np.ndarray] = {}
    for plane in planes:
        slices = to_slices(x, plane)  # (Cin, N, A, B)
        n_slices, a, b = slices.shape[1:]
        if labels_only:
            result = np.zeros(x.shape[1:], dtype=np.uint8)
            view = to_slices(result, plane)  # (N, A, B)
        else:
            result = np.zeros((num_classes, *x.shape[1:]), dtype=np.float32)
            view = to_slices(result, plane)  # (C, N, A, B)
        with torch.inference_mode():
            for n0 in range(0, n_slices, batch_size):
                n1 = min(n0 + batch_size, n_slices)
                if context:
                    chunk = with_neighbours(slices, np.arange(n0, n1), context)
                else:
                    chunk = np.moveaxis(slices[:, n0:n1], 0, 1)  # (b, Cin, A, B)
                t = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
                if canvas:
                    probs = _sliding_window_2d(t, patch, stride, overlap, batch_size, predictor)
                else:
                    t = torch.nn.functional.pad(t, (0, -b % stride, 0, -a % stride))
                    probs = predictor(t)[..., :a, :b]
                if labels_only:
                    view[n0:n1] = probs.argmax(1).to(torch.uint8).cpu().numpy()
                else:
                    view[:, n0:n1] = np.moveaxis(probs.cpu().numpy(), 0, 1)
        out[plane] = result
    return out


def _sliding_window_2d(
    slices: torch.Tensor,
    patch: Sequence[int],
    stride: int | Sequence[int],
    overlap: float,
    batch_size: int,
    predictor,
) -> torch.Tensor:
    """Softmax (b, C, A, B) of ``slices`` (b, Cin, A, B) by windows of ``patch`` (rounded up to
    the stride, never cut to the slice: MONAI centres a smaller slice in the window)."""
    roi = valid_roi(patch, slices.shape[2:], stride, cap=False)
    return _gaussian_windows(slices, roi, batch_size, predictor, overlap)
