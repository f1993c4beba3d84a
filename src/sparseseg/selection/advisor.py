"""The budget advisor: how much of each plane's facility-location coverage a budget buys.

For one plane of one volume, greedy facility location on the slice features (the ones ``select``
uses) orders all N slices; the coverage curve is F(S_K) / F(all slices) for K = 0..N, monotone
and 1 at K = N (F(all) = N: every slice covers itself with similarity 1). Over a dataset, budget
s_k takes K = max(1, floor(N / k)) slices of each plane of each volume; its coverage is the mean
of the curves at K, its cost the annotated pixel fraction of those slices
(:func:`~sparseseg.selection.sparsify.annotation_cost`).

**Recommended budget**: the sparsest budget of :data:`BUDGETS` (largest k) whose mean coverage
reaches ``target`` (default 95%) of F(all); per plane, the smallest K whose mean coverage over
the volumes reaches it.

After a round (a model and the dataset's current sparse labels), the curves start from the
annotated slices S0 (coverage F(S0 + S_K) / F(all), K new slices in the order of
:func:`~sparseseg.selection.rounds.round_greedy`) and each budget also reports the share of the
model's uncertainty (the sum over unannotated slices of their mean voxel uncertainty) that is
left in the slices still unannotated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparseseg.data.planes import PLANES, num_slices, parse_planes
from sparseseg.errors import InputError
from sparseseg.selection.facility import cosine_similarity, lazy_greedy
from sparseseg.selection.rounds import DEFAULT_WEIGHT, annotated_slices, round_greedy
from sparseseg.selection.sparsify import annotation_cost, total_cost
from sparseseg.selection.strategies import budget_count

DEFAULT_TARGET = 0.95
# The budgets s_k the table lists (those with k up to the most slices of any plane).
BUDGETS = (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300)


@dataclass(frozen=True)
class PlaneCurve:
    """One plane of one volume: ``order`` (m,) the unannotated slices in greedy order;
    ``coverage`` (m + 1,) F(S0 + first K of order) / F(all) for K = 0..m; ``remaining`` (m + 1,)
    the share of the uncertainty left in unannotated slices (round view only)."""

    num_slices: int
    annotated: np.ndarray
    order: np.ndarray
    coverage: np.ndarray
    remaining: np.ndarray | None = None


def prefix_coverage(
    sim: np.ndarray, order: Sequence[int], initial: Sequence[int] = ()
) -> np.ndarray:
    """(len(order) + 1,) float64: F(initial + order[:K]) for K = 0..len(order)."""
    sim = np.asarray(sim, dtype=np.float64)
    cur = np.zeros(sim.shape[0])
    for i in initial:
        np.maximum(cur, sim[int(i)], out=cur)
    out = np.empty(len(order) + 1)
    out[0] = cur.sum()
    for k, i in enumerate(order):
        np.maximum(cur, sim[int(i)], out=cur)
        out[k + 1] = cur.sum()
    return out


def plane_curve(
    features: np.ndarray,
    annotated: Sequence[int] = (),
    uncertainty: np.ndarray | None = None,
    weight: float = DEFAULT_WEIGHT,
) -> PlaneCurve:
    """The coverage curve of one plane from slice features (N, D); with ``uncertainty`` (N,)
    (a round) the order is :func:`round_greedy`'s and the remaining uncertainty is tracked."""
    sim = cosine_similarity(features)
    n = sim.shape[0]
    start = np.asarray(annotated, dtype=np.int64)
    free = n - start.size
    if uncertainty is None:
        order = lazy_greedy(sim, free, initial=start).order
        remaining = None
    else:
        u = np.asarray(uncertainty, dtype=np.float64)
        order = round_greedy(sim, start, u, free, weight).order
        mass = u[order]
        total = mass.sum()
        left = total - np.concatenate([[0.0], np.cumsum(mass)])
        remaining = np.clip(left / total, 0.0, 1.0) if total > 0 else np.zeros(free + 1)
        remaining[-1] = 0.0
    full = float(np.max(sim, axis=0).sum())
    cov = prefix_coverage(sim, order, start) / full
    return PlaneCurve(n, start, order, np.minimum(cov, 1.0), remaining)


