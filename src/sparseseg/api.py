"""The Python API: the CLI's four steps as functions, for notebooks and scripts.

    from sparseseg import api
    sel = api.select("heart", budget=10, out="sel", simulate_from_labels=True)
    state = api.train("sel/dataset", "model")
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

from sparseseg.data.volume import Volume

__all__ = ["select", "train", "predict", "evaluate"]


def select(
    dataset: str | Path,
    budget: float,
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
):
    """Choose the slices to annotate (Step I); like ``sparseseg select``.

    Returns the :class:`sparseseg.selection.Selection` (cases, planes, chosen slices in priority
    order with their gains, annotation cost). With ``out`` it is also written there; with
    ``simulate_from_labels`` ``out/dataset`` holds the true labels on the chosen slices only.
    """
    from sparseseg.data.layout import Dataset
    from sparseseg.errors import InputError
    from sparseseg.selection import select_slices, write_selection

    if simulate_from_labels and out is None:
        raise InputError("simulate_from_labels needs an output folder (out=...)")
    ds = Dataset.open(dataset)
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
    if out is not None:
        write_selection(
            selection,
            out,
            ds,
            overwrite=overwrite,
            simulate_from_labels=simulate_from_labels,
            sheets=figures,
            tsne=figures,
        )
    return selection


def train(
    dataset: str | Path,
    out: str | Path,
    preset: str = "auto",
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
    verbose: bool = True,
) -> dict:
    """Steps II and III into the model folder ``out``; like ``sparseseg train``.

    ``overrides``: preset fields, e.g. ``{"meta.stage1_iterations": 200}``. Finished stages are
    skipped on a rerun; ``resume`` continues an interrupted one. Returns the pipeline state (the
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
):
    """Segment images with a trained model folder; like ``sparseseg predict``.

    ``images`` a NIfTI file or folder (written to ``out``; returns ``{case: {part: path}}``), or
    an (X, Y, Z) array or Volume (returns ``{part: Prediction}`` with ``labels`` uint8 (X, Y, Z)
    and, with ``probabilities``, float32 (C, X, Y, Z); nothing is written). ``parts``: 'meta'
    (default), base models alone ('3d', 'xy', 'xz', 'yz'), several, or 'all' (the meta-model,
    the 3D model and the 2D model along each plane it was trained on).
    """
    from sparseseg.errors import InputError
    from sparseseg.predict import Predictor, parse_parts, predict_files, trained_parts

    parse_parts(parts)  # a bad list fails before any model is loaded
    if isinstance(images, (np.ndarray, Volume)):
        array = images.array if isinstance(images, Volume) else images
        predictor = Predictor(model, device=device, precision=precision)
        parts = parse_parts(parts, trained_parts(predictor.bundle))
        return predictor.predict(np.asarray(array, np.float32), parts, probabilities=probabilities)
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
