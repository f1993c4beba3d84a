"""Choose the slices to annotate in every training volume of a dataset (Step I).

:func:`select_volumes` works on arrays; :func:`select_slices` on a canonical dataset. Both return
a :class:`Selection`: per case and plane the chosen slice indices in priority order (with the
facility-location gains for ``ra``), plus the budget, strategy, extractor and annotation cost.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseseg.data.planes import NORMAL_AXIS, PLANES, num_slices, parse_planes
from sparseseg.errors import InputError
from sparseseg.selection.feature_cache import cached_features
from sparseseg.selection.features import FeatureSet, combine_channels, extract_features
from sparseseg.selection.sparsify import annotation_cost, total_cost
from sparseseg.selection.strategies import (
    STRATEGIES,
    budget_count,
    check_budget,
    eia_indices,
    random_indices,
    representative_indices,
)
from sparseseg.selection.vgg import resolve_weights
from sparseseg.selection.volumes import channels, check_volume_content, dataset_volumes

FORMAT = "sparseseg-selection"
VERSION = 1


@dataclass
class PlaneChoice:
    """The slices chosen in one plane of one volume.

    ``indices``: slice indices along the plane's normal axis, in priority order.
    ``gains``: the facility-location gain of each choice (``ra`` only).
    ``coverage``: F(S) of the choice under the selection features (``ra`` only).
    In a later annotation round (:mod:`sparseseg.selection.rounds`): ``annotated`` the slices
    labelled before (S0, never re-picked; ``coverage`` is then F(S0 + S)), and per choice the
    model's ``uncertainty`` and the ``scores`` that ranked it.
    """

    num_slices: int
    indices: list[int]
    gains: list[float] | None = None
    coverage: float | None = None
    annotated: list[int] | None = None
    uncertainty: list[float] | None = None
    scores: list[float] | None = None

    def to_json(self) -> dict:
        out = {"num_slices": self.num_slices, "count": len(self.indices), "indices": self.indices}
        if self.gains is not None:
            out["gains"] = self.gains
            out["coverage"] = self.coverage
            out["mean_coverage"] = self.coverage / self.num_slices
        for key in ("annotated", "uncertainty", "scores"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class CaseSelection:
    """The choice for one volume of shape (X, Y, Z).

    Shape and indices are in the closest canonical (RAS) orientation in which volumes are read.
    ``source``: for a volume read from a file, its orientation (``axcodes``, e.g. 'LPS') and, per
    plane, the same slices as indices along the file's own array axis (``axis``, ``indices``).
    """

    case: str
    shape: tuple[int, int, int]
    planes: dict[str, PlaneChoice]
    source: dict | None = None

    @property
    def chosen(self) -> dict[str, list[int]]:
        """Plane -> chosen slice indices (priority order)."""
        return {p: c.indices for p, c in self.planes.items()}

    @property
    def cost(self) -> dict:
        return annotation_cost(self.shape, self.chosen)

    def to_json(self) -> dict:
        out = {
            "shape": list(self.shape),
            "planes": {p: c.to_json() for p, c in self.planes.items()},
            "cost": self.cost,
        }
        if self.source is not None:
            out["source"] = self.source
        return out


@dataclass
class Selection:
    """Chosen slices for a set of volumes, and how they were chosen."""

    budget: float
    strategy: str
    planes: tuple[str, ...]
    seed: int
    extractor: dict | None
    cases: dict[str, CaseSelection]
    dataset: str | None = None
    # Slice features per case and plane (``ra`` only); kept for figures, not written to JSON.
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # Annotation round (2 for the first round after the initial selection) and how it chose.
    round: int | None = None
    round_info: dict | None = None

    @property
    def cost(self) -> dict:
        """Annotation cost of all cases together."""
        return total_cost([c.cost for c in self.cases.values()])

    def chosen(self, case: str) -> dict[str, list[int]]:
        return self.cases[case].chosen

    def to_json(self) -> dict:
        extra = {} if self.round is None else {"round": self.round, "round_info": self.round_info}
        return {
            "format": FORMAT,
            "version": VERSION,
            "dataset": self.dataset,
            "budget": self.budget,
            "strategy": self.strategy,
            "planes": list(self.planes),
            "seed": self.seed,
            "extractor": self.extractor,
            "cost": self.cost,
            **extra,
            "cases": {name: c.to_json() for name, c in self.cases.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Selection:
        if data.get("format") != FORMAT:
            raise ValueError("not a sparseseg selection record")
        cases = {}
        for name, c in data["cases"].items():
            planes = {
                p: PlaneChoice(
                    v["num_slices"],
                    v["indices"],
                    v.get("gains"),
                    v.get("coverage"),
                    v.get("annotated"),
                    v.get("uncertainty"),
                    v.get("scores"),
                )
                for p, v in c["planes"].items()
            }
            cases[name] = CaseSelection(name, tuple(c["shape"]), planes, c.get("source"))
        return cls(
            budget=data["budget"],
            strategy=data["strategy"],
            planes=tuple(data["planes"]),
            seed=data["seed"],
            extractor=data["extractor"],
            cases=cases,
            dataset=data.get("dataset"),
            round=data.get("round"),
            round_info=data.get("round_info"),
        )


def read_selection(path: str | Path) -> Selection:
    """Read ``selection.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "selection.json"
    if not path.is_file():
        raise InputError("selection file not found", path)
    try:
        return Selection.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a valid selection record ({exc})", path) from None


