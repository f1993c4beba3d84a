"""Presets: every size and schedule of Steps II and III in one place.

``auto`` (the default engine) is nnU-Net-like: MONAI DynUNet models, CE + Dice, with patch,
pooling, widths, batch, optimiser and iterations planned from the dataset and the machine
(:mod:`sparseseg.planning`).
``paper`` follows the paper (DenseVoxNet of Yu et al., 2D U-Net, Adam 5e-4, 2D step decay after 10k
iterations, 3D/meta poly 0.9) and is meant for a GPU. ``cpu`` keeps the method and shrinks widths,
patches and iterations so that the whole pipeline runs on two CPU cores in minutes. ``cpu-aniso``
is ``cpu`` for stacks with sections much thicker than their pixels (no pooling along Z).

Override fields with :func:`apply_overrides` (``"train3d.iterations=300"``) or
``dataclasses.replace``. :meth:`Preset.to_dict` / :func:`preset_from_dict` round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sparseseg.data.planes import PLANES, parse_planes


@dataclass(frozen=True)
class Model2DConfig:
    """The 2D base model: ``arch`` 'unet2d' (:class:`sparseseg.models.fcn2d.UNet2D`, widths from
    ``base_channels``/``depth``/``max_channels``) or 'dynunet' (MONAI DynUNet, see
    :mod:`sparseseg.models.dynunet`: ``filters`` per level, ``strides``/``kernels`` flattened
    2 per level)."""

    base_channels: int = 32
    depth: int = 4
    max_channels: int = 512
    norm: str = "batch"
    dropout: float = 0.0
    arch: str = "unet2d"
    filters: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 2, 2)
    kernels: tuple[int, ...] = (3, 3, 3, 3, 3, 3, 3, 3)
    # Neighbouring slices on either side given as extra input channels (0: the slice alone).
    # Measured in docs/results.md ("Neighbouring slices"); not yet with a 2D meta-model.
    context: int = 0


@dataclass(frozen=True)
class Model3DConfig:
    """The 3D base model (and the meta-model's body): ``arch`` 'densevoxnet' (the paper's
    :class:`sparseseg.models.densevoxnet.DenseVoxNet`: stem_channels .. downsample) or 'dynunet'
    (MONAI DynUNet, nnU-Net's network, see :mod:`sparseseg.models.dynunet`: ``filters`` per
    level, ``strides`` and ``kernels`` flattened 3 per level, ``norm``, ``dropout``,
    ``deep_supervision``)."""

    stem_channels: int = 16
    growth: int = 12
    block_layers: tuple[int, int] = (12, 12)
    up_channels: tuple[int, int] = (128, 64)
    norm: str = "batch"
    dropout: float = 0.2
    deep_supervision: bool = True
    init_std: float | None = 0.01  # N(0, init_std) conv weights as in the paper; None: He init
    # per-axis factor of the two down steps; (2, 2, 1) keeps Z at full resolution (EM stacks)
    downsample: tuple[int, int, int] = (2, 2, 2)
    arch: str = "densevoxnet"
    filters: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2)
    kernels: tuple[int, ...] = (3,) * 12


@dataclass(frozen=True)
class TrainConfig:
    """One training run of :func:`sparseseg.training.loop.fit` and its patch sampler.

    ``patch`` has 2 entries for 2D models and 3 for 3D models. ``schedule`` is 'step' (lr x
    ``step_gamma`` from iteration ``step_at``) or 'poly' (lr x (1 - t/T) ** ``poly_power``).
    ``precision``: 'auto' (bf16 autocast on CPUs with bf16 support and on CUDA), 'bf16' or 'fp32'.
    ``optimizer``: 'adam' (``betas``, ``eps``) or 'sgd' (``momentum``, ``nesterov``).
    ``loss``: 'ce' (masked cross-entropy, auxiliary outputs weighted ``aux_weight``) or 'ce+dice'
    (masked cross-entropy + masked soft Dice, deep-supervision weights halving per level).
    ``grad_clip``: maximum gradient norm (0: no clipping).
    """

    iterations: int = 1000
    batch_size: int = 4
    patch: tuple[int, ...] = (64, 64, 64)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-10
    weight_decay: float = 0.0
    schedule: str = "poly"
    poly_power: float = 0.9
    step_at: int = 10000
    step_gamma: float = 0.1
    aux_weight: float = 0.5  # weight of the deep-supervision loss (3D models, loss 'ce')
    optimizer: str = "adam"
    momentum: float = 0.99  # SGD only
    nesterov: bool = True  # SGD only
    loss: str = "ce"
    grad_clip: float = 0.0
    annotated_fraction: float = 0.67  # share of crops centred on an annotated voxel
    # random flips (2D models: the slice axes among them); the plan leaves out the axes along
    # which the classes keep one order (sparseseg.planning.plan.flip_axes)
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90_xy: bool = True  # random 90-degree rotations in the axial (xy) plane
    # Base models only (the meta-model's sampler has none of these), each drawn per sample with
    # probability ``augment_prob``: a zoom by a factor in ``scale_range`` (> 1 zooms in), the
    # image scaled by 1 + U(-``intensity_scale``, +``intensity_scale``), Gaussian noise of std
    # up to ``noise_std`` (z-scored units). Off by default: docs/results.md has what they bought.
    scale_range: tuple[float, float] = (1.0, 1.0)
    intensity_scale: float = 0.0
    noise_std: float = 0.0
    augment_prob: float = 0.2
    precision: str = "auto"
    channels_last: bool = True  # channels_last(_3d) memory format on CPU (faster with bf16)
    checkpoint_every: int = 200  # iterations between checkpoints
    checkpoint_seconds: float = 120.0  # ... or this much wall time, whichever comes first
    log_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window 3D inference and slice-batched 2D inference."""

    patch: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.5
    sw_batch_size: int = 2
    slice_batch_size: int = 16
    # Test-time mirroring of the 3D networks in predict and test scoring (not in Steps II and III):
    # the softmax averaged over every combination of flips along these axes (2^n passes).
    mirror_axes: tuple[int, ...] = ()