def budget_rows(
    curves: Sequence[dict[str, PlaneCurve]],
    shapes: Sequence[tuple[int, int, int]],
    budgets: Sequence[float] = BUDGETS,
) -> list[dict]:
    """One row per budget s_k (k up to the most slices of any plane): new slices, mean coverage
    per plane and overall, annotated and covered fractions of the new slices, and (round view)
    the uncertainty left."""
    planes = list(curves[0])
    longest = max(c.num_slices for vol in curves for c in vol.values())
    rows = []
    for k in [b for b in budgets if b <= longest]:
        row: dict = {"budget": f"s{k:g}", "k": float(k)}
        picks, per_plane, left, mass = [], {p: [] for p in planes}, 0.0, 0.0
        for vol, shape in zip(curves, shapes, strict=True):
            chosen = {}
            for p, c in vol.items():
                n_new = min(budget_count(c.num_slices, k), c.order.size)
                chosen[p] = c.order[:n_new].tolist()
                per_plane[p].append(c.coverage[n_new])
                if c.remaining is not None:
                    left += c.remaining[n_new]
                    mass += 1.0
            picks.append(annotation_cost(shape, chosen))
        cost = total_cost(picks)
        row["slices"] = cost["slices"]
        for p in planes:
            row[f"coverage_{p}"] = float(np.mean(per_plane[p]))
        row["coverage"] = float(np.mean([row[f"coverage_{p}"] for p in planes]))
        row["annotated_fraction"] = cost["annotated_fraction"]
        row["covered_fraction"] = cost["covered_fraction"]
        if mass:
            row["uncertainty_left"] = left / mass
        rows.append(row)
    return rows


def slice_rows(curves: Sequence[dict[str, PlaneCurve]]) -> list[dict]:
    """Mean coverage per plane against the number K of (new) slices per plane, K = 0..max; a
    volume with fewer free slices than K counts at all of them."""
    planes = list(curves[0])
    longest = max(c.order.size for vol in curves for c in vol.values())
    rows = []
    for k in range(longest + 1):
        row: dict = {"slices": k}
        for p in planes:
            row[f"coverage_{p}"] = float(
                np.mean([v[p].coverage[min(k, v[p].order.size)] for v in curves])
            )
        rows.append(row)
    return rows


def recommend(rows: Sequence[dict], target: float = DEFAULT_TARGET) -> dict | None:
    """The budget row with the largest k whose mean coverage reaches ``target`` (None if none)."""
    good = [r for r in rows if r["coverage"] >= target]
    return max(good, key=lambda r: r["k"]) if good else None


def recommend_slices(rows: Sequence[dict], planes: Sequence[str], target: float) -> dict:
    """Per plane, the smallest K of :func:`slice_rows` whose mean coverage reaches ``target``."""
    out = {}
    for p in planes:
        ks = [r["slices"] for r in rows if r[f"coverage_{p}"] >= target]
        out[p] = min(ks) if ks else None
    return out


