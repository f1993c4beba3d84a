"""The next annotation round on a dataset: its current sparse labels plus a trained model.

:func:`model_uncertainty` runs the model's parts on a volume in memory and returns a voxel
uncertainty map; :func:`select_round_volumes` chooses on arrays; :func:`select_next_round` on a
canonical dataset whose ``labelsTr`` hold the labels so far (``ignore`` elsewhere) and a model
folder from ``sparseseg train``. The scoring is in :mod:`sparseseg.selection.rounds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseseg.data.planes import PLANES, num_slices, parse_planes
from sparseseg.errors import InputError
from sparseseg.selection.rounds import (
    DEFAULT_WEIGHT,
    allocate,
    annotated_slices,
    round_indices,
    volume_uncertainty,
)
from sparseseg.selection.selector import (
    CaseSelection,
    PlaneChoice,
    Selection,
    slice_features,
)
from sparseseg.selection.strategies import budget_count, check_budget
from sparseseg.selection.volumes import check_volume_content, dataset_volume
from sparseseg.uncertainty import DEFAULT_KIND, KINDS, slice_means, vote_counts, voxel_uncertainty

ALLOCATION_RULE = (
    "one new slice per plane per volume where possible, the rest one at a time to the volume "
    "furthest below its share total * u_v / sum(u) (u_v: mean uncertainty of its unannotated "
    "voxels), within it to the plane with the fewest new slices per slice"
)


def model_uncertainty(
    predictor, image: np.ndarray, kind: str = DEFAULT_KIND, spacing=None
) -> np.ndarray:
    """Voxel uncertainty (X, Y, Z) float32 in [0, 1] of a model (a
    :class:`~sparseseg.predict.Predictor`) on ``image`` (X, Y, Z) at ``spacing`` (mm; needed by
    a model with a target spacing); ``kind`` as in :mod:`sparseseg.uncertainty`. Only the parts
    that ``kind`` needs are run."""
    if kind not in KINDS:
        raise InputError(f"unknown uncertainty {kind!r}; choose one of {', '.join(KINDS)}")
    sets = tuple(predictor.pl_sets)
    if kind == "meta-entropy":
        out = predictor.predict(image, ("meta",), probabilities=("meta",), spacing=spacing)
        return voxel_uncertainty(kind, meta_probs=out["meta"].probabilities)
    out = predictor.predict(image, sets, spacing=spacing)
    votes = vote_counts([out[p].labels for p in sets], predictor.num_classes)
    return voxel_uncertainty(kind, votes, len(sets))


def select_round_volumes(
    volumes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    uncertainty: Sequence[np.ndarray],
    ignore_value: int | None,
    budget: float | None = None,
    total: int | None = None,
    planes: Sequence[str] | str = PLANES,
    weight: float = DEFAULT_WEIGHT,
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    feature_cache: str | Path | None = None,
    round_number: int = 2,
) -> Selection:
    """The next slices for volumes (X, Y, Z) with current ``labels`` (X, Y, Z; ``ignore_value``
    where unannotated) and voxel ``uncertainty`` maps (X, Y, Z) in [0, 1].

    Exactly one of ``budget`` (s_k: K = max(1, floor(N / k)) new slices per plane per volume, at
    most the unannotated ones) or ``total`` (new slices in all, shared by
    :func:`~sparseseg.selection.rounds.allocate`). ``weight``: w of the score, in [0, 1].
    Volumes may be :class:`~sparseseg.selection.volumes.LazyVolume`, read one at a time.
    """
    planes = _check_round_options(planes, budget, total, weight)
    if not len(volumes) == len(labels) == len(names) == len(uncertainty) or not volumes:
        raise InputError("need one label map, name and uncertainty map per volume")
    summaries = [
        round_case(vol, lab, unc, name, planes, ignore_value)
        for vol, lab, unc, name in zip(volumes, labels, uncertainty, names, strict=True)
    ]
    options = dict(
        extractor=extractor, weights=weights, steps=steps, image_size=image_size, device=device,
        progress=progress, feature_cache=feature_cache,
    )  # fmt: skip
    return _select_round(
        volumes, names, summaries, budget, total, planes, weight, seed, round_number, options
    )


@dataclass
class RoundCase:
    """What a round needs of one case besides its slice features: its ``shape`` (X, Y, Z); per
    plane the ``annotated`` slices (S0) and the mean ``slice_uncertainty`` (N,); the mean
    ``uncertainty`` of its unannotated voxels."""

    shape: tuple[int, int, int]
    annotated: dict[str, np.ndarray]
    slice_uncertainty: dict[str, np.ndarray]
    uncertainty: float


def round_case(volume, label, uncertainty, name, planes, ignore_value) -> RoundCase:
    """The :class:`RoundCase` of a volume (X, Y, Z; an array or lazy), its label and voxel
    uncertainty (X, Y, Z); InputError for a bad volume or shapes that differ."""
    if np.ndim(volume) != 3:
        raise InputError(f"expected a 3D volume, got shape {np.shape(volume)}", name)
    check_volume_content(np.asarray(volume), name)
    shape = tuple(int(s) for s in np.shape(volume))
    if np.shape(label) != shape or np.shape(uncertainty) != shape:
        raise InputError("label, uncertainty and image shapes differ", name)
    return RoundCase(
        shape,
        {p: annotated_slices(label, ignore_value, p) for p in planes},
        {p: slice_means(uncertainty, p) for p in planes},
        volume_uncertainty(uncertainty, label, ignore_value),
    )


def _check_round_options(planes, budget, total, weight) -> tuple[str, ...]:
    try:
        planes = parse_planes(planes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if (budget is None) == (total is None):
        raise InputError("give either a budget s_k or a total number of new slices, not both")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"uncertainty weight must be in [0, 1], got {weight:g}")
    return planes


def _select_round(
    volumes, names, summaries: Sequence[RoundCase], budget, total, planes, weight, seed,
    round_number: int, options: dict,
) -> Selection:  # fmt: skip
    """:func:`select_round_volumes` on checked options and the cases' summaries; ``options``:
    the keyword arguments of :func:`~sparseseg.selection.selector.slice_features` beyond
    volumes, planes and seed."""
    sizes = np.asarray([[num_slices(c.shape, p) for p in planes] for c in summaries], np.int64)
    capacity = sizes - np.asarray([[len(c.annotated[p]) for p in planes] for c in summaries])
    if capacity.sum() == 0:
        raise InputError("every slice is annotated already: nothing left to choose")
    vol_unc = [c.uncertainty for c in summaries]
    if total is not None:
        if int(total) != total or total < 1 or total > capacity.sum():
            raise InputError(
                f"total new slices must be 1..{int(capacity.sum())} (the unannotated slices), "
                f"got {total}"
            )
        counts = allocate(int(total), vol_unc, capacity, sizes)
        budget_value = float(sizes.sum()) / int(total)  # the s_k these picks amount to
    else:
        budget_value = check_budget(budget)
        asked = np.asarray([[budget_count(n, budget_value) for n in row] for row in sizes])
        counts = np.minimum(asked, capacity)
    fs = slice_features(volumes, planes, seed=seed, **options)
    cases: dict[str, CaseSelection] = {}
    for v, (name, case) in enumerate(zip(names, summaries, strict=True)):
        choices = {}
        for j, p in enumerate(planes):
            u = case.slice_uncertainty[p]
            r = round_indices(fs.features[v][p], case.annotated[p], u, int(counts[v, j]), weight)
            choices[p] = PlaneChoice(
                int(sizes[v, j]),
                r.order.tolist(),
                r.gains.tolist(),
                float(r.value),
                case.annotated[p].tolist(),
                r.uncertainty.tolist(),
                r.scores.tolist(),
            )
        cases[name] = CaseSelection(name, case.shape, choices)
    info = {
        "weight": weight,
        "score": "(1 - w) * gain / g1 + w * u / u_max",
        "budget": None if budget is None else budget_value,
        "total": None if total is None else int(total),
        "allocation": ALLOCATION_RULE if total is not None else "budget s_k per plane",
        "volume_uncertainty": {n: u for n, u in zip(names, vol_unc, strict=True)},
    }
    return Selection(
        budget_value,
        "ra",
        planes,
        seed,
        fs.info,
        cases,
        features=dict(zip(names, fs.features, strict=True)),
        round=round_number,
        round_info=info,
    )


def previous_round(meta: dict) -> int:
    """The round a dataset's labels come from: ``sparse_annotation.round`` of its dataset.json
    (1 for sparse labels written by a first selection)."""
    record = meta.get("sparse_annotation")
    return int(record.get("round", 1)) if isinstance(record, dict) else 1


def select_next_round(
    dataset,
    model: str | Path,
    budget: float | None = None,
    total: int | None = None,
    planes: Sequence[str] | str = PLANES,
    weight: float = DEFAULT_WEIGHT,
    uncertainty: str = DEFAULT_KIND,
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    progress: bool = False,
    feature_cache: str | Path | None = None,
) -> Selection:
    """Choose the next slices in the training cases of ``dataset`` (current sparse labels in
    ``labelsTr``) with the model folder ``model``; see :func:`select_round_volumes`. One case
    at a time is read and predicted; only its :class:`RoundCase` is kept, and its image is
    read again for the slice features."""
    from sparseseg.data.layout import Dataset
    from sparseseg.predict import Predictor
    from sparseseg.progress import progress_bar

    ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    names = ds.cases("Tr")
    if not names:
        raise InputError("dataset has no training cases (imagesTr is empty)", ds.root)
    planes = _check_round_options(planes, budget, total, weight)
    if uncertainty not in KINDS:
        raise InputError(f"unknown uncertainty {uncertainty!r}; choose one of {', '.join(KINDS)}")
    predictor = Predictor(model, device=device, precision=precision)
    if predictor.num_classes != ds.num_classes:
        raise InputError(
            f"the model has {predictor.num_classes} classes, the dataset {ds.num_classes}",
            predictor.bundle.source,
        )
    volumes, summaries = [], []
    for name in progress_bar(names, desc="model uncertainty", unit="case", enabled=progress):
        summaries.append(_dataset_round_case(ds, name, predictor, uncertainty, planes))
        volumes.append(dataset_volume(ds, name, summaries[-1].shape))
    del predictor
    options = dict(
        extractor=extractor, weights=weights, steps=steps, image_size=image_size, device=device,
        progress=progress, feature_cache=feature_cache,
    )  # fmt: skip
    round_number = previous_round(ds.meta) + 1
    selection = _select_round(
        volumes, names, summaries, budget, total, planes, weight, seed, round_number, options
    )
    selection.dataset = str(ds.root)
    selection.round_info.update({"model": str(Path(model)), "uncertainty": uncertainty})
    return selection


def _dataset_round_case(ds, name: str, predictor, kind: str, planes) -> RoundCase:
    """The :class:`RoundCase` of a training case: image, current label, the model's uncertainty."""
    image = ds.load_image(name)
    if not ds.label_path(name).exists():
        raise InputError("a later round needs the current labels", ds.label_path(name))
    label = ds.load_label(name, image=image)
    voxels = model_uncertainty(predictor, image.array, kind, image.spacing)
    return round_case(image.array, label.array, voxels, name, planes, ds.ignore_value)