META_INITS = ("scratch", "3d", "2d")


@dataclass(frozen=True)
class MetaConfig:
    """The Y-shaped meta-model (Step III): its widths, training and NN-fit settings.

    ``train.iterations`` is the whole schedule (the learning rate decays over both stages).
    Stage 1 draws a random PL set per sample for the first ``stage1_iterations``; stage 2 (NN-fit)
    is the rest: every ``nnfit_round_iterations`` each volume's target becomes its nearest PL set,
    until the share of volumes whose choice changed since the previous round falls under
    ``switch_threshold``; the choices are then kept to the end of the schedule.
    """

    model: Model3DConfig = field(default_factory=Model3DConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(iterations=15000))
    stage1_iterations: int = 10000
    switch_threshold: float = 0.05
    ay_stem_channels: int = 16  # stem width of the A(Y) branch
    nnfit_round_iterations: int = 0
    # Measured on the phantom heart (cpu preset, RA s10, 5 test cases, mean Dice myocardium/blood
    # pool, one run each): without the skip the meta-model reached 0.633/0.850, below the best
    # base model (xz 0.624/0.876); with it 0.665/0.885, above every base model and above the
    # four-set vote it starts from (0.583/0.897).
    ay_skip: float = 4.0
    # DynUNet meta-model only: 'stack' (A(Y) as extra input channels of one DynUNet) or 'y'
    # (image and A(Y) through separate input blocks, fused before the encoder, as in Fig. 4).
    # The DenseVoxNet meta-model is always Y-shaped.
    fusion: str = "y"
    # Training's A(Y): True counts every PL set with the manual labels written in (as the PL
    # sets are), so annotated voxels are unanimous one-hot, which A(Y) at prediction never is;
    # False builds it from the base models' raw predictions, exactly as prediction does (the
    # manual labels then enter only the targets).
    ay_manual: bool = True
    # Initial weights: 'scratch' (the paper); '3d', the sparse 3D base model's (DynUNet with
    # fusion 'stack' and the 3D model's sizes only): the meta-model starts as the 3D model, its
    # A(Y) input weights at zero (sparseseg.selftrain.warm_start); '2d', the 2D base model's
    # (a 2D meta-model, ``plane`` set).
    init: str = "scratch"
    # '' : a 3D meta-model (``model``, patches of ``train.patch``). A plane ('xy', 'xz', 'yz'):
    # a 2D meta-model on the slices of that plane, sized as the 2D base model (``model2d``,
    # DynUNet; ``train.patch`` then has two sizes), for thick-section stacks where the 3D
    # networks see little across sections.
    plane: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    model2d: Model2DConfig
    train2d: TrainConfig
    model3d: Model3DConfig
    train3d: TrainConfig
    inference: InferenceConfig
    meta: MetaConfig
    planes: tuple[str, ...] = PLANES
    # Time budget of Steps II and III in minutes (preset 'auto'): iterations are then planned
    # from a throughput probe (see sparseseg.planning); 0 keeps the iterations as set.
    budget_minutes: float = 0.0
    # Voxel size (mm, x y z) the models train and predict at; None: every case keeps its grid.
    # Cases whose shape at this spacing differs are resampled (sparseseg.data.resample) for
    # training, and inputs for prediction (outputs go back to each input's grid). 'auto' plans
    # it (sparseseg.planning.plan.plan_target_spacing).
    target_spacing: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)


