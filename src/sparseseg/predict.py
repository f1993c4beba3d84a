"""Segment new volumes with a trained bundle: base models -> A(Y) -> meta-model.

For one image (X, Y, Z), or (C, X, Y, Z) for a model trained on C channels: z-score it (per
channel); run the 2D base model over every slice of the xy, xz and yz
planes and the 3D base model by sliding window, turning each prediction into hard labels at once
and adding its one-hot encoding to a running count (uint8, C x X x Y x Z), so at most one
C-channel float volume is alive at a time; A(Y) = count / 4 (the number of PL sets), by the same
builder as the pseudo-label mean of training (:class:`sparseseg.pseudolabels.MeanMap`; training
matches it exactly with ``meta.ay_manual=false``, else the manual labels enter training's A(Y));
then the meta-model by Gaussian-weighted sliding window on (image, A(Y)). Memory grows with
the volume's size times a small constant, not with the networks: a 300 x 512 x 512 volume
with C = 3 and the cpu preset's networks peaked at 3.1 GiB resident (about 43 bytes per voxel,
the interpreter and libraries included; tests/test_predict.py, slow test). The quality flags
(below) keep the base models' labels and the meta-model's probabilities until the case is
written: in that test 3.54 GiB peak with them, 3.24 GiB with ``quality=False``, the same run.

Parts: 'meta' (the method's prediction), and each base model alone: '3d', and the 2D model on one
plane, 'xy', 'xz' or 'yz'. With 'meta' every base model runs anyway, so asking for the base parts
too costs nothing extra; without it only the requested base models run.

Outputs (:func:`predict_files`): ``OUT/CASE.nii.gz`` label maps (uint8) with the source affine,
or ``OUT/PART/CASE.nii.gz`` for several parts; with probabilities also
``.../probabilities/CASE.nii.gz`` (float32 X, Y, Z, C). CASE is the file name without the NIfTI
suffix and without nnU-Net's ``_XXXX`` channel suffix, so ``sparseseg evaluate`` matches it to
``labelsTs/CASE.nii.gz``. In a folder the files ``CASE_0000``, ``CASE_0001``, ... are the channels
of one case (nnU-Net's naming); a model trained on C channels needs all C of every case. Outputs
are written in each input's own orientation, with its affine and header geometry, on its own
grid: a model trained at a target spacing (``target_spacing`` of its preset) predicts an input
whose grid differs there and brings each part's probabilities back to the input's shape (linear)
before the argmax. With the
meta-model, quality flags (:mod:`sparseseg.quality`): ``OUT/quality/CASE.json`` per case, and the
cases and slices to check first, ranked, in ``OUT/quality.json``, ``OUT/quality_cases.csv`` and
``OUT/quality_slices.csv``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseseg.bundle import Bundle, load_bundle
from sparseseg.data.io import is_nifti, strip_nifti_suffix, write_nifti
from sparseseg.data.layout import read_channels
from sparseseg.data.planes import PL_SETS, PLANES
from sparseseg.errors import InputError
from sparseseg.fileio import write_json

PARTS = ("meta", "3d", *PLANES)


@dataclass
class Prediction:
    """Hard labels (X, Y, Z) uint8 and, on request, probabilities (C, X, Y, Z) float32."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def parse_parts(text: str | Sequence[str], all_parts: Sequence[str] = PARTS) -> tuple[str, ...]:
    """'meta,3d' -> ('meta', '3d'), 'all' -> ``all_parts``; validated, in canonical order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [p.strip().lower() for p in items if p.strip()]
    if "all" in items:
        return tuple(all_parts)
    bad = [p for p in items if p not in PARTS]
    if bad or not items:
        raise InputError(f"parts must be 'all' or a subset of {','.join(PARTS)}, got {text!r}")
    return tuple(p for p in PARTS if p in items)


def runs_needed(parts: Sequence[str], pl_sets: Sequence[str] = PL_SETS) -> tuple[str, ...]:
    """The model runs that ``parts`` need, in order: planes of the 2D model, '3d', 'meta'
    (which needs every PL set of ``pl_sets``)."""
    needed = set(parts) | (set(pl_sets) if "meta" in parts else set())
    return tuple(p for p in (*PL_SETS, "meta") if p in needed)


def parts_for_planes(planes: Sequence[str]) -> tuple[str, ...]:
    """'meta', '3d' and the 2D model's ``planes``, in canonical order."""
    return tuple(p for p in PARTS if p in ("meta", "3d", *planes))


def trained_parts(model: str | Path | Bundle) -> tuple[str, ...]:
    """The parts a bundle was trained to give: 'meta', '3d' and the 2D model's planes."""
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    return parts_for_planes(bundle.planes)


