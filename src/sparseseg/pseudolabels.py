"""Step II: the sparse 2D and 3D base models and the four pseudo-label (PL) sets.

On disk, under ``OUT`` (each file written atomically; rerunning skips what exists)::

    OUT/models/model2d.pt, model3d.pt      trained base models: model bundles of one part each
                                           (see sparseseg.bundle), model2d.json, model3d.json
                                           beside them for people to read
    OUT/checkpoints/model2d.ckpt, ...      training checkpoints (resume with ``resume=True``)
    OUT/pl_xy/ pl_xz/ pl_yz/ pl_3d/        one nnU-Net raw dataset per PL set: dataset.json,
                                           imagesTr/CASE_0000 (hard links or copies of the source
                                           images; the resampled image of a case resampled to the
                                           preset's target_spacing), labelsTr/CASE (dense labels
                                           0..C-1)
    OUT/mean/CASE.nii.gz                   A(Y): mean of the one-hot PL sets, float32 (X, Y, Z, C)
                                           (of the raw predictions with ``meta.ay_manual=false``)
    OUT/step2.json                         summary: preset, classes, cases, training histories
    OUT/fingerprint.json                   what OUT was made from (``pseudolabel`` only; see
                                           sparseseg.fingerprint)

Every PL keeps the manual label wherever the voxel was annotated (label != ignore). Cases are
trained on and pseudo-labelled on the grid of :func:`training_volumes`: their own, or the
preset's ``target_spacing`` where their spacing differs. All NIfTI files carry the affine of the
image on that grid (the source image's where no resampling took place). Images are z-scored per
volume before training and inference.

Under torchrun (see :mod:`sparseseg.distributed`) the base models train with DDP on every rank,
the cases to pseudo-label are split across ranks, and rank 0 alone writes the models, the summary
and the dataset folders while the other ranks wait.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseseg import distributed
from sparseseg.bundle import Bundle, ModelPart, load_bundle, save_bundle
from sparseseg.config import Preset
from sparseseg.data.io import read_nifti, write_nifti
from sparseseg.data.layout import Dataset, write_dataset_json
from sparseseg.data.planes import PL_SETS, PLANES
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_path, write_json
from sparseseg.fingerprint import plain

MODEL2D, MODEL3D = "model2d", "model3d"
PART = {MODEL2D: "2d", MODEL3D: "3d"}  # each base model's part in the model bundle


def pl_sets(planes) -> tuple[str, ...]:
    """The PL sets whose mean is A(Y): the 2D model's trained planes, then '3d'.

    All four with the default planes; ('xy', '3d') for a 2D model trained on xy sections only
    (its predictions across planes it never saw are not pseudo-labels).
    """
    return (*(p for p in PLANES if p in planes), "3d")


def preset_bundle(
    parts: Mapping[str, ModelPart],
    dataset: Dataset,
    preset: Preset,
    extra: Mapping[str, Any] | None = None,
) -> Bundle:
    """A model bundle of ``parts`` trained on ``dataset`` with ``preset`` (``extra``: more info,
    e.g. ``train_seconds``); every model file sparseseg writes is one (see :mod:`sparseseg.bundle`).
    """
    return Bundle(
        parts=dict(parts),
        class_names=dataset.class_names,
        preset=preset.name,
        config=plain(preset.to_dict()),
        planes=list(preset.planes),
        pl_sets=list(pl_sets(preset.planes)),
        extra=dict(extra or {}),
    )


# Paths ----------------------------------------------------------------------------------------
def model_path(out_dir: str | Path, name: str) -> Path:
    """OUT/models/{name}.pt for name 'model2d' or 'model3d'."""
    return Path(out_dir) / "models" / f"{name}.pt"


def checkpoint_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "checkpoints" / f"{name}.ckpt"


def pl_dir(out_dir: str | Path, pl_set: str) -> Path:
    """OUT/pl_{pl_set}: the nnU-Net dataset folder of one PL set ('xy', 'xz', 'yz', '3d')."""
    return Path(out_dir) / f"pl_{pl_set}"


def pl_path(out_dir: str | Path, pl_set: str, case: str, file_ending: str = ".nii.gz") -> Path:
    return pl_dir(out_dir, pl_set) / "labelsTr" / f"{case}{file_ending}"


def mean_path(out_dir: str | Path, case: str, file_ending: str = ".nii.gz") -> Path:
    return Path(out_dir) / "mean" / f"{case}{file_ending}"


# Data -----------------------------------------------------------------------------------------
def training_ignore_index(dataset: Dataset) -> int:
    """The label value that marks unannotated voxels: the dataset's ``ignore`` value, or C for a
    densely labelled dataset (then only padding carries it)."""
    ignore = dataset.ignore_value
    return dataset.num_classes if ignore is None else int(ignore)


def load_training_cases(
    dataset: Dataset, split: str = "Tr", target_spacing: Sequence[float] | None = None
) -> list[dict[str, np.ndarray]]:
    """``[{'image': z-scored float32 (X, Y, Z) or (C, X, Y, Z), 'label': int16 (X, Y, Z)}]`` for
    every case (z-scored per channel), on the grid of ``target_spacing`` (see
    :func:`training_volumes`)."""
    if not dataset.has_labels(split):
        raise InputError(f"every case in images{split} needs a label file", dataset.root)
    return [training_case(dataset, case, split, target_spacing) for case in dataset.cases(split)]


def training_volumes(
    dataset: Dataset, case: str, split: str = "Tr", target_spacing: Sequence[float] | None = None
):
    """(image, label) Volumes of a case as the models train on them: resampled to
    ``target_spacing`` (the preset's; image cubic, label nearest) where the case's grid differs,
    else as read. Every per-case array training uses comes from here."""
    from sparseseg.data.resample import resample_volume

    image, label = dataset.load_pair(case, split)
    image = resample_volume(image, target_spacing)
    return image, resample_volume(label, target_spacing, labels=True)


def training_case(
    dataset: Dataset, case: str, split: str = "Tr", target_spacing: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """One case of :func:`load_training_cases` (also what the case store keeps)."""
    from sparseseg.runtime import zscore

    image, label = training_volumes(dataset, case, split, target_spacing)
    return {"image": zscore(image.array), "label": label.array.astype(np.int16)}


# Training -------------------------------------------------------------------------------------
def train_model2d(
    cases: Sequence[Mapping[str, np.ndarray]],
    num_classes: int,
    ignore_index: int,
    preset: Preset,
    checkpoint: str | Path | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
):
    """Train the 2D base model on slices of ``preset.planes`` of all cases -> (model, history)."""
    from sparseseg.models import build_model2d
    from sparseseg.training.sampling import SliceSampler2D

    cfg = preset.train2d
    torch.manual_seed(cfg.seed)  # the initial weights follow the seed too
    context = preset.model2d.context
    model = build_model2d(preset.model2d, _in_channels(cases) * (2 * context + 1), num_classes)
    sampler = SliceSampler2D(
        cases,
        cfg.patch,
        cfg.batch_size,
        ignore_index=ignore_index,
        planes=preset.planes,
        annotated_fraction=cfg.annotated_fraction,
        flip_axes=cfg.flip_axes,
        rot90=cfg.rot90_xy,
        seed=cfg.seed,
        context=context,
        **augmentation(cfg),
    )
    return _fit(
        model, sampler, ignore_index, cfg, checkpoint, "2D base model", resume, device, progress
    )


def train_model3d(
    cases: Sequence[Mapping[str, np.ndarray]],
    num_classes: int,
    ignore_index: int,
    preset: Preset,
    checkpoint: str | Path | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
):
    """Train the sparse 3D base model (DenseVoxNet) on random crops; return (model, history).

    Also the fully-supervised reference: pass dense labels (ignore_index = C)."""
    from sparseseg.models import build_model3d
    from sparseseg.training.sampling import PatchSampler3D

    cfg = preset.train3d
    torch.manual_seed(cfg.seed)
    model = build_model3d(preset.model3d, _in_channels(cases), num_classes)
    sampler = PatchSampler3D(
        cases,
        cfg.patch,
        cfg.batch_size,
        ignore_index=ignore_index,
        annotated_fraction=cfg.annotated_fraction,
        flip_axes=cfg.flip_axes,
        rot90_xy=cfg.rot90_xy,
        seed=cfg.seed,
        **augmentation(cfg),
    )
    return _fit(
        model, sampler, ignore_index, cfg, checkpoint, "3D base model", resume, device, progress
    )


def augmentation(cfg) -> dict:
    """The samplers' zoom, intensity and noise settings from a TrainConfig."""
    return {
        "scale_range": cfg.scale_range,
        "intensity_scale": cfg.intensity_scale,
        "noise_std": cfg.noise_std,
        "augment_prob": cfg.augment_prob,
    }


def _in_channels(cases: Sequence[Mapping[str, np.ndarray]]) -> int:
    image = cases[0]["image"]
    return 1 if image.ndim == 3 else image.shape[0]


def _fit(model, sampler, ignore_index, cfg, checkpoint, desc, resume, device, progress):
    """Train ``model`` on ``sampler`` with the masked supervised loss; return (model, history)."""
    from sparseseg.training.loop import fit, supervised_loss

    history = fit(
        model,
        sampler,
        supervised_loss(ignore_index, cfg.aux_weight, cfg.loss),
        cfg,
        checkpoint,
        resume=resume,
        device=device,
        progress_desc=desc,
        progress=progress,
    )
    return model, history


def train_base_models(
    dataset: Dataset | str | Path,
    out_dir: str | Path,
    preset: Preset,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Train (or skip, where OUT/models/NAME.pt exists) the 2D and 3D base models.

    The training cases are read memory-mapped from a case store under ``cache_dir`` (default
    OUT/cache; see :mod:`sparseseg.data.store`), built there one case at a time where missing.
    Returns ``{'model2d': path, 'model3d': path}``; histories go to OUT/step2.json.
    """
    from sparseseg.data.store import CACHE_DIR, training_store
    from sparseseg.models import base_part

    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out_dir = Path(out_dir)
    paths = {MODEL2D: model_path(out_dir, MODEL2D), MODEL3D: model_path(out_dir, MODEL3D)}
    if all(p.exists() for p in paths.values()):
        return paths
    if not dataset.has_labels("Tr"):
        raise InputError("every case in imagesTr needs a label file", dataset.root)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / CACHE_DIR
    target = preset.target_spacing
    cases = distributed.run_on_main(lambda: training_store(dataset, cache / "train", "Tr", target))
    num_classes, ignore = dataset.num_classes, training_ignore_index(dataset)
    summary = _read_summary(out_dir)
    for name, trainer, cfg in (
        (MODEL2D, train_model2d, preset.model2d),
        (MODEL3D, train_model3d, preset.model3d),
    ):
        if paths[name].exists():
            continue
        t0 = time.perf_counter()
        model, history = trainer(
            cases,
            num_classes,
            ignore,
            preset,
            checkpoint_path(out_dir, name),
            resume=resume,
            device=device,
            progress=progress,
        )
        summary.setdefault("training", {})[name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "history": history,
        }

        def write(name=name, model=model, cfg=cfg) -> None:
            # the history first: a kill between the two retrains the model (same result) and
            # rewrites it, where the other order would leave a model without its history
            _write_summary(out_dir, dataset, preset, summary)
            part = {PART[name]: base_part(model, cfg.arch, cfg)}
            save_bundle(preset_bundle(part, dataset, preset), paths[name])

        distributed.run_on_main(write)
    return paths


def load_base_models(out_dir: str | Path):
    """(model2d, model3d) from OUT/models, in eval mode on the CPU."""
    return tuple(load_bundle(model_path(out_dir, n)).build(PART[n]) for n in (MODEL2D, MODEL3D))


# Pseudo-labels --------------------------------------------------------------------------------
def compute_pseudolabels(
    model2d: torch.nn.Module,
    model3d: torch.nn.Module,
    image: np.ndarray,
    preset: Preset,
    manual: np.ndarray | None = None,
    ignore_index: int | None = None,
    *,
    device: str | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The PLs and A(Y) of one z-scored image (X, Y, Z) or (C, X, Y, Z): ``{name: uint8 (X, Y,
    Z)}`` for each name in :func:`pl_sets` of ``preset.planes`` (all four by default), and A(Y)
    float32 (C, X, Y, Z).

    The 2D model runs over every slice of each of its planes. Where ``manual`` is given and !=
    ``ignore_index``, the manual label replaces the prediction in every PL, and in A(Y) too with
    ``preset.meta.ay_manual``; without it A(Y) is built from the raw predictions, as
    :class:`sparseseg.predict.Predictor` builds it.
    """
    from sparseseg.inference import argmax_uint8, predict_planes_2d, predict_volume_3d

    inf = preset.inference
    pls = predict_planes_2d(
        model2d,
        image,
        pl_sets(preset.planes)[:-1],
        patch=preset.train2d.patch,
        overlap=inf.overlap,
        batch_size=inf.slice_batch_size,
        device=device,
        labels_only=True,
        context=preset.model2d.context,
    )
    probs = predict_volume_3d(
        model3d, image, inf.patch, inf.overlap, sw_batch_size=inf.sw_batch_size, device=device
    )
    pls["3d"] = argmax_uint8(probs)
    num_classes = probs.shape[0]
    del probs  # (C, X, Y, Z) float32: not held while the manual labels are applied
    if manual is None:
        return pls, mean_one_hot(pls, num_classes)
    ay = mean_one_hot(pls, num_classes, manual if preset.meta.ay_manual else None, ignore_index)
    return {k: apply_manual(v, manual, ignore_index) for k, v in pls.items()}, ay


def apply_manual(pl: np.ndarray, manual: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """``pl`` with ``manual`` written wherever ``manual != ignore_index`` (all of it if None)."""
    if ignore_index is None:
        return manual.astype(pl.dtype)
    annotated = manual != ignore_index
    out = pl.copy()
    out[annotated] = manual[annotated].astype(pl.dtype)
    return out


class MeanMap:
    """A(Y), the meta-model's second input, built one PL set at a time: the mean of the sets'
    one-hot encodings, float32 (C, X, Y, Z) in [0, 1]. Training (:func:`compute_pseudolabels`)
    and prediction (:class:`sparseseg.predict.Predictor`) both build it here.

    With ``manual`` (X, Y, Z) and its ``ignore_index``, every set counts with the manual label
    wherever a voxel is annotated (unanimous one-hot there; training with ``meta.ay_manual``);
    prediction has no manual labels. Counts are uint8 (C, X, Y, Z), so only one label volume
    needs to be alive at a time.
    """

    def __init__(
        self,
        num_classes: int,
        shape: Sequence[int],
        manual: np.ndarray | None = None,
        ignore_index: int | None = None,
    ):
        self.counts = np.zeros((int(num_classes), *shape), dtype=np.uint8)
        self.sets = 0
        self.manual, self.ignore_index = manual, ignore_index

    def add(self, labels: np.ndarray) -> None:
        """Count one PL set's labels (X, Y, Z)."""
        if self.manual is not None:
            labels = apply_manual(labels, self.manual, self.ignore_index)
        for c in range(self.counts.shape[0]):
            self.counts[c] += labels == c
        self.sets += 1

    def mean(self, out: np.ndarray | None = None) -> np.ndarray:
        """counts / sets as float32 (C, X, Y, Z), written into ``out`` when given."""
        return np.divide(self.counts, np.float32(self.sets), out=out, dtype=np.float32)


def mean_one_hot(
    pls: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    num_classes: int,
    manual: np.ndarray | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """A(Y) of all ``pls`` at once (see :class:`MeanMap`)."""
    maps = list(pls.values()) if isinstance(pls, Mapping) else list(pls)
    ay = MeanMap(num_classes, maps[0].shape, manual, ignore_index)
    for pl in maps:
        ay.add(pl)
    return ay.mean()


def _case_done(out_dir: Path, case: str, ending: str, sets: Sequence[str]) -> bool:
    return mean_path(out_dir, case, ending).exists() and all(
        pl_path(out_dir, s, case, ending).exists() for s in sets
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def _write_images(dataset: Dataset, case: str, image, roots: Sequence[Path]) -> None:
    """The channels of ``image`` (a Volume on its own grid) as ROOT/imagesTr/CASE_XXXX files,
    named as in ``dataset``, for each of ``roots``."""
    channels = image.array if image.array.ndim == 4 else image.array[None]
    for root in roots:
        for path, channel in zip(dataset.image_paths(case), channels, strict=True):
            write_nifti(root / "imagesTr" / path.name, image.with_array(channel))


def generate_pseudolabels(
    dataset: Dataset | str | Path,
    out_dir: str | Path,
    preset: Preset,
    *,
    device: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Write the four PL sets and A(Y) of every training case (skipping finished cases).

    Needs the base models in OUT/models (see :func:`train_base_models`). Every case is
    pseudo-labelled on the grid its base models trained on (:func:`training_volumes`): a case
    resampled to ``preset.target_spacing`` has its PL sets and A(Y) on that grid, and its
    resampled image in each PL dataset's imagesTr (the others link the source image). Returns
    the cases.
    """
    from sparseseg.progress import progress_bar

    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out_dir = Path(out_dir)
    ending = dataset.file_ending
    cases = dataset.cases("Tr")
    sets = pl_sets(preset.planes)
    todo = [c for c in cases if not _case_done(out_dir, c, ending, sets)]
    distributed.barrier()  # every rank lists the same cases before any is written
    todo = distributed.shard(todo)  # each rank writes its own share
    if todo:
        from sparseseg.runtime import zscore

        model2d, model3d = load_base_models(out_dir)
        ignore = training_ignore_index(dataset)
        bar = progress and distributed.is_main()
        for case in progress_bar(todo, desc="pseudo-labels", enabled=bar, unit="case"):
            image, label = training_volumes(dataset, case, "Tr", preset.target_spacing)
            if image.source is None:  # resampled: the PL datasets get the image on its grid
                _write_images(dataset, case, image, [pl_dir(out_dir, s) for s in sets])
            image = image.with_array(zscore(image.array))  # the raw array is not kept
            pls, ay = compute_pseudolabels(
                model2d, model3d, image.array, preset, label.array, ignore, device=device
            )
            for name, pl in pls.items():
                write_nifti(pl_path(out_dir, name, case, ending), image.with_array(pl))
            write_nifti(mean_path(out_dir, case, ending), np.moveaxis(ay, 0, -1), like=image)
            del image, label, pls, ay  # not held while the next case is read
    distributed.barrier()

    def write_datasets() -> None:
        for name in sets:
            root = pl_dir(out_dir, name)
            for case in cases:
                for image_path in dataset.image_paths(case):
                    _link_or_copy(image_path, root / "imagesTr" / image_path.name)
            write_dataset_json(
                root,
                dataset.class_labels,
                num_training=len(cases),
                channel_names=dataset.meta.get("channel_names"),
                name=f"{dataset.name}_pl_{name}",
                file_ending=ending,
                description=f"sparseseg pseudo-labels ({name}) of {dataset.name}",
            )

    distributed.run_on_main(write_datasets)
    return cases


def run_step2(
    dataset: Dataset | str | Path,
    out_dir: str | Path,
    preset: Preset,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Train the base models and write the PL sets; return the summary (also OUT/step2.json).

    ``cache_dir``: where the training cases are stored (see :func:`train_base_models`)."""
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    train_base_models(
        dataset,
        out_dir,
        preset,
        resume=resume,
        device=device,
        progress=progress,
        cache_dir=cache_dir,
    )
    t1 = time.perf_counter()
    cases = generate_pseudolabels(dataset, out_dir, preset, device=device, progress=progress)
    summary = _read_summary(out_dir)
    summary["cases"] = cases
    summary["pseudolabel_seconds_last_run"] = round(time.perf_counter() - t1, 1)
    summary["training_seconds_last_run"] = round(t1 - t0, 1)
    distributed.run_on_main(lambda: _write_summary(out_dir, dataset, preset, summary))
    return summary


def pseudolabel(
    dataset: Dataset | str | Path,
    out_dir: str | Path,
    preset: Preset,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    overrides: list[str] | dict | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """:func:`run_step2` into an output folder of its own (``sparseseg pseudolabel``).

    An existing ``out_dir`` is continued only if it was made from the same training split,
    dataset.json and preset (its fingerprint); else InputError, unless ``overwrite`` (then it
    is replaced once the new output is complete; see :mod:`sparseseg.output_folder`). The
    ``auto`` preset is planned inside the folder (``plan.json``, reused by a rerun) from the
    dataset and ``overrides``; the fingerprint records the request, not the measured plan.
    """
    from sparseseg import output_folder
    from sparseseg.fingerprint import dataset_fingerprint, make

    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out_dir = Path(out_dir)
    current = make(dataset_fingerprint(dataset, ("Tr",)), {"preset": plain(preset.to_dict())})
    work = distributed.run_on_main(
        lambda: output_folder.claim(out_dir, current, overwrite=overwrite, what="output folder")
    )
    if preset.name == "auto":
        from sparseseg.planning import plan_preset

        preset = plan_preset(dataset, overrides, device=device, model_dir=work, log=log)
    summary = run_step2(dataset, work, preset, resume=resume, device=device, progress=progress)
    distributed.run_on_main(lambda: remove_cache(work))
    distributed.run_on_main(lambda: output_folder.commit(work, out_dir))
    return summary


def read_pseudolabels(
    out_dir: str | Path, case: str, sets: Sequence[str] = PL_SETS
) -> dict[str, np.ndarray]:
    """``{name: uint8 (X, Y, Z)}`` of one case from OUT, for each PL set in ``sets``."""
    return {name: read_pseudolabel(out_dir, name, case) for name in sets}


def read_pseudolabel(out_dir: str | Path, pl_set: str, case: str) -> np.ndarray:
    """One PL set of one case from OUT, uint8 (X, Y, Z)."""
    path = pl_path(out_dir, pl_set, case)
    if not path.exists():
        path = pl_path(out_dir, pl_set, case, ".nii")
    return read_nifti(path, dtype=np.uint8).array


def read_meta_case(
    out_dir: str | Path, case: str, sets: Sequence[str], image: np.ndarray
) -> dict[str, np.ndarray]:
    """The meta-model's sample of one case: ``{'image': float32 (Cin + C, X, Y, Z), 'targets':
    uint8 (K, X, Y, Z)}``, its z-scored ``image`` (X, Y, Z) or (Cin, X, Y, Z) with A(Y), and the
    K PL ``sets`` read from OUT.

    Built in place: the two arrays are allocated once and filled with one A(Y) channel or one
    PL set at a time, so reading a case takes little more memory than the sample itself."""
    image = np.asarray(image, np.float32)
    image = image if image.ndim == 4 else image[None]
    cin, shape = image.shape[0], image.shape[1:]
    mean_map = _mean_map_image(out_dir, case)
    if tuple(mean_map.shape[:3]) != tuple(shape):  # e.g. pseudo-labels of another target grid
        raise InputError(
            f"A(Y) of case {case!r} has shape {tuple(mean_map.shape[:3])}, its training image "
            f"{tuple(shape)}: the pseudo-labels were made on another grid; make them again",
            mean_path(out_dir, case),
        )
    channels = mean_map.shape[3]
    x = np.empty((cin + channels, *shape), np.float32)
    x[:cin] = image
    read_mean_map(out_dir, case, out=x[cin:])
    targets = np.empty((len(sets), *shape), np.uint8)
    for k, name in enumerate(sets):
        targets[k] = read_pseudolabel(out_dir, name, case)
    return {"image": x, "targets": targets}


def read_mean_map(out_dir: str | Path, case: str, out: np.ndarray | None = None) -> np.ndarray:
    """A(Y) of one case as float32 (C, X, Y, Z) in canonical orientation (stored as (X, Y, Z, C)
    in the source orientation), read one channel at a time into ``out`` when given."""
    from sparseseg.data.orientation import to_canonical

    img = _mean_map_image(out_dir, case)
    for c in range(img.shape[3]):
        data, _, _ = to_canonical(np.asarray(img.dataobj[..., c], dtype=np.float32), img.affine)
        if out is None:
            out = np.empty((img.shape[3], *data.shape), np.float32)
        out[c] = data
    return out


def _mean_map_image(out_dir: str | Path, case: str):
    """The A(Y) NIfTI of a case (nibabel image, data not read)."""
    import nibabel as nib

    path = mean_path(out_dir, case)
    if not path.exists():
        path = mean_path(out_dir, case, ".nii")
    if not path.exists():
        raise InputError("mean pseudo-label map not found", path)
    return nib.load(str(path))


def remove_cache(folder: str | Path) -> None:
    """Delete FOLDER/cache (the case stores), once nothing left to run needs them."""
    from sparseseg.data.store import CACHE_DIR

    shutil.rmtree(Path(folder) / CACHE_DIR, ignore_errors=True)


# Summary --------------------------------------------------------------------------------------
def _read_summary(out_dir: Path) -> dict:
    import json

    path = Path(out_dir) / "step2.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _write_summary(out_dir: Path, dataset: Dataset, preset: Preset, summary: dict) -> None:
    summary.update(
        {
            "dataset": str(dataset.root),
            "class_names": dataset.class_names,
            "ignore_index": training_ignore_index(dataset),
            "pl_sets": list(pl_sets(preset.planes)),
            "preset": preset.to_dict(),
        }
    )
    write_json(Path(out_dir) / "step2.json", summary)
