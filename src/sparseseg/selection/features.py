"""Slice features for representative selection.

Two extractors turn every slice of every chosen plane of every volume into a feature vector:

- ``vgg`` (the paper's, the default): a frozen VGG-19 convolutional trunk, two fully connected
  layers and a light decoder form an auto-encoder that is trained on slices of all planes of all
  volumes together; the feature of a slice is the output of the last FC layer. Slices are resized
  to ``image_size`` squared, grey values replicated to three channels and ImageNet-normalised.
  The trunk runs once per slice, volume by volume; its output is kept in a temporary file
  (:mod:`sparseseg.selection.rowfile`), so training touches only the small head and reads only
  each batch's rows, and no volume is held beyond its own pass.
  ImageNet weights come from a file or the torch hub cache; without them (offline) the trunk
  keeps its random initialisation, which still selected better than ``intensity`` on MSD
  Hippocampus (benchmarks/selection_extractors.py, docs/selection.md).
- ``intensity``: the slice, normalised per volume and resized to 16 x 16, flattened.

Each volume is normalised on its own (0.5-99.5 percentile to [0, 1]) since intensity ranges
differ between volumes.

Multi-channel images (C, X, Y, Z): every channel is a volume of its own for the extractor (one
auto-encoder learns from the slices of all channels), and :func:`combine_channels` joins the C
features of a slice so that the cosine similarity of two slices is the mean of their
per-channel cosine similarities: each channel counts equally, whatever its contrast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseseg.data.planes import NORMAL_AXIS, num_slices, to_slices
from sparseseg.errors import InputError

EXTRACTORS = ("vgg", "intensity")
MAX_IMAGE_SIZE = 128


@dataclass
class FeatureSet:
    """Features per volume, per plane: ``features[v][plane]`` is (N_plane, D) float32.

    ``info`` says how they were made (extractor, weights, parameters), for the selection record.
    """

    features: list[dict[str, np.ndarray]]
    info: dict = field(default_factory=dict)


def normalise_volume(array: np.ndarray) -> np.ndarray:
    """Map a volume to [0, 1] float32 by its 0.5 and 99.5 percentiles (min/max if those agree)."""
    array = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(array, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros_like(array)
    out = array - lo
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)  # one volume-sized temporary, not three


def resize_slices(slices: np.ndarray, size: int):
    """(N, A, B) -> torch (N, 1, size, size) float32, bilinear with antialiasing."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def intensity_features(volume: np.ndarray, plane: str, size: int = 16) -> np.ndarray:
    """Intensity features (N, size * size) of the slices of ``plane`` of a normalised volume."""
    slices = to_slices(np.asarray(volume, dtype=np.float32), plane)
    return resize_slices(slices, size).reshape(len(slices), -1).numpy()


def resolve_extractor(name: str, weights) -> tuple[str, object]:
    """Check the extractor name; return (extractor, VGG-19 weights path or None).

    For ``vgg`` the weights are ``weights`` (a missing file is an InputError), else the torch hub
    cache if it holds them, else None (random initialisation).
    """
    from sparseseg.selection.vgg import resolve_weights

    if name not in EXTRACTORS:
        raise InputError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    path = resolve_weights(weights)
    if name == "intensity" and weights is not None:
        raise InputError("--weights applies to the vgg extractor only")
    return name, path if name == "vgg" else None


