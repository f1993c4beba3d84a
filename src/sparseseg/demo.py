"""The main job on embedded data: a small study on phantom hearts, written up as a report.

Generates phantom heart volumes, runs RA vs EIA at one budget with and without self-training and
the fully supervised reference (see :mod:`sparseseg.experiment`), then writes ``report.md`` with
the table, the paired comparisons and three figures: the chosen slices of a training volume, the
test predictions overlaid on the truth, and the Fig. 5-style budget plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparseseg.data.layout import Dataset
from sparseseg.fileio import atomic_path, write_text

# The demo's preset: the hand-sized `cpu` preset at half its schedules, so the three trainings
# (RA, EIA, full supervision) stay well under ten minutes on two CPU cores. The planned `auto`
# preset does not converge in that time here (README, "Presets"); `--preset auto` runs it with
# DEMO_MINUTES per training.
DEMO_PRESET = "cpu"
DEMO_OVERRIDES: dict[str, object] = {
    "train2d.iterations": 750,
    "train2d.step_at": 550,
    "train3d.iterations": 1200,
    "meta.train.iterations": 900,
    "meta.stage1_iterations": 600,
}
# Time budget of each training under the planned preset, in minutes: the whole of one
# training (probe, training, pseudo-labels, NN-fit, test predictions and scores).
DEMO_MINUTES = 2.5


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def selection_figure(dataset: Dataset, runs: Path, budget: float, seed: int, path: Path) -> None:
    """A yz slice of the first training volume with the xy slices chosen by RA and EIA marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = dataset.cases("Tr")[0]
    image = dataset.load_image(case).array
    sx, _, sz = dataset.load_image(case).spacing
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), dpi=150)
    for ax, strategy in zip(axes, ("ra", "eia"), strict=True):
        record = runs / f"{strategy}-s{budget:g}-seed{seed}" / "selection" / "selection.json"
        chosen = json.loads(record.read_text())["cases"][case]["planes"]
        section = image[image.shape[0] // 2]  # (Y, Z)
        ax.imshow(section.T, cmap="gray", origin="lower", aspect=sz / sx)
        for z in chosen.get("xy", {}).get("indices", []):
            ax.axhline(z, color="tab:orange", linewidth=1.2)
        for y in chosen.get("xz", {}).get("indices", []):
            ax.axvline(y, color="tab:cyan", linewidth=0.8, alpha=0.7)
        ax.set_title(f"{strategy.upper()} s{budget:g}: xy (orange), xz (cyan) slices", fontsize=8)
        ax.set_xlabel("y")
        ax.set_ylabel("z")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def overlay_figure(dataset: Dataset, out: Path, budget: float, seed: int, path: Path) -> None:
    """The middle xy slice of the first test case: truth, then each method's prediction, with
    the truth's outlines drawn over every prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseseg.data.io import read_nifti

    case = dataset.cases("Ts")[0]
    image, truth = dataset.load_pair(case, "Ts")
    z = truth.shape[2] // 2
    ending = dataset.file_ending
    runs = out / "runs"
    panels = [("Truth", truth.array)]
    for title, run, part in (
        ("Full annotation", f"full-seed{seed}", None),
        (f"Sparse 3D w/ EIA s{budget:g}", f"eia-s{budget:g}-seed{seed}", "3d"),
        (f"EIA+ST s{budget:g}", f"eia-s{budget:g}-seed{seed}", "meta"),
        (f"Sparse 3D w/ RA s{budget:g}", f"ra-s{budget:g}-seed{seed}", "3d"),
        (f"RA+ST s{budget:g}", f"ra-s{budget:g}-seed{seed}", "meta"),
    ):
        if part is None:
            file = runs / run / "predictions" / f"{case}{ending}"
        else:
            file = runs / run / "model" / "test_predictions" / part / f"{case}{ending}"
        panels.append((title, read_nifti(file).array))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6), dpi=150)
    lo, hi = np.percentile(image.array, (1, 99))
    for ax, (title, labels) in zip(axes, panels, strict=True):
        ax.imshow(image.array[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        masked = np.ma.masked_equal(labels[:, :, z].T, 0)
        ax.imshow(masked, cmap="autumn", alpha=0.45, origin="lower", vmin=1, vmax=2)
        ax.contour(truth.array[:, :, z].T, levels=[0.5, 1.5], colors="lime", linewidths=0.6)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def run_demo(
    out: str | Path,
    *,
    cases: int = 6,
    test_cases: int = 5,
    budget: float = 10,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    preset: str = DEMO_PRESET,
    minutes: float = DEMO_MINUTES,
    overrides: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the demo into ``out`` (reruns reuse finished runs); return the report's path.

    ``preset``: :data:`DEMO_PRESET` runs at :data:`DEMO_OVERRIDES` (half schedules); other
    fixed presets at their own schedules. ``minutes``: the time budget of each training under
    the planned preset ``auto`` (the override ``budget_minutes``, from which the plan picks the
    iterations). ``overrides``: more preset fields.
    """
    from sparseseg.data.phantom import write_phantom_dataset
    from sparseseg.experiment import run_experiment
    from sparseseg.planning import AUTO

    out = Path(out)
    t0 = time.perf_counter()
    schedule = {AUTO: {"budget_minutes": minutes}, DEMO_PRESET: DEMO_OVERRIDES}.get(preset, {})
    data = out / "phantom_heart"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, "heart", cases, seed, test_cases, shape)
        log(f"phantom data: {cases} training + {test_cases} test volumes in {data}")
    dataset = Dataset.open(data)
    results = out / "experiment"
    paths = run_experiment(
        dataset,
        results,
        budgets=(budget,),
        strategies=("ra", "eia"),
        seeds=(seed,),
        preset=preset,
        overrides={**schedule, **(overrides or {})},
        progress=progress,
        log=log,
    )
    selection_figure(dataset, results / "runs", budget, seed, out / "selection.png")
    overlay_figure(dataset, results, budget, seed, out / "predictions.png")
    wall = (time.perf_counter() - t0) / 60
    models = f"the `{preset}` preset" + (" at half its schedules" if preset == DEMO_PRESET else "")
    if preset == AUTO:
        models += f" (DynUNet networks planned from the data) with {minutes:g} minutes per training"
    text = f"""# sparseseg demo: phantom hearts, s{budget:g}

{cases} training and {test_cases} test volumes of the embedded phantom (myocardium wrapping a
blood pool, great vessels, bias field, noise; {dataset.load_image(dataset.cases("Tr")[0]).shape}
voxels). Annotation is simulated from the dense labels: `s{budget:g}` keeps one slice in
{budget:g} in each of the xy, xz and yz planes, chosen by representative annotation (RA) or at
equal intervals (EIA). Models use {models}; scores are on the test volumes.

## Results (means over the test volumes; per-case scores in `experiment/cases.csv`)

{paths["tables.md"].read_text()}
## Paired comparisons

{paths["comparisons.md"].read_text()}
## Figures

Chosen slices of a training volume (RA left, EIA right):

![selection](selection.png)

Test predictions (overlay) against the truth (green outlines):

![predictions](predictions.png)

Score against budget (one budget here; `sparseseg experiment` runs a grid):

![fig5](experiment/fig5.png)

Wall time of this run: {wall:.1f} min (finished runs are reused on a rerun).
"""
    report_path = out / "report.md"
    write_text(report_path, text)
    return report_path