class Predictor:
    """A bundle's three networks, built once, applied to volumes."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        *,
        device: str | None = None,
        precision: str = "auto",
        mirror: bool = True,
    ):
        """``mirror``: test-time mirroring of the 3D networks along the bundle's
        ``inference.mirror_axes`` (False: one pass each, 2^n times faster)."""
        from sparseseg.config import preset_from_dict
        from sparseseg.runtime import resolve_device

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.device = resolve_device(device)
        self.precision = precision
        try:
            self.preset = preset_from_dict(self.bundle.config)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bundle config is invalid ({exc})", self.bundle.source) from None
        self.num_classes = self.bundle.num_classes
        self.num_channels = self.bundle.num_channels
        self.pl_sets = tuple(self.bundle.pl_sets)
        self.mirror_axes = tuple(self.preset.inference.mirror_axes) if mirror else ()
        self._models: dict = {}

    def model(self, part: str):
        if part not in self._models:
            self._models[part] = self.bundle.build(part).to(self.device)
        return self._models[part]

    @property
    def target_spacing(self) -> tuple[float, ...] | None:
        """The spacing (mm) the models were trained at; None: each case's own grid."""
        return self.preset.target_spacing

    def grid(self, shape: Sequence[int], spacing: Sequence[float] | None) -> tuple[int, ...]:
        """The spatial shape an image of ``shape`` at ``spacing`` is predicted at: resampled to
        the target spacing, or ``shape`` itself (no target, or no change)."""
        from sparseseg.data.resample import resampled_shape

        shape = tuple(int(n) for n in shape)
        if self.target_spacing is None:
            return shape
        if spacing is None:
            raise InputError(
                f"the model works at {'x'.join(f'{s:g}' for s in self.target_spacing)} mm: "
                "give the image's spacing (or predict a NIfTI file)",
                self.bundle.source,
            )
        return resampled_shape(shape, spacing, self.target_spacing)

    def predict(
        self,
        image: np.ndarray,
        parts: Sequence[str] = ("meta",),
        *,
        probabilities: bool | Sequence[str] = False,
        step: Callable[[str], None] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, Prediction]:
        """Predict ``parts`` for one raw image (X, Y, Z), or (C, X, Y, Z) with the model's C
        channels; ``step(name)`` is called after each model run (for progress bars).
        ``probabilities``: True for every part, or the parts whose probabilities to keep.

        ``spacing`` (mm), needed by a model with a target spacing: an image whose grid differs
        is resampled there (cubic), every model runs on that grid (A(Y) included), and each
        part's probabilities go back to the image's shape (linear) before the argmax, so
        labels and probabilities are always on the image's own grid."""
        from sparseseg.data.resample import resample_image, resample_probabilities
        from sparseseg.inference import (
            argmax_uint8,
            predict_meta,
            predict_planes_2d,
            predict_volume_3d,
        )
        from sparseseg.pseudolabels import MeanMap
        from sparseseg.runtime import zscore

        inf = self.preset.inference
        tick = step or (lambda _name: None)
        image = np.asarray(image)
        cin = self.num_channels
        if image.ndim == 4 and image.shape[0] == 1 == cin:
            image = image[0]
        if image.ndim != 3 + (cin > 1) or (cin > 1 and image.shape[0] != cin):
            expected = "(X, Y, Z)" if cin == 1 else f"({cin}, X, Y, Z)"
            raise InputError(
                f"the model was trained on {cin} channel(s): expected an image {expected}, "
                f"got shape {image.shape}"
            )
        own = tuple(image.shape[-3:])
        grid = self.grid(own, spacing)
        resampled = grid != own
        x = zscore(resample_image(image, grid) if resampled else image)

        def prediction(labels: np.ndarray, probs: np.ndarray | None, keep: bool) -> Prediction:
            """A part's result on the image's own grid (``probs`` always given if resampled)."""
            if resampled:
                probs = resample_probabilities(probs, own)
                labels = argmax_uint8(probs)
            return Prediction(labels, probs if keep else None)

        c = self.num_classes
        ay = MeanMap(c, x.shape[-3:])
        out: dict[str, Prediction] = {}
        common = dict(device=self.device, precision=self.precision)
        runs = runs_needed(parts, self.pl_sets)
        with_probs = set(parts) if probabilities is True else set(probabilities or ()) & set(parts)
        for plane in [p for p in runs if p in PLANES]:
            keep_probs = plane in with_probs or (resampled and plane in parts)
            result = predict_planes_2d(
                self.model("2d"),
                x,
                (plane,),
                patch=self.preset.train2d.patch,
                overlap=inf.overlap,
                batch_size=inf.slice_batch_size,
                labels_only=not keep_probs,
                context=self.preset.model2d.context,
                **common,
            )[plane]
            labels = argmax_uint8(result) if keep_probs else result
            if plane in self.pl_sets:
                ay.add(labels)
            if plane in parts:
                out[plane] = prediction(labels, result if keep_probs else None, plane in with_probs)
            del result, labels
            tick(plane)
        if "3d" in runs:
            probs = predict_volume_3d(
                self.model("3d"),
                x,
                inf.patch,
                inf.overlap,
                sw_batch_size=inf.sw_batch_size,
                mirror_axes=self.mirror_axes,
                **common,
            )
            labels = argmax_uint8(probs)
            ay.add(labels)
            if "3d" in parts:
                out["3d"] = prediction(labels, probs, "3d" in with_probs)
            del probs, labels
            tick("3d")
        if "meta" in parts:
            inputs = np.empty((cin + c, *x.shape[-3:]), dtype=np.float32)
            inputs[:cin] = x.reshape(cin, *x.shape[-3:])
            del x
            ay.mean(out=inputs[cin:])
            del ay
            probs = predict_meta(
                self.model("meta"),
                inputs,
                inf,
                self.preset.meta.plane,
                self.preset.meta.train.patch,
                mirror_axes=self.mirror_axes,
                **common,
            )
            del inputs
            out["meta"] = prediction(argmax_uint8(probs), probs, "meta" in with_probs)
            del probs
            tick("meta")
        return {p: out[p] for p in PARTS if p in out}


