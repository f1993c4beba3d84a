"""The paper's study: simulate sparse annotation from dense labels, train, score, tabulate.

For each strategy, budget and seed the runner selects slices on the training split
(``select --simulate-from-labels``), trains Steps II and III on the sparse labels, and scores
every model part on the test split: the self-trained meta-model (RA+ST), the sparse 3D model and
the 2D model per plane. Once per seed it also trains the 3D model on the dense labels (full
supervision).

The strategy ``rounds`` simulates annotation in two rounds at the cost of one-shot ``s_k``: the
first round is the ``ra`` run at ``s_2k`` (run first if the grid lacks it); its model then
chooses the rest of the slices of ``s_k`` (``select --round``: coverage given the annotated
slices and the model's uncertainty, shared between volumes by uncertainty), so the two rounds
annotate exactly as many slices as one-shot ``s_k`` does.

    OUT/fingerprint.json                    what OUT was made from (sparseseg.fingerprint)
    OUT/runs/NAME/fingerprint.json          what each run was made from
    OUT/runs/STRATEGY-sK-seedS/selection/   selection.json and the simulated sparse dataset
    OUT/runs/STRATEGY-sK-seedS/model/       the trained model folder (see sparseseg.pipeline)
    OUT/runs/STRATEGY-sK-seedS/result.json  its rows; present only once the run is complete
    OUT/runs/rounds-sK-seedS/selection/     the second round (its first: ra-s2K-seedS)
    OUT/runs/full-seedS/                    the fully supervised reference; its model3d.pt is a
                                            model bundle of the 3D part (its training time in
                                            the bundle's extra 'train_seconds')
    OUT/features/                           ra slice features, shared by the budgets of a seed
    OUT/results.csv                         one row per run, model and class
    OUT/cases.csv                           one row per run, model and test case
    OUT/tables.md, OUT/fig5.png             paper-style table and budget plot
    OUT/comparisons.md                      paired RA vs EIA and +ST vs base differences

A run whose ``result.json`` exists is skipped, so a grid can be built up over several calls, as
long as the data, preset, planes and extractor stay the same (another dataset or other settings
are refused unless ``overwrite``; see :mod:`sparseseg.output_folder`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sparseseg import fingerprint, output_folder, report
from sparseseg.config import DEFAULT_PRESET
from sparseseg.data.layout import Dataset
from sparseseg.data.planes import PLANES
from sparseseg.errors import InputError
from sparseseg.fileio import write_json, write_text

CASE_FIELDS = [
    "dataset",
    "strategy",
    "budget",
    "seed",
    "model",
    "case",
    "dice",
    "overall",
    "rand_f",
]
STRATEGIES = ("ra", "eia", "random", "rounds")
# paired comparisons between strategies, each where both ran: (first, second)
STRATEGY_PAIRS = (("ra", "eia"), ("rounds", "ra"), ("rounds", "eia"), ("rounds", "random"))


def run_name(strategy: str, budget: float, seed: int) -> str:
    return f"{strategy}-s{budget:g}-seed{seed}"


def seed_overrides(seed: int) -> dict[str, int]:
    """Preset overrides that make every model's sampling depend on ``seed``."""
    return {"train2d.seed": seed, "train3d.seed": seed, "meta.train.seed": seed}