def check_target(target: float) -> None:
    """The coverage target must lie in (0, 1]."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"coverage target must be in (0, 1], got {target:g}")


def advise_volumes(
    features: Sequence[dict[str, np.ndarray]],
    shapes: Sequence[tuple[int, int, int]],
    planes: Sequence[str],
    target: float = DEFAULT_TARGET,
    labels: Sequence[np.ndarray] | None = None,
    ignore_value: int | None = None,
    uncertainty: Sequence[np.ndarray] | None = None,
    weight: float = DEFAULT_WEIGHT,
) -> dict:
    """The advice for volumes of ``shapes`` with slice ``features`` per volume and plane (N, D);
    with ``labels`` and voxel ``uncertainty`` maps (X, Y, Z) the round view. Returns the budget
    table, the coverage-by-slices table, the recommendation and the rule."""
    from sparseseg.uncertainty import slice_means

    check_target(target)
    curves = []
    for v, feats in enumerate(features):
        vol = {}
        for p in planes:
            start = () if labels is None else annotated_slices(labels[v], ignore_value, p)
            u = None if uncertainty is None else slice_means(uncertainty[v], p)
            vol[p] = plane_curve(feats[p], start, u, weight)
        curves.append(vol)
    rows = budget_rows(curves, shapes)
    by_slices = slice_rows(curves)
    best = recommend(rows, target)
    now = float(np.mean([c.coverage[0] for vol in curves for c in vol.values()]))
    return {
        "coverage_now": now,
        "target": target,
        "rule": f"the sparsest budget s_k (largest k) whose mean facility-location coverage "
        f"F(S0 + S_k) / F(all) reaches {target:g}; per plane the fewest slices reaching it",
        "round": uncertainty is not None,
        "recommended": None if best is None else best["budget"],
        "recommended_row": best,
        "recommended_slices": recommend_slices(by_slices, planes, target),
        "budgets": rows,
        "by_slices": by_slices,
    }


def advise(
    dataset,
    out: str | Path,
    model: str | Path | None = None,
    planes: Sequence[str] | str = PLANES,
    target: float = DEFAULT_TARGET,
    weight: float = DEFAULT_WEIGHT,
    uncertainty: str = "disagreement",
    extractor: str = "vgg",
    weights=None,
    seed: int = 0,
    steps: int = 300,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    feature_cache: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Advise a budget for the training cases of ``dataset`` and write the advice to ``out``:
    ``advice.json``, ``advice.md`` and ``advice.csv`` (the budget table), ``by_slices.csv``
    and ``advice.png``. With ``model`` (and the dataset's current sparse labels) the round view.
    """
    from sparseseg.data.layout import Dataset
    from sparseseg.fileio import atomic_dir, write_json, write_text
    from sparseseg.progress import progress_bar
    from sparseseg.report import write_rows
    from sparseseg.selection.selector import check_volume_content, slice_features

    check_target(target)
    ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    try:
        planes = parse_planes(planes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    names = ds.cases("Tr")
    if not names:
        raise InputError("dataset has no training cases (imagesTr is empty)", ds.root)
    volumes, spacings = [], []
    for name in names:
        image = ds.load_image(name)
        try:
            check_volume_content(image.array, name)
        except InputError as exc:
            raise InputError(exc.problem, ds.image_path(name)) from None
        volumes.append(image.array)
        spacings.append(image.spacing)
    labels = maps = None
    if model is not None:
        from sparseseg.predict import Predictor
        from sparseseg.selection.next_round import model_uncertainty

        predictor = Predictor(model, device=device)
        if predictor.num_classes != ds.num_classes:
            raise InputError(
                f"the model has {predictor.num_classes} classes, the dataset {ds.num_classes}",
                predictor.bundle.source,
            )
        labels, maps = [], []
        for name, vol, spacing in progress_bar(
            list(zip(names, volumes, spacings, strict=True)),
            desc="model uncertainty",
            enabled=progress,
        ):
            if not ds.label_path(name).exists():
                raise InputError("the round view needs the current labels", ds.label_path(name))
            labels.append(ds.load_label(name).array)
            maps.append(model_uncertainty(predictor, vol, uncertainty, spacing))
    fs = slice_features(
        volumes, planes, extractor, weights, seed, steps, image_size, device, progress,
        feature_cache,
    )  # fmt: skip
    shapes = [tuple(int(s) for s in v.shape) for v in volumes]
    advice = advise_volumes(
        fs.features, shapes, planes, target, labels, ds.ignore_value, maps, weight
    )
    advice.update(
        dataset=str(ds.root),
        cases=len(names),
        planes=list(planes),
        extractor=fs.info,
        model=None if model is None else str(model),
        uncertainty=None if model is None else uncertainty,
        weight=None if model is None else weight,
        slices_per_plane={p: [num_slices(s, p) for s in shapes] for p in planes},
    )
    fields = list(advice["budgets"][0])
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "advice.json", advice)
        write_rows(tmp / "advice.csv", advice["budgets"], fields)
        write_rows(tmp / "by_slices.csv", advice["by_slices"], list(advice["by_slices"][0]))
        write_text(tmp / "advice.md", advice_markdown(advice))
        advice_figure(advice, tmp / "advice.png")
    return advice