def combine_channels(
    features: Sequence[dict[str, np.ndarray]], channels: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Per-channel features -> per-volume features.

    ``features`` lists the features of every channel of every volume (volume 0's channels first);
    ``channels`` the number of channels of each volume. A one-channel volume keeps its features;
    otherwise each slice's feature is the concatenation of its L2-normalised per-channel features
    (N, C * D), whose cosine similarity is the mean of the C per-channel cosine similarities (for
    slices with a nonzero feature in every channel).
    """

    def unit(f: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        return (f / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    out, start = [], 0
    for n in channels:
        group = features[start : start + n]
        start += n
        if n == 1:
            out.append(dict(group[0]))
        else:
            out.append({p: np.concatenate([unit(g[p]) for g in group], axis=1) for p in group[0]})
    return out


def auto_image_size(volumes: Sequence[np.ndarray], planes: Sequence[str]) -> int:
    """The VGG input size: the longest slice side rounded up to a multiple of 32, at most 128.

    Resizing beyond the data's own resolution adds no information, only cost.
    """
    longest = max(
        max(s for a, s in enumerate(v.shape) if a != NORMAL_AXIS[p] % 3)
        for v in volumes
        for p in planes
    )
    return int(min(MAX_IMAGE_SIZE, 32 * max(1, -(-longest // 32))))


def extract_features(
    volumes: Sequence[np.ndarray],
    planes: Sequence[str],
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    batch_size: int = 64,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> FeatureSet:
    """Features of every slice of ``planes`` of each volume (X, Y, Z), raw intensities.

    ``extractor`` is ``vgg`` or ``intensity``; ``weights`` an ImageNet VGG-19 state dict in
    torchvision's format (default: the torch hub cache; without one the trunk keeps its random
    initialisation, and the record says so). ``steps`` and ``batch_size`` set the auto-encoder
    training, ``image_size`` the VGG input (default :func:`auto_image_size`). The volumes are
    read one at a time, once (arrays or :class:`~sparseseg.selection.volumes.LazyVolume`).
    """
    name, path = resolve_extractor(extractor, weights)
    if name == "intensity":
        feats = [_intensity_all(v, planes) for v in volumes]
        return FeatureSet(feats, {"name": "intensity", "size": 16, "weights": None})
    if image_size is None:
        image_size = auto_image_size(volumes, planes)
    return _vgg_features(
        volumes, planes, path, seed, steps, batch_size, image_size, device, progress
    )


def _intensity_all(volume: np.ndarray, planes: Sequence[str]) -> dict[str, np.ndarray]:
    volume = normalise_volume(volume)
    return {p: intensity_features(volume, p) for p in planes}


def _vgg_features(volumes, planes, path, seed, steps, batch_size, image_size, device, progress):
    import tempfile

    import torch

    from sparseseg.progress import progress_bar
    from sparseseg.runtime import resolve_device
    from sparseseg.selection.autoencoder import SliceAutoEncoder, train_autoencoder
    from sparseseg.selection.rowfile import RowFile
    from sparseseg.selection.vgg import (
        TRUNK_CHANNELS,
        TRUNK_STRIDE,
        file_sha256,
        load_vgg19_weights,
    )

    if image_size % 32 or image_size < 32:
        raise InputError(f"image size must be a multiple of 32 (at least 32), got {image_size}")
    if steps < 0 or batch_size < 1:
        raise InputError("need steps >= 0 and batch size >= 1")
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = SliceAutoEncoder(image_size=image_size)
    if path is not None:
        load_vgg19_weights(model.trunk, path)
        weights = {"path": str(path), "sha256": file_sha256(path)[:16]}
    else:
        weights = "none: random init"
    model.to(device)
    # Rows of every (volume, plane), volume by volume: where each one's slices start.
    keys = [(i, p) for i in range(len(volumes)) for p in planes]
    starts = np.cumsum([0] + [num_slices(np.shape(volumes[i]), p) for i, p in keys])
    grid = image_size // TRUNK_STRIDE
    recon = model.recon_size
    with tempfile.TemporaryDirectory(prefix="sparseseg-slices-") as tmp:
        # Trunk outputs of every slice, computed once, and the slices at the decoder's size.
        trunk_out = RowFile(
            Path(tmp) / "trunk.npy", (starts[-1], TRUNK_CHANNELS, grid, grid), torch.bfloat16
        )
        targets = RowFile(Path(tmp) / "targets.npy", (starts[-1], 1, recon, recon))
        total = int(starts[-1])
        with progress_bar(total=total, desc="VGG-19 trunk", unit="slice", enabled=progress) as bar:
            for i, volume in enumerate(volumes):
                first = int(starts[i * len(planes)])
                _store_slices(model, volume, planes, image_size, trunk_out, targets, first, bar)
        model.fit_normaliser(trunk_out)
        history = train_autoencoder(
            model, trunk_out, targets, steps=steps, batch_size=batch_size, seed=seed,
            progress=progress,
        )  # fmt: skip
        feats: list[dict[str, np.ndarray]] = [{} for _ in volumes]
        for (i, p), a, b in zip(keys, starts[:-1], starts[1:], strict=True):
            feats[i][p] = model.encode_trunk_output(trunk_out[int(a) : int(b)])
    info = {
        "name": "vgg",
        "weights": weights,
        "image_size": image_size,
        "feature_dim": model.feature_dim,
        "steps": steps,
        "batch_size": batch_size,
        "final_loss": history[-1] if history else None,
    }
    return FeatureSet(feats, info)


def _store_slices(model, volume, planes, image_size, trunk_out, targets, row, bar) -> None:
    """Write the trunk outputs and thumbnails of the slices of ``planes`` of one volume from row
    ``row`` on (a function of its own: the volume is freed on return)."""
    volume = normalise_volume(volume)
    for p in planes:
        slices = to_slices(volume, p)
        trunk_out.write(row, model.run_trunk(resize_slices(slices, image_size), bar.update))
        targets.write(row, resize_slices(slices, model.recon_size))
        row += len(slices)