def rows_from_metrics(metrics: dict, common: dict, model: str) -> tuple[list[dict], list[dict]]:
    """Result rows (per class and 'mean') and case rows of one model from an evaluate() dict."""
    summary = metrics["summary"]
    rows = []
    fields = (("dice", "dice"), ("adb", "adb_mm"), ("hausdorff", "hausdorff_mm"))
    for name, stats in summary["classes"].items():
        row = {**common, "model": model, "class": name}
        for key, column in fields:
            row[column] = stats[key]["mean"]
        rows.append(row)
    mean_row = {**common, "model": model, "class": "mean"}
    for _key, column in fields:
        values = [r[column] for r in rows if r[column] is not None]
        mean_row[column] = float(np.mean(values)) if values else None
    mean_row["overall"] = summary.get("hvsmr_score", {}).get("mean")
    if "rand_f" in summary:
        mean_row["rand_f"] = summary["rand_f"]["mean"]
    rows.append(mean_row)
    case_rows = []
    for case, entry in metrics["cases"].items():
        dices = [c["dice"] for c in entry["classes"].values() if c["dice"] is not None]
        case_rows.append(
            {
                **{k: common[k] for k in ("dataset", "strategy", "budget", "seed")},
                "model": model,
                "case": case,
                "dice": float(np.mean(dices)) if dices else None,
                "overall": entry.get("hvsmr_score"),
                "rand_f": entry.get("rand_f"),
            }
        )
    return rows, case_rows


def sparse_run(
    dataset: Dataset,
    run_dir: Path,
    strategy: str,
    budget: float,
    seed: int,
    preset: str,
    overrides: dict,
    *,
    planes: str,
    extractor: str,
    feature_cache: Path,
    resume: bool,
    device: str | None,
    progress: bool,
    log: Callable[[str], None],
    first_dir: Path | None = None,
) -> dict:
    """Select, train and score one (strategy, budget, seed); return its rows.

    ``ra`` slice features are kept in ``feature_cache`` and shared by runs of the same seed.
    ``rounds``: the second annotation round after the finished run ``first_dir`` (its sparse
    dataset and model), up to the slice count of one-shot ``s_budget``.
    """
    from sparseseg import api

    options = {
        "planes": planes,
        "extractor": extractor,
        "seed": seed,
        "device": device,
        "simulate_from_labels": True,
        "progress": progress,
        "feature_cache": feature_cache,
    }
    if strategy == "rounds":
        first = json.loads((first_dir / "selection" / "selection.json").read_text())
        total = second_round_total(first, budget)
        if total < 1:
            raise InputError(
                f"s{budget:g} annotates no more slices than the first round ({first_dir.name})"
            )
        source, budget_arg = first_dir / "selection" / "dataset", None
        options.update(model=first_dir / "model", total_slices=total, dense_labels=dataset.root)
    else:
        source, budget_arg = dataset.root, budget
        options.update(strategy=strategy)
    cost = _selection(
        run_dir / "selection", lambda out: api.select(source, budget_arg, out, **options)
    )
    t0 = time.perf_counter()
    state = api.train(
        run_dir / "selection" / "dataset",
        run_dir / "model",
        preset,
        {**seed_overrides(seed), **overrides},
        resume=resume,
        device=device,
        progress=progress,
        verbose=False,
    )
    seconds = sum(state["stages"][s].get("seconds", 0.0) for s in ("pseudolabels", "meta")) or (
        time.perf_counter() - t0
    )
    common = {
        "dataset": dataset.name,
        "strategy": strategy,
        "budget": budget,
        "seed": seed,
        "annotated_fraction": cost["annotated_fraction"],
        "coverage": cost["covered_fraction"],
        "train_seconds": seconds,
    }
    rows, case_rows = [], []
    for part in state["report"]["parts"]:
        metrics_path = run_dir / "model" / "test_predictions" / part / "metrics.json"
        r, c = rows_from_metrics(json.loads(metrics_path.read_text()), common, part)
        rows += r
        case_rows += c
    log(f"{run_dir.name}: " + ", ".join(_headline(rows, p) for p in ("meta", "3d")))
    return {"rows": rows, "cases": case_rows}


def second_round_total(first: dict, budget: float) -> int:
    """New slices that bring a first round's selection (a selection.json dict) up to what
    one-shot ``s_budget`` annotates: sum over volumes and planes of K(N, budget) minus the
    slices already chosen."""
    from sparseseg.selection.strategies import budget_count

    planes = [c for case in first["cases"].values() for c in case["planes"].values()]
    target = sum(budget_count(c["num_slices"], budget) for c in planes)
    return target - sum(c["count"] for c in planes)