def _paper() -> Preset:
    train3d = TrainConfig(
        iterations=15000,
        batch_size=4,
        patch=(64, 64, 64),
        schedule="poly",
        checkpoint_every=500,
        checkpoint_seconds=600.0,
    )
    return Preset(
        name="paper",
        model2d=Model2DConfig(base_channels=32, depth=4),
        train2d=TrainConfig(
            iterations=20000,
            batch_size=16,
            patch=(128, 128),
            schedule="step",
            step_at=10000,
            step_gamma=0.1,
            checkpoint_every=1000,
            checkpoint_seconds=600.0,
        ),
        model3d=Model3DConfig(),
        train3d=train3d,
        inference=InferenceConfig(patch=(64, 64, 64), overlap=0.5, sw_batch_size=4),
        meta=MetaConfig(
            model=Model3DConfig(),
            train=dataclasses.replace(train3d, iterations=15000),
            stage1_iterations=10000,
            switch_threshold=0.05,
            ay_stem_channels=16,
            ay_skip=0.0,  # the paper's network, as in Fig. 4
        ),
    )


def _cpu() -> Preset:
    model3d = Model3DConfig(
        stem_channels=16,
        growth=8,
        block_layers=(4, 4),
        up_channels=(32, 16),
        norm="batch",
        dropout=0.0,
        # He init: with the paper's N(0, 0.01) the logits grow too slowly for a short CPU schedule
        # (one-batch overfit probe: CE 0.57 vs 0.22 after 150 steps, myocardium never predicted).
        init_std=None,
    )
    # lr 3e-3 instead of the paper's 5e-4: with a few hundred steps Adam's per-step moves of
    # ~lr are too small to get past the background prior (sparseseg experiment on Hippocampus,
    # 40 dense cases: training Dice 0.00 after 150 steps at 5e-4 or 3e-3, 0.71 after 600 at 3e-3).
    # 2400 steps: the dense-label DVN on MSD Hippocampus (150 train / 50 test) reached test mean
    # Dice 0.690 after 600 steps (15 s on two idle cores) and 0.817 after 2400 (61 s).
    train3d = TrainConfig(
        iterations=2400,
        batch_size=2,
        patch=(32, 32, 32),
        lr=3e-3,
        schedule="poly",
        checkpoint_every=100,
        checkpoint_seconds=60.0,
    )
    return Preset(
        name="cpu",
        model2d=Model2DConfig(base_channels=16, depth=3, norm="batch"),
        # 1500 steps: on the heart phantom (s10) the 2D PLs' myocardium Dice away from the
        # annotated slices rose from 0.54-0.60 at 600 steps to 0.58-0.65 (lr 2e-3 did not help).
        train2d=TrainConfig(
            iterations=1500,
            batch_size=8,
            patch=(48, 48),
            schedule="step",
            step_at=1100,
            step_gamma=0.1,
            checkpoint_every=100,
            checkpoint_seconds=60.0,
        ),
        model3d=model3d,
        train3d=train3d,
        inference=InferenceConfig(patch=(48, 48, 48), overlap=0.25, sw_batch_size=2),
        meta=MetaConfig(
            model=model3d,
            train=dataclasses.replace(train3d, iterations=1800),
            stage1_iterations=1200,
            switch_threshold=0.05,
            ay_stem_channels=8,
        ),
    )


