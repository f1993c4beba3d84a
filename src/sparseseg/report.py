"""Study results: results CSV, paper-style tables, the budget plot, paired comparisons.

Pure functions over lists of row dicts; the experiment runner owns running and caching.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sparseseg.fileio import atomic_path

# One row per run, model and class (class "mean" averages the foreground classes).
RESULT_FIELDS = [
    "dataset",
    "strategy",
    "budget",
    "seed",
    "model",
    "class",
    "annotated_fraction",
    "coverage",
    "dice",
    "adb_mm",
    "hausdorff_mm",
    "overall",
    "rand_f",
    "train_seconds",
]
# Model names as the paper labels them, without its networks' names (DVN, FCN): the networks
# depend on the preset.
MODEL_TITLES = {
    "3d": "Sparse 3D w/ {S}",
    "xy": "Sparse 2D (xy) w/ {S}",
    "xz": "Sparse 2D (xz) w/ {S}",
    "yz": "Sparse 2D (yz) w/ {S}",
    "meta": "{S}+ST",
    "full": "3D (full annotation)",
}


def write_rows(path: str | Path, rows: Iterable[dict], fields: list[str]) -> None:
    """Write rows as CSV atomically; missing values become empty cells."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in fields})


def read_rows(path: str | Path) -> list[dict]:
    """Read a CSV written by :func:`write_rows`; numbers come back as float, blanks as None."""
    with open(path, newline="") as handle:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _parse(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def method_name(row: dict) -> str:
    """'RA+ST', 'Sparse 3D w/ EIA', ... from a row's model and strategy."""
    strategy = str(row.get("strategy") or "").upper()
    return MODEL_TITLES.get(str(row["model"]), str(row["model"])).format(S=strategy)


def _mean_std(values: list[float]) -> str:
    """'mean ± std' with three decimals, or three significant digits for tiny means (e.g. EM
    distances in mm)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    mean = float(np.mean(values))
    spec = ".3g" if 0 < abs(mean) < 0.01 else ".3f"
    if len(values) == 1:
        return format(mean, spec)
    return f"{mean:{spec}} ± {float(np.std(values, ddof=1)):{spec}}"


def summary_table(rows: list[dict], metrics: list[str] | None = None) -> str:
    """A markdown table in the paper's Table 1/2 layout: one line per method and budget, per class
    metrics then the overall score, each mean ± std over seeds."""
    classes = sorted({r["class"] for r in rows if r["class"] != "mean"})
    metrics = metrics or ["dice", "adb_mm", "hausdorff_mm"]
    has_rand = any(r.get("rand_f") is not None for r in rows)
    header = ["Method", "Budget", "Annotated"]
    header += [f"{c} {m}" for c in classes for m in metrics]
    header += ["Rand F" if has_rand else "Overall"]
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        budget = "full" if r["model"] == "full" else f"s{int(r['budget'])}"
        key = (method_name(r), budget)
        if r["class"] == "mean":
            groups[key]["final"].append(r.get("rand_f") if has_rand else r.get("overall"))
            groups[key]["annotated"].append(r.get("annotated_fraction"))
        else:
            for m in metrics:
                groups[key][f"{r['class']} {m}"].append(r.get(m))

    def order(key):
        name, budget = key
        return (budget == "full", -int(budget[1:]) if budget != "full" else 0, name)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(groups, key=order):
        cells = groups[key]
        annotated = [a for a in cells["annotated"] if a is not None]
        line = [key[0], key[1], f"{np.mean(annotated):.1%}" if annotated else "100%"]
        line += [_mean_std(cells[f"{c} {m}"]) for c in classes for m in metrics]
        line.append(_mean_std(cells["final"]))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


FIGURE_MODELS = ("meta", "3d")  # the paper's Fig. 5: the self-trained model and the sparse 3D model


def plot_budget_curve(
    rows: list[dict], path: str | Path, metric: str = "dice", models: Sequence[str] = FIGURE_MODELS
) -> list[str]:
    """Fig. 5 style: ``metric`` of the class-mean rows of ``models`` against budget s_k, a line
    per method (mean over seeds, error bars = std; one colour per strategy, solid for the
    self-trained model), full supervision as a dashed line. Written atomically; returns the
    legend labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_rows = [r for r in rows if r["class"] == "mean" and r.get(metric) is not None]
    curves: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    full = []
    for r in mean_rows:
        if r["model"] == "full":
            full.append(r[metric])
        elif r["model"] in models:
            curves[str(r["strategy"]), str(r["model"])][int(r["budget"])].append(r[metric])
    strategies = sorted({s for s, _ in curves})
    colours = {s: f"C{i}" for i, s in enumerate(strategies)}
    styles = {m: ("-", ":", "-.", (0, (1, 3)))[i % 4] for i, m in enumerate(models)}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=150)
    for strategy, model in sorted(curves, key=lambda k: (models.index(k[1]), k[0])):
        points = curves[strategy, model]
        budgets = sorted(points)
        ax.errorbar(
            budgets,
            [np.mean(points[b]) for b in budgets],
            yerr=[np.std(points[b]) for b in budgets],
            marker="o",
            capsize=3,
            color=colours[strategy],
            linestyle=styles[model],
            label=method_name({"model": model, "strategy": strategy}),
        )
    if full:
        ax.axhline(np.mean(full), linestyle="--", color="k", label="Full annotation")
    ax.set_xscale("log", base=2)
    all_budgets = sorted({b for c in curves.values() for b in c})
    ax.set_xticks(all_budgets, [f"s{b}" for b in all_budgets])
    ax.minorticks_off()
    ax.set_xlabel("annotation budget s_k (one of every k slices)")
    ax.set_ylabel({"dice": "mean foreground Dice", "rand_f": "Rand F-score"}.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    labels = ax.get_legend_handles_labels()[1]
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return labels


def paired_difference(
    case_rows: list[dict],
    metric: str,
    a: dict,
    b: dict,
    pair_on=("budget", "seed", "case"),
    unit: str = "case",
) -> dict:
    """Mean of (a - b) over pairs matched on ``pair_on``, with a 95% t confidence interval.

    ``a`` and ``b`` select rows by equality of their items, e.g. ``{"strategy": "ra", "model":
    "meta"}``; ``unit`` is one of ``pair_on``. The differences are first averaged per ``unit``
    (a test case: the seeds of one case share its image, so they are not independent), and the
    interval is taken over those means. With fewer than two units (one test volume), the seeds
    are the units instead.
    Returns n (units), unit, pairs, mean, ci_low, ci_high, and a_better (share of units where a
    is better).
    """
    from scipy import stats

    def pick(sel):
        return {
            tuple(r[k] for k in pair_on): r[metric]
            for r in case_rows
            if all(r.get(k) == v for k, v in sel.items()) and r.get(metric) is not None
        }

    left, right = pick(a), pick(b)
    keys = sorted(set(left) & set(right), key=str)
    if len({k[pair_on.index(unit)] for k in keys}) < 2 and "seed" in pair_on:
        unit = "seed"
    groups: dict = {}
    for k in keys:
        groups.setdefault(k[pair_on.index(unit)], []).append(left[k] - right[k])
    diffs = np.array([np.mean(v) for v in groups.values()], dtype=float)
    out = {"n": len(diffs), "unit": unit, "pairs": len(keys)}
    if len(diffs) < 2:
        return {**out, "mean": float(diffs.mean()) if len(diffs) else None}
    mean = float(diffs.mean())
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return {
        **out,
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "a_better": float((diffs > 0).mean()),
    }