def _selection(selection_dir: Path, select: Callable[[Path], object]) -> dict:
    """Run ``select(selection_dir)`` unless its simulated dataset is complete; the annotation
    cost of its labels (all rounds' slices), as its dataset.json records it."""
    meta = selection_dir / "dataset" / "dataset.json"
    if not meta.exists():
        if selection_dir.exists():
            shutil.rmtree(selection_dir)  # an interrupted selection is cheap to redo
        select(selection_dir)
    return json.loads(meta.read_text())["sparse_annotation"]


def full_run(
    dataset: Dataset,
    run_dir: Path,
    seed: int,
    preset: str,
    overrides: dict,
    *,
    resume: bool,
    device: str | None,
    progress: bool,
    log: Callable[[str], None],
) -> dict:
    """Train the 3D model on the dense training labels and score it on the test split."""
    from sparseseg.bundle import load_bundle, save_bundle
    from sparseseg.data.io import write_nifti
    from sparseseg.data.store import CACHE_DIR, training_store
    from sparseseg.evaluation import evaluate
    from sparseseg.models import base_part
    from sparseseg.planning import resolve_preset
    from sparseseg.predict import Predictor
    from sparseseg.pseudolabels import preset_bundle, remove_cache, train_model3d

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = resolve_preset(  # auto: the time budget is the 3D model's alone
        preset,
        {**seed_overrides(seed), **overrides},
        dataset,
        device=device,
        model_dir=run_dir,
        models=("3d",),
    )
    model_file = run_dir / "model3d.pt"
    t0 = time.perf_counter()
    if not model_file.exists():
        import torch

        torch.manual_seed(seed)
        cases = training_store(  # memory-mapped
            dataset, run_dir / CACHE_DIR / "train", "Tr", cfg.target_spacing
        )
        model, history = train_model3d(
            cases,
            dataset.num_classes,
            dataset.num_classes,  # dense labels: only padding carries the ignore value
            cfg,
            run_dir / "model3d.ckpt",
            resume=resume,
            device=device,
            progress=progress,
        )
        # training time across interruptions, as the loop counts it; saved in the model file so
        # that the model and its time are committed together
        seconds = history[-1]["time"] if history else time.perf_counter() - t0
        part = {"3d": base_part(model, cfg.model3d.arch, cfg.model3d)}
        bundle = preset_bundle(part, dataset, cfg, {"train_seconds": round(float(seconds), 1)})
        save_bundle(bundle, model_file)
    remove_cache(run_dir)
    bundle = load_bundle(model_file)  # a clear error for a damaged file
    seconds = bundle.extra["train_seconds"]
    predictor = Predictor(bundle, device=device)
    pred_dir = run_dir / "predictions"
    for case in dataset.cases("Ts"):
        out = pred_dir / f"{case}{dataset.file_ending}"
        if out.exists():
            continue
        image = dataset.load_image(case, "Ts")
        labels = predictor.predict(image.array, ("3d",), spacing=image.spacing)["3d"].labels
        write_nifti(out, image.with_array(labels))
    metrics = evaluate(pred_dir, dataset.root, out=run_dir / "metrics.json", split="Ts")
    common = {
        "dataset": dataset.name,
        "strategy": "full",
        "budget": 1,
        "seed": seed,
        "annotated_fraction": 1.0,
        "coverage": 1.0,
        "train_seconds": seconds,
    }
    rows, case_rows = rows_from_metrics(metrics, common, "full")
    log(f"{run_dir.name}: " + _headline(rows, "full"))
    return {"rows": rows, "cases": case_rows}


def _headline(rows: list[dict], model: str) -> str:
    row = next(r for r in rows if r["model"] == model and r["class"] == "mean")
    value = row.get("rand_f") if row.get("rand_f") is not None else row["dice"]
    name = "Rand F" if row.get("rand_f") is not None else "Dice"
    return f"{model} {name} {value:.3f}" if value is not None else f"{model} {name} n/a"


