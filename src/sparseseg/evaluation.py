"""Score predicted label volumes against ground truth on disk and write the metrics as JSON.

Inputs: PRED is a label NIfTI or a folder of ``CASE.nii.gz``; GT is a label NIfTI, a folder of
label NIfTIs, or a dataset root in the canonical layout (see :mod:`sparseseg.data.layout`).
Cases are matched by name; spacing comes from the ground truth's header. The metrics are those
of :mod:`sparseseg.metrics`.

JSON written (NaN as ``null``)::

    {"pred": str, "gt": str, "split": "Tr" | "Ts" | null,
     "classes": {name: value}, "rand_f_interior": value | null,
     "cases": {CASE: {"pred_file": str, "gt_file": str, "spacing": [sx, sy, sz],
                      "classes": {name: {"dice", "adb", "hausdorff"}}, "hvsmr_score",
                      "rand_f", "rand_split", "rand_merge"   (when rand_f_interior is set)}},
     "summary": {"num_cases": n,
                 "classes": {name: {"dice" | "adb" | "hausdorff": {"mean", "std", "n", "n_nan"}}},
                 "hvsmr_score": {...}, "rand_f": {...}, "rand_split": {...}, "rand_merge": {...}},
     "unmatched_predictions": [CASE, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from sparseseg import metrics
from sparseseg.data.io import is_nifti, read_nifti, strip_nifti_suffix
from sparseseg.data.layout import SPLITS, Dataset, check_label_values
from sparseseg.data.orientation import canonical_geometry
from sparseseg.data.volume import spacing_from_affine
from sparseseg.errors import InputError
from sparseseg.fileio import write_json

RAND_F_LABELS = ("membrane", "interior")


def parse_classes(text: str) -> dict[str, int]:
    """'myocardium=1,blood_pool=2' -> {'myocardium': 1, 'blood_pool': 2}."""
    classes: dict[str, int] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = int(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise InputError(f"--classes: expected name=integer, got {item!r}")
        if name in classes:
            raise InputError(f"--classes: class {name!r} given twice")
        classes[name] = number
    if not classes:
        raise InputError("--classes: no classes given")
    return classes


def _nifti_files(folder: Path, what: str) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p.name))
    if not files:
        raise InputError(f"no {what} NIfTI files (.nii, .nii.gz) in folder", folder)
    out: dict[str, Path] = {}
    for path in files:
        out.setdefault(strip_nifti_suffix(path.name), path)
    return out


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (3D) and affine of a NIfTI file without reading its voxels, in the closest
    canonical orientation in which the voxels are read (so files that store the same grid in
    other axis orders compare equal)."""
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read NIfTI ({type(exc).__name__}: {exc})", path) from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"expected a 3D label volume, got shape {shape}", path)
    return canonical_geometry(shape, affine)


class _GroundTruth:
    """The ground-truth cases and what the source declares about them."""

    def __init__(self, gt: Path, split: str | None):
        self.dataset: Dataset | None = None
        self.split: str | None = None
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not gt.exists():
            raise InputError("ground truth not found", gt)
        if gt.is_dir() and (gt / "dataset.json").exists():
            self.dataset = Dataset.open(gt)
            self.split = split or self._default_split(gt)
            folder = gt / f"labels{self.split}"
            if not folder.is_dir():
                raise InputError(f"dataset has no labels{self.split} folder", gt)
            ending = self.dataset.file_ending
            files = sorted(p for p in folder.iterdir() if p.name.endswith(ending))
            if not files:
                raise InputError(f"no label files ending in {ending}", folder)
            self.cases = {p.name[: -len(ending)]: p for p in files}
            return
        if split is not None:
            raise InputError("--split applies only when GT is a dataset folder", gt)
        if gt.is_dir():
            self.cases = _nifti_files(gt, "ground-truth")
        elif is_nifti(gt.name):
            self.cases = {strip_nifti_suffix(gt.name): gt}
        else:
            raise InputError("ground truth must be a NIfTI file, a folder or a dataset", gt)

    @staticmethod
    def _default_split(root: Path) -> str:
        ts = root / "labelsTs"
        return "Ts" if ts.is_dir() and any(ts.iterdir()) else "Tr"

    def default_classes(self) -> dict[str, int] | None:
        """Foreground classes declared by the dataset (every class but value 0)."""
        if self.dataset is None:
            return None
        return {k: v for k, v in self.dataset.class_labels.items() if v != 0}

    def default_interior(self) -> int | None:
        if self.dataset is not None and all(n in self.dataset.labels for n in RAND_F_LABELS):
            return int(self.dataset.labels["interior"])
        return None


def _match(pred: Path, gt: _GroundTruth) -> tuple[dict[str, Path], list[str]]:
    """Prediction file per ground-truth case, and the predictions that match no case."""
    if not pred.exists():
        raise InputError("prediction not found", pred)
    if pred.is_dir():
        preds = _nifti_files(pred, "prediction")
    elif is_nifti(pred.name):
        if len(gt.cases) == 1:  # one file against one file: names need not agree
            preds = {next(iter(gt.cases)): pred}
        else:
            preds = {strip_nifti_suffix(pred.name): pred}
    else:
        raise InputError("prediction must be a NIfTI file or a folder of them", pred)
    matched = {}
    for case in gt.cases:
        if case not in preds:
            where = pred / f"{case}.nii.gz" if pred.is_dir() else pred
            problem = f"missing prediction for ground-truth case {case!r}"
            if gt.split is not None:
                problem += f" of labels{gt.split} (--split chooses the dataset's split)"
            raise InputError(problem, where)
        matched[case] = preds[case]
    return matched, sorted(set(preds) - set(gt.cases))


