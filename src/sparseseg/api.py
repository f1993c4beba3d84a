"""The Python API: the CLI's four steps as functions, for notebooks and scripts.

    from sparseseg import api
    sel = api.select("heart", budget=10, out="sel", simulate_from_labels=True)
    api.import_annotations("sel", "painted", "sparse")    # or: slices painted by annotators
    state = api.train("sel/dataset", "model")  # preset auto: planned, 30 minutes on a CPU
    api.predict("model", "sel/dataset/imagesTs", out="pred")
    scores = api.evaluate("pred", "sel/dataset")

Each function takes the same inputs as its command and returns what the command prints, as Python
objects. ``predict`` also takes an array or a :class:`~sparseseg.data.volume.Volume` and then
returns label maps in memory instead of writing files. Bad input raises
:class:`sparseseg.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparseseg.config import DEFAULT_PRESET
from sparseseg.data.volume import Volume

__all__ = ["select", "advise", "import_annotations", "train", "predict", "evaluate"]


def select(
    dataset: str | Path,
    budget: float | None,
    out: str | Path | None = None,
    *,
    strategy: str = "ra",
    planes: str | Sequence[str] = "xy,xz,yz",
    extractor: str = "vgg",
    weights: str | Path | None = None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    simulate_from_labels: bool = False,
    figures: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    feature_cache: str | Path | None = None,
    model: str | Path | None = None,
    total_slices: int | None = None,
    uncertainty_weight: float | None = None,
    uncertainty: str = "disagreement",
    dense_labels: str | Path | None = None,
):
    """Choose the slices to annotate (Step I); like ``sparseseg select``.

    Returns the :class:`sparseseg.selection.Selection` (cases, planes, chosen slices in priority
    order with their gains, annotation cost). With ``out`` it is also written there; with
    ``simulate_from_labels`` ``out/dataset`` holds the true labels on the chosen slices only.
    With ``model`` (``--round``): the next round from the dataset's current sparse labels, by
    ``budget`` or ``total_slices`` (docs/selection.md); ``dense_labels`` then names the dataset
    whose labels simulate the new slices.
    """
    from sparseseg.data.layout import Dataset
    from sparseseg.errors import InputError
    from sparseseg.selection import select_slices, write_selection

    if simulate_from_labels and out is None:
        raise InputError("simulate_from_labels needs an output folder (out=...)")
    ds = Dataset.open(dataset)
    if model is None:
        if total_slices is not None or uncertainty_weight is not None:
            raise InputError("total_slices and uncertainty_weight apply to later rounds (model=)")
        if budget is None:
            raise InputError("a budget is required")
        selection = select_slices(
            ds,
            budget,
            strategy,
            planes,
            extractor,
            weights,
            seed,
            steps=steps,
            image_size=image_size,
            device=device,
            progress=progress,
            feature_cache=feature_cache,
        )
    else:
        if strategy != "ra":
            raise InputError("later rounds choose by coverage and uncertainty (strategy 'ra')")
        from sparseseg.selection.next_round import select_next_round
        from sparseseg.selection.rounds import DEFAULT_WEIGHT

        selection = select_next_round(
            ds,
            model,
            budget,
            total_slices,
            planes,
            DEFAULT_WEIGHT if uncertainty_weight is None else uncertainty_weight,
            uncertainty,
            extractor,
            weights,
            seed,
            steps=steps,
            image_size=image_size,
            device=device,
            progress=progress,
            feature_cache=feature_cache,
        )
    if out is not None:
        write_selection(
            selection,
            out,
            ds,
            overwrite=overwrite,
            simulate_from_labels=simulate_from_labels,
            sheets=figures,
            tsne=figures,
            dense_labels=dense_labels,
        )
    return selection


def advise(dataset: str | Path, out: str | Path, **options) -> dict:
    """Advise an annotation budget; like ``sparseseg advise``. Returns the advice (budget table,
    coverage by slices, the recommended budget and its rule) and writes it to ``out``; options
    as :func:`sparseseg.selection.advisor.advise` (``model=`` for the view after a round)."""
    from sparseseg.selection.advisor import advise as run_advisor

    return run_advisor(dataset, out, **options)


def import_annotations(
    selection: str | Path,
    painted: str | Path,
    out: str | Path,
    *,
    dataset: str | Path | None = None,
    allow_missing: bool = False,
    keep_extra: bool = False,
    overwrite: bool = False,
):
    """Write the sparse training dataset ``out`` from annotators' painted label maps; like
    ``sparseseg annotations``.

    ``selection``: the folder ``select`` wrote; ``painted``: a folder with one painted map per
    case (``CASE.nii.gz``, ``.nii``, ``.nrrd`` or a 3D Slicer ``.seg.nrrd``), 0 where nothing
    was painted; ``dataset``: the dataset the selection was made on (default: the one it
    records). The painted values on the chosen slices (0 there is background) become the
    labels, ``ignore`` elsewhere; images are copied as ``select(simulate_from_labels=True)``
    does. ``allow_missing`` skips cases without a painted file; ``keep_extra`` keeps painted
    voxels off the chosen slices as whole extra slices. Returns an
    :class:`~sparseseg.annotation_import.ImportReport` (``summary()`` and ``warnings()`` give
    the lines the command prints; nothing is printed here).
    """
    from sparseseg.annotation_import import import_annotations as run_import

    return run_import(
        selection,
        painted,
        out,
        dataset=dataset,
        allow_missing=allow_missing,
        keep_extra=keep_extra,
        overwrite=overwrite,
    )


def train(
    dataset: str | Path,
    out: str | Path,
    preset: str = DEFAULT_PRESET,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
    verbose: bool = True,
) -> dict:
    """Steps II and III into the model folder ``out``; like ``sparseseg train``.

    ``preset``: ``auto`` (default: planned from the dataset; its time budget is the override
    ``budget_minutes``, 30 on a CPU by default), ``cpu``, ``cpu-aniso`` or ``paper``.
    ``overrides``: preset fields, e.g. ``{"budget_minutes": 10}``. Finished stages are
    skipped on a rerun into a folder made from the same data and settings (another is refused
    unless ``overwrite``); ``resume`` continues an interrupted one. Returns the pipeline state (the
    content of ``out/pipeline.json``: settings and each stage's status), with the test-split
    scores of every model part under 'report' when the dataset has labelled test cases.
    """
    from sparseseg.pipeline import train as run_pipeline

    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides or [])
    return run_pipeline(
        dataset,
        out,
        preset,
        overrides,
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=progress,
        report=report,
        log=print if verbose else None,
    )


def predict(
    model: str | Path,
    images: str | Path | np.ndarray | Volume,
    out: str | Path | None = None,
    *,
    parts: str | Sequence[str] = ("meta",),
    probabilities: bool = False,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = True,
    quality: bool = True,
    mirror: bool = True,
):
    """Segment images with a trained model folder; like ``sparseseg predict``.

    ``images`` a NIfTI file or folder (written to ``out``; returns ``{case: {part: path}}``), or
    an (X, Y, Z) array or Volume (a model trained at a target spacing needs a Volume, for
    its spacing), (C, X, Y, Z) for a model trained on C channels (returns
    ``{part: Prediction}`` with ``labels`` uint8 (X, Y, Z) and, with ``probabilities``, float32
    (C, X, Y, Z); nothing is written). ``parts``: 'meta'
    (default), base models alone ('3d', 'xy', 'xz', 'yz'), several, or 'all' (the meta-model,
    the 3D model and the 2D model along each plane it was trained on). ``quality``: with files
    and the meta-model, also write the quality flags (``out/quality.json``, ...). ``mirror``:
    test-time mirroring where the model's plan has it (False: 2^n times faster).
    """
    from sparseseg.errors import InputError
    from sparseseg.predict import Predictor, parse_parts, predict_files, trained_parts

    parse_parts(parts)  # a bad list fails before any model is loaded
    if isinstance(images, (np.ndarray, Volume)):
        array = images.array if isinstance(images, Volume) else images
        spacing = images.spacing if isinstance(images, Volume) else None
        predictor = Predictor(model, device=device, precision=precision, mirror=mirror)
        parts = parse_parts(parts, trained_parts(predictor.bundle))
        return predictor.predict(
            np.asarray(array, np.float32), parts, probabilities=probabilities, spacing=spacing
        )
    if out is None:
        raise InputError("predicting files needs an output folder (out=...)", images)
    return predict_files(
        model,
        images,
        out,
        parts=parts,
        probabilities=probabilities,
        device=device,
        precision=precision,
        progress=progress,
        quality=quality,
        mirror=mirror,
    )


def evaluate(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    *,
    classes: Mapping[str, int] | None = None,
    rand_f_interior: int | None = None,
    split: str | None = None,
) -> dict:
    """Score predictions against ground truth; like ``sparseseg evaluate``.

    Returns the metrics dict (per case, and mean/std per class under 'summary'); with ``out`` it
    is also written as JSON.
    """
    from sparseseg.evaluation import evaluate as run_evaluation

    return run_evaluation(
        pred, gt, out=out, classes=classes, rand_f_interior=rand_f_interior, split=split
    )