def _cpu_aniso() -> Preset:
    """``cpu`` for stacks whose sections are much thicker than their pixels (serial-section EM).

    On ISBI 2012 (4 nm pixels, 50 nm sections; fully supervised DVN, seed 0, Rand F of the
    interior): 0.138 with the ``cpu`` network and 32^3 crops, 0.185 with 64x64x16 crops, 0.313
    without pooling along Z at 64x64x8 and 0.376 at 64x64x16. The 2D model works on xy sections
    only: across the sections (xz, yz) it scored below the trivial all-interior prediction.
    """
    cpu = _cpu()
    flat = dataclasses.replace(cpu.model3d, downsample=(2, 2, 1))
    crop = (64, 64, 16)
    return dataclasses.replace(
        cpu,
        name="cpu-aniso",
        model3d=flat,
        train3d=dataclasses.replace(cpu.train3d, patch=crop),
        inference=dataclasses.replace(cpu.inference, patch=crop),
        meta=dataclasses.replace(
            cpu.meta, model=flat, train=dataclasses.replace(cpu.meta.train, patch=crop)
        ),
        planes=("xy",),
    )


def _auto() -> Preset:
    """The default engine before planning: DynUNet (nnU-Net's network) for the 2D, 3D and meta
    models, SGD Nesterov 0.99 lr 1e-2 poly 0.9, weight decay 3e-5, masked CE + soft Dice with
    deep supervision, gradient norm clipped at 12, and the paper's iteration counts; predictions
    of the 3D networks mirrored along every axis (``predict --no-mirror`` skips it).

    :func:`sparseseg.planning.plan_preset` replaces patch, pooling, kernels, widths, batch,
    planes, the optimiser (Adam lr 1e-3 on a CPU) and (with a time budget) iterations from the
    dataset's fingerprint and the machine; this unplanned
    version fits a volume of about 48 x 64 x 48 isotropic voxels (MSD Hippocampus).
    """
    train = TrainConfig(
        iterations=15000,
        batch_size=2,
        patch=(48, 64, 48),
        lr=1e-2,
        optimizer="sgd",
        momentum=0.99,
        nesterov=True,
        weight_decay=3e-5,
        schedule="poly",
        poly_power=0.9,
        loss="ce+dice",
        grad_clip=12.0,
        # The faster memory order depends on the CPU and the model: a budgeted plan's probe
        # times both and picks (sparseseg.planning.budget); contiguous where nothing was timed.
        channels_last=False,
        checkpoint_every=200,
        checkpoint_seconds=120.0,
    )
    model3d = Model3DConfig(arch="dynunet", norm="instance", dropout=0.0, init_std=None)
    return Preset(
        name="auto",
        model2d=Model2DConfig(arch="dynunet", norm="instance"),
        train2d=dataclasses.replace(train, iterations=20000, batch_size=8, patch=(64, 64)),
        model3d=model3d,
        train3d=train,
        # mirrored along the axes training flips (nnU-Net), measured in docs/results.md
        inference=InferenceConfig(
            patch=(48, 64, 48), overlap=0.5, sw_batch_size=2, mirror_axes=train.flip_axes
        ),
        meta=MetaConfig(
            model=model3d,
            train=train,
            stage1_iterations=10000,
            switch_threshold=0.05,
            fusion="stack",
        ),
    )


