"""Minutes -> iterations: a short throughput probe on the machine at hand.

:func:`probe` times a few training steps of the 2D, 3D and meta models of a plan (synthetic
batches of the planned sizes, through the real training loop: same optimizer, autocast and
memory format) and one inference window of each. :func:`fit_budget` (pure) turns the measured
seconds into iterations so that Steps II and III fit ``preset.budget_minutes``: first it reserves
the estimated inference time (pseudo-labels, NN-fit rounds, test-split predictions), then it
splits the rest between the models by :data:`SHARES`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Sequence

import torch

from sparseseg.config import Preset

# Shares of the training time: 2D model, 3D model, meta-model (both self-training stages).
SHARES = {"2d": 0.2, "3d": 0.4, "meta": 0.4}
# Of the meta-model's iterations (the rest is NN-fit), per meta.init. A 2D meta-model started
# from the 2D model already predicts its PL set, and random targets pulled it away from it
# (ISBI 2012, docs/results.md): it starts NN-fit at once.
STAGE1_SHARE = {"scratch": 2 / 3, "3d": 2 / 3, "2d": 0.0}
MIN_ITERATIONS = 20
# Fewer 3D steps than this and the plan's line names the minutes that would buy them: on MSD
# Hippocampus the 3D DynUNet was still far from its plateau below it (docs/planning.md).
FEW_3D_STEPS = 1000
NNFIT_ROUNDS = 5  # NN-fit predicts every training volume this often (see sparseseg.selftrain)
SECONDS_PER_CASE_IO = 0.5  # reading, writing and scoring one case once
# Other jobs that took more than this many cores beyond those the probe's threads left free
# slow its steps far more than their share would (docs/planning.md).
BUSY_CORES = 0.5
ITERATION_FIELDS = (
    "train2d.iterations",
    "train3d.iterations",
    "meta.train.iterations",
    "meta.stage1_iterations",
)
# The memory order of each model's training on a CPU: the probe times both (docs/planning.md).
ORDER_FIELDS = {
    "2d": "train2d.channels_last",
    "3d": "train3d.channels_last",
    "meta": "meta.train.channels_last",
}


def _synthetic(batch: int, channels: int, patch: Sequence[int], num_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, num_classes + 1, (batch, *patch), generator=g)  # C = ignore
    return {"image": torch.randn(batch, channels, *patch, generator=g), "label": label}


def _train_seconds(model, cfg, channels: int, num_classes: int, device, steps: int) -> float:
    """Seconds per training step: the median of ``steps`` timed steps after one warm-up step
    (the median, so one step slowed by another job on a shared machine does not skew it)."""
    from sparseseg.training.loop import fit, supervised_loss

    cfg = dataclasses.replace(
        cfg, iterations=steps + 1, log_every=1, checkpoint_every=10**9, checkpoint_seconds=1e12
    )
    batch = _synthetic(cfg.batch_size, channels, cfg.patch, num_classes, cfg.seed)
    history = fit(
        model,
        lambda _step: batch,
        supervised_loss(num_classes, cfg.aux_weight, cfg.loss),
        cfg,
        None,
        device=device,
        progress=False,
    )
    times = [h["time"] for h in history]
    return statistics.median(b - a for a, b in zip(times, times[1:], strict=False))


def _infer_seconds(
    model, cfg, channels: int, patch: Sequence[int], batch: int, device, repeats: int = 3
) -> float:
    """Seconds per voxel of an eval-mode forward pass (bf16/channels-last as in inference): the
    median of ``repeats`` passes after a warm-up pass."""
    from sparseseg.runtime import autocast, memory_format_for, resolve_device

    device = resolve_device(device)
    model.eval().to(device)
    x = torch.randn(batch, channels, *patch, device=device)
    if device.type == "cpu" and getattr(model, "prefers_channels_last", True):
        model.to(memory_format=memory_format_for(x.dim()))  # as sparseseg.inference does
        x = x.contiguous(memory_format=memory_format_for(x.dim()))
    times = []
    with torch.inference_mode(), autocast(device, cfg.precision):
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) / (batch * math.prod(patch))


def probe(
    preset: Preset,
    num_classes: int,
    in_channels: int = 1,
    device=None,
    steps: int = 3,
    orders: Sequence[str] = (),
) -> dict:
    """Measured seconds on this machine: '{2d,3d,meta}_step' per training step and
    '{2d,3d,meta}_voxel' per inferred voxel, plus 'seconds' (the probe's own wall time) and,
    on a CPU where Linux tells: 'other_cores', the cores other processes kept busy on average
    during the probe, and 'spare_cores', those its threads left free.

    ``orders``: models ('2d', '3d', 'meta') whose training step is timed in both memory orders
    on a CPU; for each, '{name}_channels_last' is 1.0 where channels-last was the faster,
    '{name}_step' is the faster order's and '{name}_order_gain' the slower over the faster.
    """
    from sparseseg.models import build_model2d, build_model3d
    from sparseseg.models.meta import build_meta
    from sparseseg.runtime import resolve_device

    device = resolve_device(device)  # 'auto', as the CLI passes it, included
    cpus = _cpus()
    busy0 = _busy_seconds(cpus) if device.type == "cpu" else None
    t0, own0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    out: dict[str, float] = {}
    meta_channels = in_channels + num_classes
    for name, build, cfg, channels in (
        (
            "2d",
            lambda: build_model2d(preset.model2d, in_channels, num_classes),
            preset.train2d,
            in_channels,
        ),
        (
            "3d",
            lambda: build_model3d(preset.model3d, in_channels, num_classes),
            preset.train3d,
            in_channels,
        ),
        (
            "meta",
            lambda: build_meta(preset.meta, num_classes, in_channels, preset.model2d),
            preset.meta.train,
            meta_channels,
        ),
    ):
        model = build()
        out[f"{name}_step"] = _train_seconds(model, cfg, channels, num_classes, device, steps)
        if name in orders and device.type == "cpu":
            swapped = dataclasses.replace(cfg, channels_last=not cfg.channels_last)
            times = {
                cfg.channels_last: out[f"{name}_step"],
                swapped.channels_last: _train_seconds(
                    build(), swapped, channels, num_classes, device, steps
                ),
            }
            best = min(times, key=times.get)
            out[f"{name}_channels_last"] = float(best)
            out[f"{name}_order_gain"] = max(times.values()) / max(times[best], 1e-9)
            out[f"{name}_step"] = times[best]
        two_d = name == "2d" or (name == "meta" and preset.meta.plane)
        batch = preset.inference.slice_batch_size if two_d else 1
        out[f"{name}_voxel"] = _infer_seconds(model, cfg, channels, cfg.patch, batch, device)
    out["seconds"] = time.perf_counter() - t0
    if busy0 is not None and (busy1 := _busy_seconds(cpus)) is not None:
        others = busy1 - busy0 - (time.process_time() - own0)
        out["other_cores"] = max(others, 0.0) / out["seconds"]
        out["spare_cores"] = float(len(cpus) - torch.get_num_threads())
    return out


def _cpus() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def _busy_seconds(cpus: set[int]) -> float | None:
    """Seconds ``cpus`` spent busy (user, nice, system, irq, softirq, steal) since boot, from
    Linux's /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _windows(size: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI places over ``size`` (per-axis grid)."""
    n = 1
    for s, r in zip(size, roi, strict=True):
        r = min(r, s)
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else math.ceil((s - r) / step) + 1
    return n


def _stride3d(cfg) -> tuple[int, int, int]:
    """Total stride per axis of a 3D model config (DynUNet strides or DenseVoxNet's)."""
    if cfg.arch == "dynunet":
        levels = [cfg.strides[i : i + 3] for i in range(0, len(cfg.strides), 3)]
        return tuple(math.prod(level[a] for level in levels) for a in range(3))
    return tuple(int(d) * int(d) for d in cfg.downsample)


def inference_seconds(
    preset: Preset, fp: dict, measured: dict, models: Sequence[str] = tuple(SHARES)
) -> dict[str, float]:
    """Estimated seconds of the inference parts of a run: 'pseudolabels' (2D over every plane,
    3D sliding window, on every training case), 'nnfit' (the meta-model over every training case
    :data:`NNFIT_ROUNDS` times), 'test' (2D, 3D and meta on every test case) and 'io'. A run
    that trains only ``models=("3d",)`` (full supervision) predicts only the test cases with
    it."""
    from sparseseg.inference import valid_roi

    patch = preset.inference.patch
    stride = _stride3d(preset.model3d)
    per_case = []
    for shape in fp["shapes"]:
        vox = math.prod(shape)
        two = len(preset.planes) * vox * measured["2d_voxel"]
        # the window sparseseg.inference uses (DynUNet: the whole patch)
        roi = valid_roi(patch, shape, stride, preset.model3d.arch != "dynunet")
        window = math.prod(roi)
        n = _windows(shape, roi, preset.inference.overlap)
        three = n * window * measured["3d_voxel"]
        # a 2D meta-model runs over the slices of its plane, as the 2D model does
        meta = (vox if preset.meta.plane else n * window) * measured["meta_voxel"]
        per_case.append((two, three, meta))
    mean = [sum(c[i] for c in per_case) / len(per_case) for i in range(3)]
    train_cases, test_cases = fp["cases"], fp.get("test_cases", 0)
    mirrored = 2 ** len(preset.inference.mirror_axes)  # passes of a 3D net in predict
    meta_passes = 1 if preset.meta.plane else mirrored
    if tuple(models) == ("3d",):
        return {"test": test_cases * mean[1] * mirrored, "io": SECONDS_PER_CASE_IO * test_cases}
    return {
        "pseudolabels": train_cases * (mean[0] + mean[1]),
        "nnfit": NNFIT_ROUNDS * train_cases * mean[2],
        "test": test_cases * (mean[0] + mirrored * mean[1] + meta_passes * mean[2]),
        "io": SECONDS_PER_CASE_IO * (2 * train_cases + test_cases),
    }


def fit_budget(
    preset: Preset,
    fp: dict,
    measured: dict,
    keep: Sequence[str] = (),
    models: Sequence[str] = tuple(SHARES),
) -> tuple[Preset, dict]:
    """Iterations so that a whole run fits ``preset.budget_minutes`` (pure).

    ``measured``: from :func:`probe`; where it timed a model in both memory orders, the faster
    becomes the model's ``channels_last``. Fields named in ``keep`` (of
    :data:`ITERATION_FIELDS` and :data:`ORDER_FIELDS`, e.g. set explicitly by the user) are
    left alone. ``models``: the models the run trains; :data:`SHARES` is renormalised over them
    (full supervision, ``("3d",)``, gives the 3D model the whole training time). Returns
    ``(preset, record)``; the record has the reserve per inference part, the training seconds
    per model, the iterations and the memory orders chosen.
    """
    total = preset.budget_minutes * 60.0
    reserve = inference_seconds(preset, fp, measured, models)
    spare = total - sum(reserve.values()) - measured.get("seconds", 0.0)
    train_seconds = max(spare, 0.0)
    weight = sum(SHARES[k] for k in models)
    iters = {
        k: max(
            MIN_ITERATIONS,
            int(SHARES[k] / weight * train_seconds / max(measured[f"{k}_step"], 1e-6)),
        )
        for k in SHARES
    }
    meta = preset.meta.train.iterations if "meta.train.iterations" in keep else iters["meta"]
    s1 = (
        preset.meta.stage1_iterations
        if "meta.stage1_iterations" in keep
        else int(round(meta * STAGE1_SHARE[preset.meta.init]))
    )
    if "meta.train.iterations" not in keep:  # NN-fit gets a few steps after stage 1
        meta = max(meta, s1 + MIN_ITERATIONS // 2)
    values = {
        "train2d.iterations": iters["2d"],
        "train3d.iterations": iters["3d"],
        "meta.train.iterations": meta,
        "meta.stage1_iterations": s1,
    }
    from sparseseg.config import apply_overrides

    chosen = {k: v for k, v in values.items() if k not in keep}
    orders = {
        field: bool(measured[f"{k}_channels_last"])
        for k, field in ORDER_FIELDS.items()
        if f"{k}_channels_last" in measured and field not in keep
    }
    planned = apply_overrides(preset, {**chosen, **orders}) if chosen or orders else preset
    record = {
        "budget_seconds": total,
        "probe": {k: float(v) for k, v in measured.items()},
        "reserve_seconds": {k: round(v, 1) for k, v in reserve.items()},
        "training_seconds": round(train_seconds, 1),
        "over_budget": spare <= 0,
        "iterations": chosen,
        "channels_last": orders,
        "share_3d": SHARES["3d"] / weight,
    }
    return planned, record


def describe_budget(record: dict) -> str:
    """One line: the probe's step times and what the budget bought."""
    p = record["probe"]
    it = record["iterations"]
    steps = ", ".join(f"{k} {p[f'{k}_step']:.2f} s" for k in SHARES)
    labels = dict(zip(ITERATION_FIELDS, ("2D", "3D", "meta", "meta stage 1"), strict=True))
    bought = ", ".join(f"{labels[k]} {v}" for k, v in it.items()) or "as set"
    reserve = sum(record["reserve_seconds"].values())
    line = (
        f"budget {record['budget_seconds'] / 60:g} min: probe ({p['seconds']:.0f} s) per step "
        f"{steps}; inference reserve {reserve:.0f} s; iterations {bought}"
    )
    names = {field: k for k, field in ORDER_FIELDS.items()}
    orders = [
        f"{names[field]} {'channels-last' if cl else 'contiguous'} "
        f"({p[f'{names[field]}_order_gain']:.2f}x)"
        for field, cl in record.get("channels_last", {}).items()
    ]
    if orders:
        line += "; memory order " + ", ".join(orders)
    if record["over_budget"]:
        line += " (the budget does not cover inference: minimum iterations)"
    others = p.get("other_cores", 0.0)
    if others > p.get("spare_cores", 0.0) + BUSY_CORES:
        line += (
            f"; other jobs kept {others:.1f} cores busy during the probe: its steps were timed "
            "too slow and the plan buys fewer iterations than the budget allows (plan on idle "
            "cores, or set the iterations)"
        )
    if it.get("train3d.iterations", FEW_3D_STEPS) < FEW_3D_STEPS:  # not when set by the user
        need = minutes_for_3d_steps(record, FEW_3D_STEPS)
        line += f"; few 3D steps: --minutes {math.ceil(need)} would buy {FEW_3D_STEPS}"
    return line


def minutes_for_3d_steps(record: dict, steps: int) -> float:
    """The budget (minutes) in which the plan of ``record`` (from :func:`fit_budget`) would
    give the 3D model ``steps`` iterations: the same probe, reserve and shares (pure)."""
    fixed = record["probe"].get("seconds", 0.0) + sum(record["reserve_seconds"].values())
    return (fixed + steps * record["probe"]["3d_step"] / record["share_3d"]) / 60.0