def advice_markdown(advice: dict) -> str:
    """The budget table as markdown, with the recommendation and its rule."""
    planes = advice["planes"]
    round_view = advice["round"]
    head = ["budget", "new slices" if round_view else "slices"]
    head += [f"coverage {p}" for p in planes] + ["coverage", "annotated", "covered"]
    if round_view:
        head.append("uncertainty left")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in advice["budgets"]:
        cells = [r["budget"], str(r["slices"])]
        cells += [f"{r[f'coverage_{p}']:.3f}" for p in planes]
        cells += [
            f"{r['coverage']:.3f}",
            f"{100 * r['annotated_fraction']:.1f}%",
            f"{100 * r['covered_fraction']:.1f}%",
        ]
        if round_view:
            cells.append(f"{100 * r['uncertainty_left']:.1f}%")
        if r["budget"] == advice["recommended"]:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    extractor = (advice.get("extractor") or {}).get("name", "?")
    title = " after a round (coverage from the annotated slices)" if round_view else ""
    per_plane = ", ".join(f"{p} {k}" for p, k in advice["recommended_slices"].items())
    now = (
        f"The annotated slices alone cover {advice['coverage_now']:.3f} of F(all).\n\n"
        if round_view
        else ""
    )
    return (
        f"# Budget advice{title}\n\n"
        f"{advice.get('cases', '?')} training cases, planes {','.join(planes)}, "
        f"features {extractor}.\n\n{now}"
        f"Recommended budget: **{advice['recommended']}** ({advice['rule']}). "
        f"Slices per plane reaching the target: {per_plane}.\n\n"
        "coverage: mean F(S) / F(all slices) over volumes; annotated: pixels on the chosen "
        "slices / voxels; covered: voxels on at least one chosen slice.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def advice_figure(advice: dict, path: str | Path) -> None:
    """Two panels: coverage per plane against slices per plane; coverage (and the uncertainty
    left) against the annotated fraction of each budget, the recommendation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseseg.fileio import atomic_path

    planes = advice["planes"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    # From one slice on (F of no slice is 0) unless a round starts from annotated slices.
    shown = [r for r in advice["by_slices"] if advice["round"] or r["slices"] > 0]
    ks = [r["slices"] for r in shown]
    for p in planes:
        left.plot(ks, [r[f"coverage_{p}"] for r in shown], label=p)
    left.axhline(advice["target"], color="grey", lw=0.8, ls="--")
    left.set_xlabel("new slices per plane per volume" if advice["round"] else "slices per plane")
    left.set_ylabel("coverage F(S) / F(all)")
    left.grid(alpha=0.3)
    left.legend()
    rows = advice["budgets"]
    x = [100 * r["annotated_fraction"] for r in rows]
    right.plot(x, [r["coverage"] for r in rows], "o-", label="coverage")
    for r, xi in zip(rows, x, strict=True):
        right.annotate(r["budget"], (xi, r["coverage"]), fontsize=6, xytext=(2, -8),
                       textcoords="offset points")  # fmt: skip
    if advice["round"]:
        right.plot(x, [r["uncertainty_left"] for r in rows], "s--", label="uncertainty left")
    best = advice["recommended_row"]
    if best is not None:
        right.plot([100 * best["annotated_fraction"]], [best["coverage"]], "r*", ms=14,
                   label=f"recommended {best['budget']}")  # fmt: skip
    right.axhline(advice["target"], color="grey", lw=0.8, ls="--")
    right.set_xscale("log")
    right.set_xlabel("annotated pixels (% of voxels)")
    right.set_ylabel("fraction")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