PRESETS = {"auto": _auto, "cpu": _cpu, "cpu-aniso": _cpu_aniso, "paper": _paper}
# The preset of `train`, `pseudolabel`, `experiment`, the demo and the Python API when none is
# named: the planned engine (its time budget, `budget_minutes`, defaults to 30 on a CPU).
DEFAULT_PRESET = "auto"


def get_preset(name: str, overrides: list[str] | dict[str, Any] | None = None) -> Preset:
    """A fresh preset by name (a key of PRESETS), with optional overrides (see apply_overrides)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (expected one of {', '.join(PRESETS)})")
    preset = PRESETS[name]()
    return apply_overrides(preset, overrides) if overrides else preset


def _convert(value: Any, current: Any) -> Any:
    if isinstance(value, str) and not isinstance(current, str):
        text = value.strip()
        if text.lower() in ("none", "null"):
            return None
        if current is None:  # a number, or several (target_spacing=1,1,2.5 or 1x1x2.5)
            numbers = tuple(float(p) for p in text.replace("x", ",").split(",") if p.strip())
            return numbers[0] if len(numbers) == 1 else numbers
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else int
            if kind is str:  # e.g. planes=xy,xz
                return tuple(p.strip() for p in text.split(",") if p.strip())
            parts = [p for p in text.replace("x", ",").split(",") if p.strip()]  # 32x32x32
            return tuple(kind(p) for p in parts)
        return type(current)(text)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    return value


def _set(obj: Any, path: list[str], value: Any) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"unknown setting {path[0]!r} in {type(obj).__name__}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"{path[0]!r} has no sub-settings")
        return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value)})
    return dataclasses.replace(obj, **{path[0]: _convert(value, current)})


def apply_overrides(preset: Preset, overrides: list[str] | dict[str, Any]) -> Preset:
    """Override dotted fields: ``["train3d.iterations=300", "train3d.patch=32x32x32"]`` or a dict
    ``{"meta.train.iterations": 100}``. Raises ValueError on an unknown field or bad value, or
    when stage 1 of the meta-model would be longer than its whole schedule."""
    items = overrides.items() if isinstance(overrides, dict) else []
    if not isinstance(overrides, dict):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise ValueError(f"override must look like section.field=value, got {text!r}")
            key, value = text.split("=", 1)
            parsed.append((key.strip(), value))
        items = parsed
    for key, value in items:
        preset = _set(preset, key.split("."), value)
    check_meta_schedule(preset.meta)
    for name in ("train2d", "train3d"):
        check_augmentation(name, getattr(preset, name))
    if preset.model2d.context < 0:
        raise ValueError(f"model2d.context must be >= 0, got {preset.model2d.context}")
    if preset.model2d.context and preset.meta.init == "2d":
        raise ValueError(
            "model2d.context > 0 does not work with a 2D meta-model started from the 2D model "
            "(meta.init=2d, the plan for thick-section stacks)"
        )
    return dataclasses.replace(
        preset,
        inference=dataclasses.replace(
            preset.inference, mirror_axes=check_mirror_axes(preset.inference.mirror_axes)
        ),
        planes=parse_planes(preset.planes),
        target_spacing=check_target_spacing(preset.target_spacing),
    )


def check_meta_schedule(meta: MetaConfig) -> None:
    """ValueError unless 0 <= ``stage1_iterations`` <= ``train.iterations``, ``init`` is known,
    ``plane`` is empty or a plane, and ``init`` starts from a base model of the meta-model's
    dimension ('2d' needs a ``plane``, '3d' none)."""
    if meta.init not in META_INITS:
        raise ValueError(f"meta.init must be one of {', '.join(META_INITS)}, got {meta.init!r}")
    if meta.plane not in ("", *PLANES):
        raise ValueError(
            f"meta.plane must be one of {', '.join(PLANES)} (a 2D meta-model) or empty (3D), "
            f"got {meta.plane!r}"
        )
    if (meta.init == "2d") != bool(meta.plane) and meta.init != "scratch":
        raise ValueError(
            f"meta.init={meta.init!r} needs a {'2D' if meta.init == '2d' else '3D'} meta-model "
            f"(meta.plane {'set' if meta.init == '2d' else 'empty'}), got meta.plane="
            f"{meta.plane!r}"
        )
    if not 0 <= meta.stage1_iterations <= meta.train.iterations:
        raise ValueError(
            f"meta.stage1_iterations ({meta.stage1_iterations}) must lie between 0 and "
            f"meta.train.iterations ({meta.train.iterations}), the meta-model's whole schedule"
        )


def check_augmentation(name: str, cfg: TrainConfig) -> None:
    """ValueError unless ``cfg``'s zoom range is 0 < low <= high, the intensity and noise
    amounts are >= 0 and ``augment_prob`` lies in [0, 1] (``name``: its section)."""
    scale = tuple(float(v) for v in cfg.scale_range)
    lo, hi = scale if len(scale) == 2 else (0.0, 0.0)
    if not 0 < lo <= hi:
        raise ValueError(
            f"{name}.scale_range must be two factors 0 < low <= high, got {cfg.scale_range}"
        )
    if cfg.intensity_scale < 0 or cfg.noise_std < 0:
        raise ValueError(f"{name}.intensity_scale and {name}.noise_std must be >= 0")
    if not 0 <= cfg.augment_prob <= 1:
        raise ValueError(f"{name}.augment_prob must lie in [0, 1], got {cfg.augment_prob}")


def check_mirror_axes(axes) -> tuple[int, ...]:
    """``axes`` as sorted distinct spatial axes (0-2); None or empty: no mirroring."""
    values = () if axes is None else tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    if not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 2 for a in values):
        raise ValueError(f"inference.mirror_axes must be axes among 0,1,2 or none, got {axes}")
    return tuple(sorted(set(values)))


def check_target_spacing(spacing) -> tuple[float, float, float] | None:
    """``spacing`` as three floats (mm), or None; ValueError unless it is None or three positive
    finite numbers."""
    if spacing is None:
        return None
    values = tuple(spacing) if isinstance(spacing, (tuple, list)) else (spacing,)
    ok = len(values) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
        for v in values
    )
    if not ok:
        raise ValueError(
            f"target_spacing must be three positive numbers in mm (x,y,z) or none, got {spacing}"
        )
    return tuple(float(v) for v in values)


def _from_dict(cls, data: dict[str, Any]):
    nested = _NESTED.get(cls.__name__, {})
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in nested:
            value = _from_dict(nested[f.name], value)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool) and "float" in str(f.type):
            value = float(value)
        kwargs[f.name] = value
    return cls(**kwargs)


_NESTED = {
    "Preset": {
        "model2d": Model2DConfig,
        "train2d": TrainConfig,
        "model3d": Model3DConfig,
        "train3d": TrainConfig,
        "inference": InferenceConfig,
        "meta": MetaConfig,
    },
    "MetaConfig": {"model": Model3DConfig, "train": TrainConfig},
}


def preset_from_dict(data: dict[str, Any]) -> Preset:
    """Inverse of :meth:`Preset.to_dict` (unknown keys are ignored, missing ones take defaults
    of the named preset)."""
    base = get_preset(data["name"]) if data.get("name") in PRESETS else _cpu()
    merged = _merge(base.to_dict(), data)
    return _from_dict(Preset, merged)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v)
        elif k in out:
            out[k] = v
    return out
