"""Fingerprint -> plan: the ``auto`` preset sized for one dataset (nnU-Net's rules, CPU-sized).

All functions are pure. The plan is a :class:`sparseseg.config.Preset` (so ``--set`` overrides
apply to it unchanged) plus a few notes on decisions that are not preset fields.

Rules:

- Spacing (:func:`plan_target_spacing`): where the training cases' spacings differ (a case
  more than 10% from the median along some axis), every case is resampled to the median
  spacing (``target_spacing``); where they agree, none is (``target_spacing`` None: every case
  keeps its grid, and thick sections keep their thickness, as nnU-Net keeps the thick axis's
  spacing). Everything below is planned at the target spacing, with the median shape of the
  cases resampled there (:func:`at_spacing`).
- Pooling per axis (nnU-Net): at each level, an axis is pooled while its current spacing is under
  twice the smallest current spacing and its feature map stays at least :data:`MIN_FEATURE` wide;
  a thick axis is therefore not pooled until the others have caught up with it. Kernels are 3
  along an axis once its spacing is under twice the smallest, 1 before (thick sections first
  see in-plane-only 3 x 3 x 1 convolutions).
- Patch: the median volume with a margin (``canvas``: whole volumes land at random offsets, which
  avoids the positional pitfall of sparse labels), else the median volume, else as large as the
  voxel budget allows with the median case's aspect; every axis a multiple of its total stride.
- Widths: ``base`` doubling per level up to ``cap``; depth from the pooling (at most ``levels``).
- 2D model: square slices covering the median case's in-plane extent (capped), isotropic
  pooling; trained on every plane, or on the plane normal to the thick axis alone when the
  spacing is strongly anisotropic (serial-section EM).
- Meta-model: 3D, sized as the 3D model; on strongly anisotropic data (the 2D model on one
  plane) a 2D meta-model on that plane instead, sized and trained as the 2D model and started
  from its weights (``meta.plane``, ``meta.init`` '2d').
- Augmentation: flips on all axes; quarter turns in the xy plane only where x and y have the same
  spacing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparseseg.config import Preset, get_preset
from sparseseg.data.resample import resampled_shape

MIN_FEATURE = 4  # smallest feature map along a pooled axis (nnU-Net)
SPACING_TOLERANCE = 0.1  # cases within 10% of the median spacing on every axis share it
THICK_RATIO = 2.0  # an axis is 'thick' while its spacing is >= 2x the smallest
PLANES_ONLY_NORMAL_RATIO = 3.0  # anisotropy from which the 2D model sees one plane only
NORMAL_PLANE = {0: "yz", 1: "xz", 2: "xy"}  # the plane normal to each array axis
# Foreground classes in one order along an axis in this share of cases: a fixed layout
LAYOUT_AGREEMENT = 0.95


@dataclass(frozen=True)
class Budget:
    """The machine-dependent sizes and optimiser of a plan."""

    voxels: int = 150_000  # 3D patch voxels (about 48 x 64 x 48)
    pixels2d: int = 32_768  # 2D batch pixels (batch x side^2)
    side2d: int = 128  # largest 2D patch side
    base: int = 16  # widths: base, 2 base, ... capped at cap
    cap: int = 128
    levels: int = 5  # at most this many resolution levels (levels - 1 poolings)
    batch3d: int = 2
    canvas: float = 1.25  # patch / median shape when the volume fits with this margin
    # Adam converges faster than nnU-Net's SGD (made for 10^5 steps) in the few thousand steps a
    # CPU budget buys (docs/results.md); a GPU's paper-length schedule keeps nnU-Net's SGD
    optimizer: str = "adam"
    lr: float = 1e-3


CPU_BUDGET = Budget()
GPU_BUDGET = Budget(
    voxels=128**3, pixels2d=12 * 256 * 256, side2d=256, base=32, cap=320, optimizer="sgd", lr=1e-2
)


def budget_for(device_type: str) -> Budget:
    return GPU_BUDGET if device_type == "cuda" else CPU_BUDGET


def pooling(
    spacing: Sequence[float], patch: Sequence[int], max_levels: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """nnU-Net's per-axis pooling and kernels for a patch at a spacing.

    Returns ``(strides, kernels)``: one tuple per level (the first level's stride is 1), at most
    ``max_levels`` levels, at least 2.
    """
    spacing = [float(s) for s in spacing]
    size = [float(p) for p in patch]
    dims = len(spacing)
    kernel_on = [s < THICK_RATIO * min(spacing) for s in spacing]
    strides = [(1,) * dims]
    kernels = [tuple(3 if on else 1 for on in kernel_on)]
    while len(strides) < max_levels:
        smallest = min(spacing)
        step = tuple(
            2 if spacing[a] < THICK_RATIO * smallest and size[a] / 2 >= MIN_FEATURE else 1
            for a in range(dims)
        )
        if not any(s == 2 for s in step):
            break
        spacing = [sp * st for sp, st in zip(spacing, step, strict=True)]
        size = [sz / st for sz, st in zip(size, step, strict=True)]
        smallest = min(spacing)
        kernel_on = [
            on or sp < THICK_RATIO * smallest for on, sp in zip(kernel_on, spacing, strict=True)
        ]
        strides.append(step)
        kernels.append(tuple(3 if on else 1 for on in kernel_on))
    if len(strides) < 2:  # a patch too small to pool: one level of 2 where the axis allows
        strides.append(tuple(2 if p >= 2 * MIN_FEATURE else 1 for p in patch))
        kernels.append(kernels[0])
    return strides, kernels


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(math.prod(level[a] for level in strides) for a in range(len(strides[0])))


def _round_up(n: float, k: int) -> int:
    return int(math.ceil(n / k) * k)


def _round_down(n: float, k: int) -> int:
    return max(k, int(math.floor(n / k) * k))


def plan_patch(
    spacing: Sequence[float], shape: Sequence[int], budget: Budget
) -> tuple[tuple[int, ...], list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(patch, strides, kernels) for a median case of ``shape`` voxels at ``spacing``."""
    shape = [max(1, int(n)) for n in shape]
    for scale in (budget.canvas, 1.0):
        want = [n * scale for n in shape]
        strides, kernels = pooling(spacing, want, budget.levels)
        stride = total_stride(strides)
        patch = tuple(_round_up(w, k) for w, k in zip(want, stride, strict=True))
        if math.prod(patch) <= budget.voxels:
            return patch, strides, kernels
    # Too large: shrink with the median case's aspect until the rounded patch fits.
    factor = (budget.voxels / math.prod(shape)) ** (1 / len(shape))
    while True:
        want = [max(1.0, n * factor) for n in shape]
        strides, kernels = pooling(spacing, want, budget.levels)
        stride = total_stride(strides)
        patch = tuple(_round_down(w, k) for w, k in zip(want, stride, strict=True))
        if math.prod(patch) <= budget.voxels or factor < 1e-3:
            return patch, strides, kernels
        factor *= 0.95


def flip_axes(fp: dict) -> tuple[int, ...]:
    """The axes training flips (and prediction mirrors): all but those along which the
    foreground classes keep one order in the training cases (fingerprint 'class_order' >=
    LAYOUT_AGREEMENT), where a flip would show a layout no case has."""
    order = fp.get("class_order")
    if not order:
        return (0, 1, 2)
    return tuple(a for a, share in enumerate(order) if share < LAYOUT_AGREEMENT)


def widths(levels: int, budget: Budget) -> tuple[int, ...]:
    return tuple(min(budget.base * 2**i, budget.cap) for i in range(levels))


def _flat(levels: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return tuple(int(v) for level in levels for v in level)


def plan_2d(fp: dict, planes: Sequence[str], budget: Budget) -> dict:
    """2D patch side, strides, kernels, widths and batch for slices of ``planes``."""
    from sparseseg.data.planes import NORMAL_AXIS

    shape = fp["median_shape"]
    in_plane = [n for p in planes for a, n in enumerate(shape) if a != NORMAL_AXIS[p] % 3]
    side_want = min(max(in_plane) * budget.canvas, budget.side2d)
    strides, kernels = pooling((1.0, 1.0), (side_want, side_want), budget.levels)
    stride = total_stride(strides)[0]
    side = min(_round_up(side_want, stride), _round_down(budget.side2d, stride))
    batch = max(2, min(32, budget.pixels2d // (side * side)))
    return {
        "patch": (side, side),
        "strides": _flat(strides),
        "kernels": _flat(kernels),
        "filters": widths(len(strides), budget),
        "batch": int(batch),
    }


def plan_target_spacing(fp: dict) -> tuple[float, float, float] | None:
    """The median spacing where some training case lies more than :data:`SPACING_TOLERANCE`
    from it along some axis (per-case ``spacing_spread`` of the fingerprint), else None (no
    resampling)."""
    median = [float(s) for s in fp["median_spacing"]]
    lo, hi = fp["spacing_spread"]
    differs = any(
        max(m - a, b - m) > SPACING_TOLERANCE * m for m, a, b in zip(median, lo, hi, strict=True)
    )
    return tuple(median) if differs else None


def at_spacing(fp: dict, target: Sequence[float] | None) -> dict:
    """The fingerprint as the models see it on the grid of ``target`` (None: ``fp`` itself):
    per-case shapes resampled there, their median, the target as the median spacing, and the
    anisotropy and thick axis of the target."""
    if target is None:
        return fp
    target = [float(t) for t in target]
    shapes = [
        list(resampled_shape(shape, spacing, target))
        for shape, spacing in zip(fp["shapes"], fp["spacings"], strict=True)
    ]
    anisotropy = max(target) / min(target)
    return {
        **fp,
        "shapes": shapes,
        "spacings": [target] * len(shapes),
        "median_shape": [int(round(v)) for v in np.median(np.array(shapes), axis=0)],
        "median_spacing": target,
        "spacing_spread": [target, target],
        "anisotropy": anisotropy,
        "thick_axis": int(np.argmax(target)) if anisotropy >= THICK_RATIO else None,
    }


PLANNED = "planned"  # make_plan's target_spacing: decide it from the fingerprint


def make_plan(
    fp: dict,
    device_type: str = "cpu",
    budget: Budget | None = None,
    target_spacing: Sequence[float] | None | str = PLANNED,
) -> Preset:
    """The ``auto`` preset for a fingerprint (see the module doc); iterations stay the paper's
    until a time budget sets them (:mod:`sparseseg.planning.budget`).

    ``target_spacing``: :func:`plan_target_spacing` by default, or the one to plan at (None: no
    resampling). ``budget_minutes`` is 30 on the CPU (one MSD Hippocampus run in at most about
    30 minutes on two cores) and 0 (no time budget: the paper-length schedule) on CUDA.
    """
    budget = budget or budget_for(device_type)
    base = get_preset("auto")
    if isinstance(target_spacing, str):
        target_spacing = plan_target_spacing(fp)
    fp = at_spacing(fp, target_spacing)
    spacing, shape = fp["median_spacing"], fp["median_shape"]
    patch, strides, kernels = plan_patch(spacing, shape, budget)
    filters = widths(len(strides), budget)
    model3d = dataclasses.replace(
        base.model3d, filters=filters, strides=_flat(strides), kernels=_flat(kernels)
    )
    thick = fp.get("thick_axis")
    planes = ("xy", "xz", "yz")
    if thick is not None and fp["anisotropy"] >= PLANES_ONLY_NORMAL_RATIO:
        planes = (NORMAL_PLANE[int(thick)],)
    two = plan_2d(fp, planes, budget)
    model2d = dataclasses.replace(
        base.model2d, filters=two["filters"], strides=two["strides"], kernels=two["kernels"]
    )
    flips = flip_axes(fp)
    rot90 = math.isclose(spacing[0], spacing[1], rel_tol=0.1) and {0, 1} <= set(flips)
    step = {"optimizer": budget.optimizer, "lr": budget.lr, "flip_axes": flips}
    train3d = dataclasses.replace(
        base.train3d, patch=patch, batch_size=budget.batch3d, rot90_xy=rot90, **step
    )
    train2d = dataclasses.replace(base.train2d, patch=two["patch"], batch_size=two["batch"], **step)
    overlap = 0.5 if device_type == "cuda" else 0.25
    inference = dataclasses.replace(base.inference, patch=patch, overlap=overlap, mirror_axes=flips)
    meta = dataclasses.replace(base.meta, model=model3d, train=train3d)
    if len(planes) == 1:  # thick sections: the meta-model works on them, as the 2D model does
        meta = dataclasses.replace(
            meta, plane=planes[0], init="2d", train=dataclasses.replace(train2d, rot90_xy=rot90)
        )
    return dataclasses.replace(
        base,
        model2d=model2d,
        train2d=train2d,
        model3d=model3d,
        train3d=train3d,
        inference=inference,
        meta=meta,
        planes=planes,
        budget_minutes=0.0 if device_type == "cuda" else 30.0,
        target_spacing=None if target_spacing is None else tuple(target_spacing),
    )


def check(preset: Preset) -> None:
    """ValueError if the DynUNet settings of ``preset`` do not fit together (levels of filters,
    strides and kernels; training patches divisible by the total stride)."""
    models = [("model2d", preset.model2d, 2, [("train2d", preset.train2d)])]
    models.append(("model3d", preset.model3d, 3, [("train3d", preset.train3d)]))
    if preset.meta.plane:  # a 2D meta-model has the 2D base model's sizes
        models.append(("model2d", preset.model2d, 2, [("meta.train", preset.meta.train)]))
    else:
        models.append(("meta.model", preset.meta.model, 3, [("meta.train", preset.meta.train)]))
    for name, cfg, dims, trains in models:
        if cfg.arch != "dynunet":
            continue
        levels = len(cfg.filters)
        for field in ("strides", "kernels"):
            if len(getattr(cfg, field)) != dims * levels:
                raise ValueError(
                    f"{name}.{field} needs {dims} numbers per level for {levels} levels "
                    f"({name}.filters), got {len(getattr(cfg, field))}"
                )
        stride = total_stride(_levels(cfg.strides, dims))
        for train_name, train in trains:
            if len(train.patch) != dims or any(
                p % k for p, k in zip(train.patch, stride, strict=True)
            ):
                raise ValueError(
                    f"{train_name}.patch {_x(train.patch)} must have {dims} sizes, each a "
                    f"multiple of the total stride {_x(stride)} of {name}"
                )


def plan_notes(fp: dict, preset: Preset) -> dict:
    """What the plan decided about the spacing, in words (plan.json)."""
    target = preset.target_spacing
    if target is None:
        resampling = "none: every case keeps its own grid"
    else:
        moved = sum(
            resampled_shape(shape, spacing, target) != tuple(shape)
            for shape, spacing in zip(fp["shapes"], fp["spacings"], strict=True)
        )
        resampling = (
            f"to {_x(target)} mm: {moved} of {fp['cases']} training cases resampled (images "
            "cubic, labels nearest); predictions go back to each input's grid"
        )
    return {
        "target_spacing": None if target is None else list(target),
        "planned_target_spacing": plan_target_spacing(fp),
        "resampling": resampling,
        "spacing_differs_across_cases": plan_target_spacing(fp) is not None,
        "anisotropy": fp["anisotropy"],
    }


def _levels(flat: Sequence[int], dims: int) -> list[tuple[int, ...]]:
    return [tuple(flat[i : i + dims]) for i in range(0, len(flat), dims)]


def _x(values: Sequence) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _resampling(target: Sequence[float] | None, fp: dict) -> str:
    if target is None:
        return "no resampling"
    there = at_spacing(fp, target)["median_shape"] if "spacings" in fp else None
    return f"resample to {_x(target)} mm" + (f" (median {_x(there)} voxels)" if there else "")


def describe(preset: Preset, fp: dict | None = None) -> list[str]:
    """A few lines that say what the plan is (printed at the start of a run)."""
    lines = []
    if fp is not None:
        lines.append(
            f"plan '{preset.name}' for {fp.get('dataset', 'the dataset')}: {fp['cases']} "
            f"training cases, median {_x(fp['median_shape'])} voxels at "
            f"{_x([round(s, 6) for s in fp['median_spacing']])} mm (anisotropy "
            f"{fp['anisotropy']:.2g}), {fp['annotated_fraction']:.0%} of voxels annotated; "
            + _resampling(preset.target_spacing, fp)
        )
    m3, t3 = preset.model3d, preset.train3d
    if m3.arch == "dynunet":
        strides = _levels(m3.strides, 3)
        pools = [sum(1 for s in strides if s[a] == 2) for a in range(3)]
        lines.append(
            f"3D: DynUNet {'-'.join(map(str, m3.filters))}, patch {_x(t3.patch)}, batch "
            f"{t3.batch_size}, pooling x{pools[0]} y{pools[1]} z{pools[2]} (strides "
            f"{' '.join(_x(s) for s in strides[1:])}; kernels "
            f"{' '.join(_x(k) for k in _levels(m3.kernels, 3))})"
        )
    else:
        lines.append(f"3D: {m3.arch}, patch {_x(t3.patch)}, batch {t3.batch_size}")
    m2, t2 = preset.model2d, preset.train2d
    name2 = f"DynUNet {'-'.join(map(str, m2.filters))}" if m2.arch == "dynunet" else m2.arch
    lines.append(
        f"2D: {name2} on planes {','.join(preset.planes)}, patch {_x(t2.patch)}, batch "
        f"{t2.batch_size}"
        + (f", {m2.context} neighbouring slices each side as input" if m2.context else "")
        + f"; meta-model: {preset.meta.model.arch}"
        + (f" ({preset.meta.fusion})" if preset.meta.model.arch == "dynunet" else "")
        + (
            f" 2D on {preset.meta.plane}, patch {_x(preset.meta.train.patch)}, batch "
            f"{preset.meta.train.batch_size}"
            if preset.meta.plane
            else ""
        )
        + (f" from the {preset.meta.init.upper()} model" if preset.meta.init != "scratch" else "")
    )
    mirror = preset.inference.mirror_axes
    fixed = [a for a in range(3) if a not in t3.flip_axes]
    lines.append(
        f"augmentation: flips along {','.join('xyz'[a] for a in t3.flip_axes) or 'no axis'}"
        + f", xy quarter turns {'on' if t3.rot90_xy else 'off'}"
        + (
            f" (the classes keep one order along {','.join('xyz'[a] for a in fixed)})"
            if fixed and fp is not None and fp.get("class_order")
            else ""
        )
    )
    lines.append(
        f"prediction: window {_x(preset.inference.patch)}, overlap {preset.inference.overlap:g}, "
        + (f"mirrored along {','.join('xyz'[a] for a in mirror)}" if mirror else "no mirroring")
    )
    lines.append(
        f"iterations: 2D {t2.iterations}, 3D {t3.iterations}, meta {preset.meta.train.iterations} "
        f"(NN-fit from {preset.meta.stage1_iterations})"
        + (f" (budget {preset.budget_minutes:g} min)" if preset.budget_minutes > 0 else "")
    )
    return lines
