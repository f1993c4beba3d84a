"""``train``: sparse labels -> Step II (base models, pseudo-labels) -> Step III -> model bundle.

The pipeline owns the model folder. Each stage leaves its artifacts there and is recorded as done
in ``MODEL/pipeline.json`` only once they are all written (atomically)::

    MODEL/fingerprint.json            what the folder was made from (sparseseg.fingerprint)
    MODEL/pipeline.json               settings, dataset, and each stage's status and time
    MODEL/stage2_pseudolabels/        Step II (see :mod:`sparseseg.pseudolabels`): base models
                                      (one-part model bundles), checkpoints, the PL sets, A(Y)
    MODEL/cache/train/, cache/meta/   the training cases as memory-mapped .npy files (see
                                      sparseseg.data.store), removed once the meta-model is done
    MODEL/stage3_meta/meta.ckpt       the meta-model's training checkpoint
    MODEL/stage3_meta/meta.pt         the trained meta-model: a model bundle of that one part,
                                      meta.json beside it
    MODEL/stage3_meta/selftrain.json  which PL sets were chosen over time, NN-fit rounds, history
    MODEL/bundle.pt, bundle.json      the model bundle for ``predict`` (:mod:`sparseseg.bundle`),
                                      merged from the base models' and the meta-model's bundles
    MODEL/test_predictions/PART/      test-split predictions of every part (when labelsTs exists)
    MODEL/report.json                 their scores: the meta-model beside each base model

Rerunning skips finished stages. ``resume=True`` continues an interrupted stage from its last
checkpoint (without it an interrupted training starts again); a kill loses at most the work since
the last checkpoint. Running again with other data (labels, images, dataset.json) or other
settings into the same folder is refused, unless ``overwrite`` replaces it (see
:mod:`sparseseg.output_folder`: the old model stays in place until the new one is complete).

Under torchrun (see :mod:`sparseseg.distributed`) every rank runs every stage: training with DDP,
pseudo-labels and test predictions split by case; rank 0 alone writes the stage records, the
meta-model, the bundle and the report (the others wait for it) and prints the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparseseg import distributed, fingerprint, output_folder
from sparseseg.config import DEFAULT_PRESET
from sparseseg.data.layout import Dataset
from sparseseg.errors import InputError
from sparseseg.fileio import write_json

STATE_FILE = "pipeline.json"
STAGE2_DIR = "stage2_pseudolabels"
STAGE3_DIR = "stage3_meta"
TEST_DIR = "test_predictions"
REPORT_FILE = "report.json"
STAGES = ("pseudolabels", "meta", "bundle", "report")


def read_state(model_dir: str | Path) -> dict:
    path = Path(model_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc}); remove it to start again", path) from None


def stage_done(state: dict, stage: str) -> bool:
    return bool(state.get("stages", {}).get(stage, {}).get("done"))


def _mark(model_dir: Path, state: dict, stage: str, **info) -> None:
    state.setdefault("stages", {})[stage] = {"done": True, **info}
    distributed.run_on_main(lambda: write_json(model_dir / STATE_FILE, state))


def meta_cases(
    dataset: Dataset,
    stage2_dir: str | Path,
    sets: Sequence[str],
    target_spacing: Sequence[float] | None = None,
) -> list[dict]:
    """The meta-model's training samples: every training image (on the grid of
    ``target_spacing`` where its own differs) with its A(Y) and PL ``sets``, all in memory
    (``train`` reads them from a case store instead: :func:`run_meta_stage`)."""
    from sparseseg.pseudolabels import read_meta_case, training_case

    return [
        read_meta_case(
            stage2_dir, case, sets, training_case(dataset, case, "Tr", target_spacing)["image"]
        )
        for case in dataset.cases("Tr")
    ]


def meta_weights_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / STAGE3_DIR / "meta.pt"


def run_meta_stage(
    dataset: Dataset,
    model_dir: Path,
    preset,
    *,
    resume: bool,
    device: str | None,
    progress: bool,
    log: Callable[[str], None],
) -> dict:
    """Train the meta-model on the PL sets of stage 2; write meta.pt and selftrain.json."""
    from sparseseg.bundle import ModelPart, load_bundle, save_bundle
    from sparseseg.data.store import CACHE_DIR, meta_store
    from sparseseg.models.meta import meta_arch, meta_kwargs
    from sparseseg.pseudolabels import MODEL2D, MODEL3D, PART, model_path, pl_sets, preset_bundle
    from sparseseg.selftrain import train_meta

    stage_dir = model_dir / STAGE3_DIR
    stage_dir.mkdir(parents=True, exist_ok=True)
    sets = pl_sets(preset.planes)
    cases = distributed.run_on_main(
        lambda: meta_store(
            dataset, model_dir / STAGE2_DIR, sets, model_dir / CACHE_DIR, preset.target_spacing
        )
    )
    init_state = None
    if preset.meta.init != "scratch":
        name = MODEL2D if preset.meta.init == "2d" else MODEL3D
        base = load_bundle(model_path(model_dir / STAGE2_DIR, name))
        init_state = base.parts[PART[name]].state_dict
    t0 = time.perf_counter()
    result = train_meta(
        cases,
        dataset.num_classes,
        preset,
        stage_dir / "meta.ckpt",
        pl_names=sets,
        resume=resume,
        device=device,
        progress=progress,
        log=log,
        init_state=init_state,
    )
    seconds = round(time.perf_counter() - t0, 1)
    part = ModelPart(
        meta_arch(preset.meta),
        meta_kwargs(preset.meta, dataset.num_classes, dataset.num_channels, preset.model2d),
        {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
    )
    log_data = {
        "pl_sets": list(sets),
        "cases": dataset.cases("Tr"),
        "iterations": preset.meta.train.iterations,
        "stage1_iterations": preset.meta.stage1_iterations,
        "init": preset.meta.init,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "settled_at": result.settled_at,
        "seconds_last_run": seconds,
        "nnfit": result.nnfit.to_dict(),
        "history": result.history,
    }

    def write() -> None:
        save_bundle(preset_bundle({"meta": part}, dataset, preset), meta_weights_path(model_dir))
        write_json(stage_dir / "selftrain.json", log_data)

    distributed.run_on_main(write)
    return {
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "settled_at": result.settled_at,
        "seconds": seconds,
    }


def make_bundle(dataset: Dataset, model_dir: Path, preset) -> Path:
    """Assemble MODEL/bundle.pt from the parts of the stage-2 base models' bundles and the
    stage-3 meta-model's bundle."""
    from sparseseg.bundle import load_bundle, save_bundle
    from sparseseg.pseudolabels import MODEL2D, MODEL3D, model_path, preset_bundle

    stage2 = model_dir / STAGE2_DIR
    files = (model_path(stage2, MODEL2D), model_path(stage2, MODEL3D), meta_weights_path(model_dir))
    parts = {name: part for file in files for name, part in load_bundle(file).parts.items()}
    bundle = preset_bundle(
        parts,
        dataset,
        preset,
        {
            "dataset": dataset.name,
            "training_cases": len(dataset.cases("Tr")),
            "fingerprint": fingerprint.read(model_dir),  # what the model was made from
        },
    )
    return save_bundle(bundle, model_dir)