def split_channel(path: str | Path) -> tuple[str, int | None]:
    """'imagesTs/heart_012_0001.nii.gz' -> ('heart_012', 1); a name without nnU-Net's four-digit
    channel suffix -> (name, None)."""
    name = strip_nifti_suffix(Path(path).name)
    match = re.fullmatch(r"(.+)_(\d{4})", name)
    return (match[1], int(match[2])) if match else (name, None)


def case_name(path: str | Path) -> str:
    """'imagesTs/heart_012_0000.nii.gz' -> 'heart_012'."""
    return split_channel(path)[0]


def group_channels(files: Sequence[Path], channels: int) -> dict[str, list[Path]]:
    """``{case: [channel 0 file, channel 1 file, ...]}`` from NIfTI ``files`` named CASE_XXXX.

    A file without a channel suffix is a one-channel case. InputError (naming the file) for a
    missing or unexpected channel, as the model reads exactly ``channels`` channels.
    """
    groups: dict[str, dict[int | None, Path]] = {}
    for file in files:
        case, channel = split_channel(file)
        if channel in groups.setdefault(case, {}):
            raise InputError(
                f"several images map to case {case!r}, channel {channel}: "
                f"{groups[case][channel].name} and {file.name}",
                file,
            )
        groups[case][channel] = file
    out = {}
    for case, found in groups.items():
        first = next(iter(found.values()))
        if None in found:
            if len(found) > 1 or channels > 1:
                raise InputError(
                    f"the model reads {channels} channel(s), named CASE_0000, CASE_0001, ...; "
                    "this file has no channel suffix",
                    found[None],
                )
            out[case] = [found[None]]
            continue
        extra = sorted(c for c in found if c >= channels)
        if extra:
            raise InputError(
                f"channel {extra[0]} of case {case!r}, but the model reads {channels} channel(s)",
                found[extra[0]],
            )
        missing = [c for c in range(channels) if c not in found]
        if missing:
            name = f"{case}_{missing[0]:04d}{_nifti_suffix(first)}"
            raise InputError(
                f"channel file missing: the model reads {channels} channels, {name} not found",
                first.parent / name,
            )
        out[case] = [found[c] for c in range(channels)]
    return out


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def list_inputs(input_path: str | Path) -> list[Path]:
    """A NIfTI file, or the NIfTI files of a folder (sorted); InputError if there are none."""
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p.name))
        if not files:
            raise InputError("no NIfTI images (.nii, .nii.gz) in folder", path)
        return files
    if not path.exists():
        raise InputError("input not found", path)
    if not is_nifti(path.name):
        raise InputError("input must be a NIfTI image (.nii, .nii.gz) or a folder of them", path)
    return [path]


def output_paths(out_dir: Path, case: str, part: str, several: bool) -> tuple[Path, Path]:
    """(label map, probabilities) paths of one case and part."""
    base = out_dir / part if several else out_dir
    return base / f"{case}.nii.gz", base / "probabilities" / f"{case}.nii.gz"