def case_rng(seed: int, case: str, plane: str) -> np.random.Generator:
    """The random generator for one plane of one case: independent of the other cases."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode()), PLANES.index(plane)])


def slice_features(
    volumes: Sequence[np.ndarray],
    planes: Sequence[str],
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    feature_cache: str | Path | None = None,
) -> FeatureSet:
    """The ``ra`` slice features of volumes (X, Y, Z) or (C, X, Y, Z), from ``feature_cache``
    when it has them. The channels of a volume are featurised one by one and joined
    (:func:`~sparseseg.selection.features.combine_channels`). Volumes may be
    :class:`~sparseseg.selection.volumes.LazyVolume`: each is read when its turn comes."""
    groups = [channels(v) for v in volumes]
    flat = [c for group in groups for c in group]

    def compute() -> FeatureSet:
        return extract_features(
            flat, planes, extractor, weights, seed, steps, 64, image_size, device, progress
        )

    if feature_cache is None:
        fs = compute()
    else:
        weights_path = resolve_weights(weights) if extractor == "vgg" else None
        settings = {
            "extractor": extractor,
            "weights": None if weights_path is None else str(weights_path),
            "seed": seed,
            "steps": steps,
            "image_size": image_size,
        }
        fs = cached_features(feature_cache, flat, planes, settings, compute)
    return FeatureSet(combine_channels(fs.features, [len(g) for g in groups]), fs.info)


def select_volumes(
    volumes: Sequence[np.ndarray],
    names: Sequence[str],
    budget: float,
    strategy: str = "ra",
    planes: Sequence[str] | str = PLANES,
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    feature_cache: str | Path | None = None,
) -> Selection:
    """Choose slices in volumes (X, Y, Z) or (C, X, Y, Z) named ``names``; see
    :func:`select_slices`. The ``ra`` features of a multi-channel volume combine its channels:
    slice similarity is the mean of the per-channel cosine similarities
    (:func:`~sparseseg.selection.features.combine_channels`). Volumes may be arrays or
    :class:`~sparseseg.selection.volumes.LazyVolume`; they are used one at a time."""
    planes, budget = _check_options(strategy, planes, budget, weights)
    _check_names(names, len(volumes))
    for vol, name in zip(volumes, names, strict=True):
        if np.ndim(vol) not in (3, 4):
            raise InputError(f"expected a 3D volume, got shape {np.shape(vol)}", name)
        check_volume_content(np.asarray(vol), name)
    options = dict(
        extractor=extractor, weights=weights, steps=steps, image_size=image_size, device=device,
        progress=progress, feature_cache=feature_cache,
    )  # fmt: skip
    return _select(volumes, names, budget, strategy, planes, seed, options)


def _check_options(strategy: str, planes, budget: float, weights) -> tuple[tuple[str, ...], float]:
    """The parsed planes and budget; InputError for a bad strategy, plane list, budget or
    weights file (a missing weights file is an error whatever the strategy)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    try:
        planes = parse_planes(planes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    budget = check_budget(budget)
    if weights is not None:
        resolve_weights(weights)
    return planes, budget


def _check_names(names: Sequence[str], count: int) -> None:
    if len(names) != count or not names or len(set(names)) != len(names):
        raise InputError("need one distinct name per volume and at least one volume")


def _select(volumes, names, budget, strategy, planes, seed, options: dict) -> Selection:
    """:func:`select_volumes` on checked options and volumes; ``options``: the keyword
    arguments of :func:`slice_features` beyond volumes, planes and seed."""
    shapes = [tuple(int(s) for s in np.shape(vol)[-3:]) for vol in volumes]
    features, info = None, None
    if strategy == "ra":
        fs = slice_features(volumes, planes, seed=seed, **options)
        features, info = fs.features, fs.info

    cases: dict[str, CaseSelection] = {}
    for v, (shape, name) in enumerate(zip(shapes, names, strict=True)):
        choices = {}
        for p in planes:
            n = num_slices(shape, p)
            k = budget_count(n, budget)
            if strategy == "ra":
                result = representative_indices(features[v][p], k)
                choices[p] = PlaneChoice(
                    n, result.order.tolist(), result.gains.tolist(), float(result.value)
                )
            elif strategy == "eia":
                choices[p] = PlaneChoice(n, eia_indices(n, k).tolist())
            else:
                choices[p] = PlaneChoice(n, random_indices(n, k, case_rng(seed, name, p)).tolist())
        cases[name] = CaseSelection(name, shape, choices)
    feats = {} if features is None else dict(zip(names, features, strict=True))
    return Selection(budget, strategy, planes, seed, info, cases, features=feats)


def select_slices(
    dataset,
    budget: float,
    strategy: str = "ra",
    planes: Sequence[str] | str = PLANES,
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    cases: Sequence[str] | None = None,
    feature_cache: str | Path | None = None,
) -> Selection:
    """Choose the slices to annotate in the training images (imagesTr) of a canonical dataset.

    ``dataset``: a :class:`~sparseseg.data.layout.Dataset` or its folder. ``budget``: k of
    ``s_k`` (K = max(1, floor(N / k)) slices per plane per volume). ``strategy``: ``ra``
    (representative: greedy facility location on slice features), ``eia`` (equal interval) or
    ``random`` (seeded). ``extractor``/``weights``/``steps``/``image_size`` set the ``ra``
    features (see :func:`~sparseseg.selection.features.extract_features`). ``cases`` limits the
    selection to some training cases. ``feature_cache``: a folder where ``ra`` features are kept
    and reused by later selections of the same images and settings (at any budget).
    The images are read one at a time: once to check them, once more for the features.
    """
    from sparseseg.data.layout import Dataset

    ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    names = list(ds.cases("Tr")) if cases is None else list(cases)
    if not names:
        raise InputError("dataset has no training cases (imagesTr is empty)", ds.root)
    missing = [c for c in names if c not in ds.cases("Tr")]
    if missing:
        raise InputError(f"no training image for cases {missing[:3]}", ds.root)
    planes, budget = _check_options(strategy, planes, budget, weights)
    _check_names(names, len(names))
    volumes, sources = dataset_volumes(ds, names)
    options = dict(
        extractor=extractor, weights=weights, steps=steps, image_size=image_size, device=device,
        progress=progress, feature_cache=feature_cache,
    )  # fmt: skip
    selection = _select(volumes, names, budget, strategy, planes, seed, options)
    selection.dataset = str(ds.root)
    for name, case in selection.cases.items():
        case.source = source_indices(sources[name], case.chosen)
    return selection


def source_indices(source, chosen: dict[str, list[int]]) -> dict | None:
    """The file's orientation and the ``chosen`` canonical slices as indices along the file's own
    array axes: ``{'axcodes', 'planes': {plane: {'axis', 'indices'}}}`` (None without a file)."""
    if source is None:
        return None
    planes = {}
    for plane, indices in chosen.items():
        axis = NORMAL_AXIS[plane] % 3
        pairs = [source.source_index(axis, i) for i in indices]
        planes[plane] = {"axis": pairs[0][0] if pairs else None, "indices": [i for _, i in pairs]}
    return {"axcodes": source.axcodes, "planes": planes}