def score_test_split(
    dataset: Dataset,
    model_dir: Path,
    planes: Sequence[str],
    *,
    device: str | None,
    progress: bool,
) -> dict:
    """Predict the test split with the meta-model and each base model (the 2D model along its
    trained ``planes``), score each, write MODEL/report.json."""
    from sparseseg.predict import parts_for_planes, predict_files

    pred_root = model_dir / TEST_DIR
    parts = parts_for_planes(planes)
    predict_files(
        model_dir,
        dataset.root / "imagesTs",
        pred_root,
        parts=parts,
        device=device,
        progress=progress,
        overwrite=False,
    )
    return distributed.run_on_main(lambda: score_predictions(dataset, model_dir, pred_root, parts))


def score_predictions(
    dataset: Dataset, model_dir: Path, pred_root: Path, parts: Sequence[str]
) -> dict:
    """Score the test predictions PRED_ROOT/PART of each part against labelsTs; write
    MODEL/report.json and return it (per part: Dice per class, their mean, Rand F on EM)."""
    from sparseseg.evaluation import evaluate

    report: dict[str, Any] = {"split": "Ts", "cases": len(dataset.cases("Ts")), "parts": {}}
    for part in parts:
        scores = evaluate(
            pred_root / part, dataset.root, out=pred_root / part / "metrics.json", split="Ts"
        )
        summary = scores["summary"]
        dice = {k: v["dice"]["mean"] for k, v in summary["classes"].items()}
        entry = {"dice": dice, "mean_dice": _mean(dice.values())}
        for key in ("hvsmr_score", "rand_f"):
            if key in summary and summary[key].get("mean") is not None:
                entry[key] = summary[key]["mean"]
        report["parts"][part] = entry
    write_json(model_dir / REPORT_FILE, report)
    return report


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def format_report(report: dict) -> str:
    """A small table: one row per part with per-class Dice and the mean."""
    parts = report["parts"]
    classes = list(next(iter(parts.values()))["dice"])
    width = max(len(c) for c in classes + ["mean"]) + 2
    head = "part  " + "".join(f"{c:>{width}}" for c in [*classes, "mean"])
    rows = [f"Dice on the test split ({report['cases']} cases)", head]
    for part, entry in parts.items():
        cells = [entry["dice"][c] for c in classes] + [entry["mean_dice"]]
        rows.append(f"{part:<6}" + "".join(f"{_fmt(v):>{width}}" for v in cells))
    return "\n".join(rows)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def train(
    dataset: Dataset | str | Path,
    model_dir: str | Path,
    preset: str = DEFAULT_PRESET,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run Step II and Step III into ``model_dir``; return the pipeline state (MODEL/pipeline.json).

    ``preset``: a name in :data:`sparseseg.config.PRESETS`, with ``overrides`` as in
    :func:`sparseseg.config.get_preset`; ``auto`` is planned for the dataset
    (:func:`sparseseg.planning.plan_preset`, MODEL/plan.json).
    With ``report`` and a labelled test split, the test cases are predicted by every part and
    scored (MODEL/report.json, also under the state's 'report' key).
    An existing ``model_dir`` is continued only if it was made from the same data and settings
    (its fingerprint: the training and test splits, dataset.json and the resolved preset); else
    InputError, unless ``overwrite`` (then it is replaced once the new model is complete; see
    :mod:`sparseseg.output_folder`). ``resume`` continues interrupted training from its
    checkpoints.
    """
    from sparseseg.config import get_preset
    from sparseseg.data.store import CACHE_DIR
    from sparseseg.pseudolabels import remove_cache, run_step2

    say = log if log is not None and distributed.is_main() else (lambda _msg: None)
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    if not dataset.has_labels("Tr"):
        raise InputError("training needs a label file for every case in imagesTr", dataset.root)
    try:
        cfg = get_preset(preset, overrides)
    except ValueError as exc:
        raise InputError(f"bad settings: {exc}") from None
    out_dir = Path(model_dir)
    settings = {"preset": fingerprint.plain(cfg.to_dict())}
    current = fingerprint.make(fingerprint.dataset_fingerprint(dataset), settings)
    model_dir = distributed.run_on_main(
        lambda: output_folder.claim(out_dir, current, overwrite=overwrite, what="model folder")
    )
    if preset == "auto":
        # planned inside the folder (MODEL/plan.json, reused by a rerun): the fingerprint
        # records what was asked for, the state the plan that was measured
        from sparseseg.planning import plan_preset

        cfg = plan_preset(dataset, overrides, device=device, model_dir=model_dir, log=say)
    state = read_state(model_dir) or {"stages": {}}
    state.update(
        {
            "dataset": str(dataset.root.resolve()),
            "class_names": dataset.class_names,
            "preset": fingerprint.plain(cfg.to_dict()),
        }
    )
    distributed.run_on_main(lambda: write_json(model_dir / STATE_FILE, state))

    def stage(name: str, fn: Callable[[], dict], folder: str | None = None) -> None:
        if stage_done(state, name):
            say(f"{name}: done already, skipped")
            return
        if resume:
            say(f"{name}: running (resuming)")
        elif folder is not None and any((model_dir / folder).rglob("*.ckpt")):
            say(
                f"{name}: running again from the start "
                f"(--resume continues the checkpoints in {folder})"
            )
        else:
            say(f"{name}: running")
        t0 = time.perf_counter()
        info = fn() or {}
        _mark(model_dir, state, name, **{"seconds": round(time.perf_counter() - t0, 1), **info})

    def step2() -> dict:
        summary = run_step2(
            dataset,
            model_dir / STAGE2_DIR,
            cfg,
            resume=resume,
            device=device,
            progress=progress,
            cache_dir=model_dir / CACHE_DIR,
        )
        return {"cases": len(summary["cases"])}

    stage("pseudolabels", step2, STAGE2_DIR)
    stage(
        "meta",
        lambda: run_meta_stage(
            dataset, model_dir, cfg, resume=resume, device=device, progress=progress, log=say
        ),
        STAGE3_DIR,
    )
    distributed.run_on_main(lambda: remove_cache(model_dir))  # no later stage reads it

    def bundle() -> dict:
        path = distributed.run_on_main(lambda: make_bundle(dataset, model_dir, cfg))
        return {"file": str(out_dir / path.relative_to(model_dir))}

    stage("bundle", bundle)
    if report and dataset.has_labels("Ts"):

        def scores() -> dict:
            try:
                score_test_split(dataset, model_dir, cfg.planes, device=device, progress=progress)
            except InputError as exc:  # e.g. sparse test labels: the model itself is fine
                say(f"report: not written ({exc})")
                return {"skipped": str(exc)}
            return {"file": str(out_dir / REPORT_FILE)}

        stage("report", scores)
    distributed.run_on_main(lambda: output_folder.commit(model_dir, out_dir))
    report_path = out_dir / REPORT_FILE
    if report and report_path.exists():
        state["report"] = json.loads(report_path.read_text())
    return state