def predict_files(
    model: str | Path | Bundle,
    input_path: str | Path,
    out_dir: str | Path,
    *,
    parts: str | Sequence[str] = ("meta",),
    probabilities: bool = False,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = True,
    overwrite: bool = True,
    quality: bool = True,
    mirror: bool = True,
) -> dict[str, dict[str, Path]]:
    """Predict every input image and write label maps (and probabilities); return
    ``{case: {part: label path}}``. With ``quality`` and the meta-model among ``parts``, also
    the quality flags (module docstring).

    Inputs are never modified; every output is written atomically with the source affine. With
    ``overwrite=False`` cases whose outputs all exist are skipped. Under torchrun the images are
    split across ranks (each output written once) and every rank returns the whole map.
    """
    from sparseseg import distributed
    from sparseseg.progress import progress_bar

    predictor = Predictor(model, device=device, precision=precision, mirror=mirror)
    path = Path(input_path)
    listed = list_inputs(path)
    if not path.is_dir() and predictor.num_channels > 1:  # one file: its sibling channels too
        case = case_name(path)
        listed = sorted(p for p in list_inputs(path.parent) if case_name(p) == case)
    groups = group_channels(listed, predictor.num_channels)
    all_cases = list(groups)
    cases = distributed.shard(all_cases)
    parts = parse_parts(parts, trained_parts(predictor.bundle))
    out_dir = Path(out_dir)
    several = len(parts) > 1
    quality = quality and "meta" in parts
    # The quality flags need every PL set's labels and the meta-model's probabilities; the
    # meta-model runs the PL sets anyway, so this costs no extra model run.
    run_parts = parse_parts([*parts, *predictor.pl_sets]) if quality else parts
    keep_probs = (*(parts if probabilities else ()), *(("meta",) if quality else ()))
    runs_per_case = len(runs_needed(parts, predictor.pl_sets))
    written: dict[str, dict[str, Path]] = {}
    bar = progress_bar(
        total=len(cases) * runs_per_case,
        desc="predict",
        unit="model",
        enabled=progress and distributed.is_main(),
    )
    try:
        for case in cases:
            targets = {p: output_paths(out_dir, case, p, several) for p in parts}
            if not overwrite and all(
                t[0].exists() and (t[1].exists() or not probabilities) for t in targets.values()
            ):
                written[case] = {p: t[0] for p, t in targets.items()}
                bar.update(runs_per_case)
                continue
            bar.set_postfix(case=case, refresh=False)
            volume = read_channels(groups[case])
            result = predictor.predict(
                volume.array,
                run_parts,
                probabilities=keep_probs,
                step=lambda _n: bar.update(1),
                spacing=volume.spacing,
            )
            if quality:
                write_json(quality_path(out_dir, case), case_record(predictor, result))
            for part, pred in result.items():
                if part not in parts:
                    continue
                label_path, prob_path = targets[part]
                write_nifti(label_path, pred.labels, like=volume)
                if probabilities and pred.probabilities is not None:
                    write_nifti(prob_path, np.moveaxis(pred.probabilities, 0, -1), like=volume)
            written[case] = {p: t[0] for p, t in targets.items()}
            del result, volume
    finally:
        bar.close()
    if distributed.world_size() > 1:
        merged = {k: v for part in distributed.all_gather_object(written) for k, v in part.items()}
        written = {case: merged[case] for case in all_cases}
    if quality and distributed.is_main():
        write_quality_summary(out_dir, list(written))
    return written


def quality_path(out_dir: Path, case: str) -> Path:
    """The quality record of one case."""
    return out_dir / "quality" / f"{case}.json"


def case_record(predictor: Predictor, result: dict[str, Prediction]) -> dict:
    """The quality record of one case from a prediction with every PL set and the meta-model's
    probabilities."""
    from sparseseg.quality import case_quality
    from sparseseg.uncertainty import vote_counts

    sets = predictor.pl_sets
    votes = vote_counts([result[p].labels for p in sets], predictor.num_classes)
    meta = result["meta"]
    return case_quality(meta.labels, meta.probabilities, votes, len(sets), predictor.bundle.planes)


def write_quality_summary(out_dir: Path, cases: Sequence[str]) -> None:
    """Rank the cases' quality records: OUT/quality.json, quality_cases.csv, quality_slices.csv."""
    import json

    from sparseseg.quality import RULE, rank_cases, rank_slices
    from sparseseg.report import write_rows

    # Cases skipped as already predicted (overwrite=False) may have no record: left out.
    paths = {c: quality_path(out_dir, c) for c in cases}
    records = {c: json.loads(p.read_text()) for c, p in paths.items() if p.exists()}
    ranked, slices = rank_cases(records), rank_slices(records)
    write_json(out_dir / "quality.json", {"rule": RULE, "cases": ranked, "slices": slices})
    keys = ["rank", "case", "score", "disagreement", "entropy", "foreground_voxels"]
    write_rows(out_dir / "quality_cases.csv", ranked, keys)
    write_rows(out_dir / "quality_slices.csv", slices, ["rank", "case", "plane", "index", "mass"])