def _check_geometry(pred_path: Path, gt_path: Path) -> None:
    p_shape, p_affine = _header(pred_path)
    g_shape, g_affine = _header(gt_path)
    if p_shape != g_shape:
        raise InputError(
            f"shape {p_shape} differs from the ground truth's {g_shape} ({gt_path})", pred_path
        )
    tolerance = 1e-3 * min(spacing_from_affine(g_affine))  # relative: EM voxels are nm-sized
    if not np.allclose(p_affine, g_affine, atol=tolerance, rtol=1e-4):
        raise InputError(f"affine differs from the ground truth's ({gt_path})", pred_path)


def _read_labels(path: Path) -> np.ndarray:
    return read_nifti(path, dtype=np.int32).array


def evaluate(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    classes: Mapping[str, int] | None = None,
    rand_f_interior: int | None = None,
    split: str | None = None,
) -> dict:
    """Score every ground-truth case against its prediction; write JSON to ``out`` if given.

    ``classes`` maps class names to label values to score; by default the dataset's classes
    except value 0, or (plain files and folders) every nonzero value found in GT or PRED, named
    by its value. ``rand_f_interior`` is the interior label for the EM Rand F-score; a dataset
    that declares ``membrane`` and ``interior`` labels sets it. ``split`` ('Tr' or 'Ts') picks
    the dataset's label folder (default: labelsTs if it has files, else labelsTr). Returns the
    JSON-ready dict described in the module docstring (NaN as None). Raises InputError, having
    written nothing, for a missing prediction, a shape or affine mismatch, unreadable files or
    undeclared label values.
    """
    pred, gt = Path(pred), Path(gt)
    truth = _GroundTruth(gt, split)
    pairs, unmatched = _match(pred, truth)
    for case, gt_path in truth.cases.items():
        _check_geometry(pairs[case], gt_path)

    declared = truth.dataset.labels if truth.dataset is not None else None
    if classes is None:
        classes = truth.default_classes()
    if classes is None:
        values: set[int] = set()
        for case, gt_path in truth.cases.items():
            values |= set(np.unique(_read_labels(gt_path)).tolist())
            values |= set(np.unique(_read_labels(pairs[case])).tolist())
        classes = {str(v): int(v) for v in sorted(values - {0})}
    classes = {str(k): int(v) for k, v in classes.items()}
    if not classes:
        raise InputError("no foreground classes to score (all labels are 0)", gt)
    if rand_f_interior is None:
        rand_f_interior = truth.default_interior()

    cases: dict[str, dict] = {}
    for case, gt_path in truth.cases.items():
        gt_vol = read_nifti(gt_path, dtype=np.int32)
        pred_labels = _read_labels(pairs[case])
        if declared is not None:
            check_label_values(gt_vol.array, declared.values(), gt_path)
            ignore = truth.dataset.ignore_value
            if ignore is not None and (gt_vol.array == ignore).any():
                raise InputError(
                    "ground truth holds ignore-label voxels; evaluation needs dense labels",
                    gt_path,
                )
            check_label_values(pred_labels, truth.dataset.class_labels.values(), pairs[case])
        spacing = spacing_from_affine(gt_vol.affine)
        result = metrics.case_metrics(pred_labels, gt_vol.array, spacing, classes, rand_f_interior)
        cases[case] = {
            "pred_file": str(pairs[case]),
            "gt_file": str(gt_path),
            "spacing": list(spacing),
            **result,
        }

    report = {
        "pred": str(pred),
        "gt": str(gt),
        "split": truth.split,
        "classes": classes,
        "rand_f_interior": rand_f_interior,
        "cases": cases,
        "summary": metrics.summarize(list(cases.values())),
        "unmatched_predictions": unmatched,
    }
    report = metrics.json_safe(report)
    if out is not None:
        write_json(out, report)
    return report


def _fmt(stats: Mapping, digits: int, kind: str = "f") -> str:
    if stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}{kind}}±{stats['std']:.{digits}{kind}}"
    return text + (f" ({stats['n_nan']} undefined)" if stats["n_nan"] else "")


def format_summary(report: Mapping) -> str:
    """A compact text table of the per-class mean±std over cases in an :func:`evaluate` report."""
    summary = report["summary"]
    width = max([len("class")] + [len(n) for n in summary["classes"]]) + 2
    lines = [f"{'class':<{width}}{'Dice':<22}{'ADB (mm)':<22}Hausdorff (mm)"]
    for name, m in summary["classes"].items():
        lines.append(
            f"{name:<{width}}{_fmt(m['dice'], 3):<22}{_fmt(m['adb'], 3, 'g'):<22}"
            f"{_fmt(m['hausdorff'], 3, 'g')}"
        )
    lines.append(f"HVSMR overall score: {_fmt(summary['hvsmr_score'], 3)}")
    if "rand_f" in summary:
        lines.append(f"Rand F-score: {_fmt(summary['rand_f'], 4)}")
    lines.append(f"cases: {summary['num_cases']}")
    return "\n".join(lines)