def comparisons(case_rows: list[dict], budgets: Sequence[float], metric: str) -> list[dict]:
    """Paired differences: between strategies (:data:`STRATEGY_PAIRS`, per model and budget)
    and +ST vs each base model."""
    out = []
    strategies = sorted({r["strategy"] for r in case_rows} - {"full"})
    for budget in budgets:
        at = [r for r in case_rows if r["budget"] == budget]
        for first, second in STRATEGY_PAIRS:
            if first not in strategies or second not in strategies:
                continue
            for model in ("meta", "3d"):
                diff = report.paired_difference(
                    at,
                    metric,
                    {"strategy": first, "model": model},
                    {"strategy": second, "model": model},
                )
                name = f"{first.upper()} - {second.upper()} ({model})"
                out.append({"comparison": name, "budget": budget, **diff})
        for strategy in strategies:
            for base in ("3d", *PLANES):
                diff = report.paired_difference(
                    at,
                    metric,
                    {"strategy": strategy, "model": "meta"},
                    {"strategy": strategy, "model": base},
                    pair_on=("seed", "case"),
                )
                out.append(
                    {"comparison": f"{strategy.upper()}+ST - {base}", "budget": budget, **diff}
                )
    return out


def comparisons_markdown(items: list[dict], metric: str) -> str:
    lines = [
        f"Paired differences of per-case {metric}: each test case's difference averaged over "
        "the seeds, then the mean over cases with a 95% t-interval and the share of cases "
        "where the first is better. With a single test case, the seeds are the units.",
        "",
        "| Comparison | Budget | n | Mean difference | 95% CI | First better |",
        "|---|---|---|---|---|---|",
    ]
    for c in items:
        if c.get("n", 0) < 2:
            continue
        lines.append(
            f"| {c['comparison']} | s{c['budget']:g} | {c['n']} {c['unit']}s | "
            f"{c['mean']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
            f"{c['a_better']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: list[dict], budgets: Sequence[float]) -> dict[str, Path]:
    """Write results.csv, cases.csv, tables.md, fig5.png and comparisons.md from run results."""
    rows = [r for res in results for r in res["rows"]]
    case_rows = [r for res in results for r in res["cases"]]
    report.write_rows(out / "results.csv", rows, report.RESULT_FIELDS)
    report.write_rows(out / "cases.csv", case_rows, CASE_FIELDS)
    metric = "rand_f" if any(r.get("rand_f") is not None for r in rows) else "dice"
    write_text(out / "tables.md", report.summary_table(rows))
    report.plot_budget_curve(rows, out / "fig5.png", metric)
    items = comparisons(case_rows, budgets, metric)
    write_json(out / "comparisons.json", items)
    write_text(out / "comparisons.md", comparisons_markdown(items, metric))
    return {name: out / name for name in ("results.csv", "tables.md", "fig5.png", "comparisons.md")}


def run_experiment(
    dataset: str | Path | Dataset,
    out: str | Path,
    budgets: Sequence[float] = (5, 10, 20, 40),
    strategies: Sequence[str] = ("ra", "eia"),
    seeds: Sequence[int] = (0,),
    preset: str = DEFAULT_PRESET,
    overrides: dict[str, Any] | None = None,
    *,
    planes: str | None = None,
    extractor: str = "vgg",
    full: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Run (or complete) the grid; return the paths of the written tables and figure.

    ``planes``: the planes to annotate, e.g. 'xy'; by default those of the preset's 2D model.
    An existing ``out`` is completed only if it was made from the same data (both splits,
    dataset.json), preset, planes and extractor (its fingerprint; budgets, strategies and seeds
    may change: the grid grows); else InputError, unless ``overwrite`` (then it is replaced once
    the new grid is complete). Each run's folder records its own fingerprint too. ``resume``
    continues interrupted trainings from their checkpoints.
    """
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    if dataset.ignore_value is not None:
        raise InputError(
            "the experiment needs dense training labels, not sparse ones", dataset.root
        )
    if not dataset.has_labels("Ts"):
        raise InputError(
            "the experiment needs a labelled test split (imagesTs, labelsTs)", dataset.root
        )
    if not dataset.has_labels("Tr"):
        raise InputError("the experiment needs labelled training cases", dataset.root)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise InputError(f"unknown strategies {bad} (expected {', '.join(STRATEGIES)})")
    from sparseseg.config import get_preset

    out = Path(out)
    overrides = dict(overrides or {})
    try:
        cfg = get_preset(preset, {**seed_overrides(0), **overrides})
        if preset == "auto":  # the planned planes (no time probe needed for them)
            from sparseseg.planning import plan_preset

            cfg = plan_preset(dataset, {**seed_overrides(0), **overrides}, budget=False)
    except ValueError as exc:
        raise InputError(f"bad settings: {exc}") from None
    planes = planes or ",".join(cfg.planes)
    data = fingerprint.dataset_fingerprint(dataset)
    settings = {
        "preset": fingerprint.plain(cfg.to_dict()),
        "planes": planes,
        "extractor": extractor,
    }
    work = output_folder.claim(
        out,
        fingerprint.make(data, settings),
        overwrite=overwrite,
        what="experiment folder",
    )
    jobs: list[tuple[str, dict, Callable[[Path], dict]]] = []
    for seed in seeds:
        seeded_cfg = get_preset(preset, {**seed_overrides(seed), **overrides})
        seeded = {"preset": fingerprint.plain(seeded_cfg.to_dict())}
        if full:
            jobs.append(
                (
                    f"full-seed{seed}",
                    {**seeded, "run": "full", "seed": seed},
                    lambda d, s=seed: full_run(
                        dataset,
                        d,
                        s,
                        preset,
                        overrides,
                        resume=resume,
                        device=device,
                        progress=progress,
                        log=log,
                    ),
                )
            )
        options = {
            "preset": preset,
            "overrides": overrides,
            "planes": planes,
            "extractor": extractor,
            "feature_cache": work / "features",
            "resume": resume,
            "device": device,
            "progress": progress,
            "log": log,
        }
        for budget in budgets:
            for strategy in strategies:
                # a second round needs its first: the ra run at twice the budget's k
                needed = [("ra", 2 * budget)] if strategy == "rounds" else []
                for st, b in [*needed, (strategy, budget)]:
                    name = run_name(st, b, seed)
                    if any(job[0] == name for job in jobs):
                        continue
                    run = {"strategy": st, "budget": b, "seed": seed}
                    first = work / "runs" / run_name("ra", 2 * b, seed) if st == "rounds" else None
                    job = partial(sparse_run, dataset, strategy=st, budget=b, first_dir=first)
                    settings = {**seeded, **run, "planes": planes, "extractor": extractor}
                    jobs.append((name, settings, partial(job, seed=seed, **options)))
    if not jobs:
        raise InputError("nothing to run: give at least one budget and strategy, or drop --no-full")
    results = []
    for i, (name, settings, job) in enumerate(jobs, 1):
        run_dir = output_folder.claim(
            work / "runs" / name,
            fingerprint.make(data, settings),
            overwrite=False,
            what="experiment run folder",
        )
        done = run_dir / "result.json"
        if done.exists():
            log(f"[{i}/{len(jobs)}] {name}: done already, skipped")
        else:
            log(f"[{i}/{len(jobs)}] {name}: running")
            write_json(done, report_safe(job(run_dir)))
        results.append(json.loads(done.read_text()))
        paths = write_outputs(work, results, budgets)  # tables stay current while a grid runs
    output_folder.commit(work, out)
    return {name: out / path.relative_to(work) for name, path in paths.items()}


def report_safe(result: dict) -> dict:
    """NaN -> None so the result file is valid JSON."""
    from sparseseg.metrics import json_safe

    return json_safe(result)
