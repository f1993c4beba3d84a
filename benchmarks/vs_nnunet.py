"""Side by side with nnU-Net: the same sparse labels, the same wall-clock budget, one scorer.

The real ``nnunetv2`` package (the ``nnunet`` extra, with ``dynamic-network-architectures``;
``make install`` puts both in .venv) plans, preprocesses and trains its default 3d_fullres
configuration on a sparse dataset written by ``sparseseg select`` or ``experiment`` (our layout
is its raw layout, the ``ignore`` label included), on all training cases (fold ``all``), for
``--minutes`` of training on this machine; its poly schedule is stretched to end at the budget
from the measured epoch time. It then predicts the test split (imagesTs, nnU-Net's default
test-time mirroring unless ``--no-mirroring``), and sparseseg's ``evaluate`` scores its
predictions on labelsTs. With ``--ours``, an ``experiment`` run folder trained on the same
dataset, its rows (same test cases, same scorer) are printed beside nnU-Net's.

    PYTHONPATH=src .venv/bin/python benchmarks/vs_nnunet.py \\
        hippo_auto/runs/ra-s20-seed0/selection/dataset --out vs_nnunet --minutes 30 \\
        --ours hippo_auto/runs/ra-s20-seed0

Writes OUT/vs_nnunet.json and OUT/vs_nnunet.md; nnU-Net's folders are under OUT/nnunet.
nnU-Net trains in float32 on a CPU (its mixed precision is for CUDA) and uses its GPU plan
(patch and batch size from a GPU memory target), as a user running it here would get.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DATASET_ID = 501
CONFIGURATION = "3d_fullres"


def _setup_environment(work: Path, workers: int) -> None:
    """nnU-Net reads its folders and switches from the environment when it is imported."""
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(work / name)
    os.environ["nnUNet_compile"] = "f"  # nnU-Net disables torch.compile on a CPU anyway
    os.environ["nnUNet_n_proc_DA"] = str(workers)


def _link_raw(dataset: Path, work: Path) -> str:
    """Expose the sparse dataset as nnU-Net's DatasetNNN_NAME (a symbolic link, read only)."""
    name = f"Dataset{DATASET_ID}_Sparse"
    link = work / "raw" / name
    if link.is_symlink() or link.exists():
        if link.resolve() != dataset.resolve():
            sys.exit(f"{link} points at {link.resolve()}, not {dataset}: use another --out")
    else:
        link.symlink_to(dataset.resolve(), target_is_directory=True)
    return name


def _budget_trainer(minutes: float, iterations_per_epoch: int):
    """nnUNetTrainer whose run ends after ``minutes`` of training; the poly schedule's length
    is re-estimated after every epoch from the epochs' median time, so it ends at the budget."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    CPU = torch.device("cpu")

    class BudgetTrainer(nnUNetTrainer):
        # nnU-Net records its constructor's arguments by name: the same signature, spelled out.
        def __init__(self, plans, configuration, fold, dataset_json, device=CPU):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iterations_per_epoch
            self.num_val_iterations_per_epoch = max(1, iterations_per_epoch // 10)
            self.budget_seconds = minutes * 60.0
            self.iterations_done = 0

        def run_training(self) -> None:
            start, epoch_seconds = time.perf_counter(), []
            self.on_train_start()
            while True:
                t0 = time.perf_counter()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations_done += len(outputs)
                self.on_train_epoch_end(outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [
                        self.validation_step(next(self.dataloader_val))
                        for _ in range(self.num_val_iterations_per_epoch)
                    ]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                epoch_seconds.append(time.perf_counter() - t0)
                left = self.budget_seconds - (time.perf_counter() - start)
                more = int(left // float(np.median(epoch_seconds)))
                self.num_epochs = self.current_epoch + max(more, 0)
                self.lr_scheduler.max_steps = max(self.num_epochs, self.current_epoch + 1)
                if more <= 0:
                    break
            self.on_train_end()

    return BudgetTrainer


def run_nnunet(
    dataset: Path, work: Path, minutes: float, iterations_per_epoch: int, mirroring: bool
) -> dict:
    """Plan, preprocess, train and predict with nnU-Net; returns timings and the prediction
    folder (reuses a finished training)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_preprocessed

    name = _link_raw(dataset, work)
    record: dict = {"dataset": str(dataset), "configuration": CONFIGURATION}
    pre = Path(nnUNet_preprocessed) / name
    t0 = time.perf_counter()
    if not (pre / "nnUNetPlans.json").exists():
        extract_fingerprints([DATASET_ID], num_processes=2, check_dataset_integrity=True)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(2,))
    record["preprocess_seconds"] = round(time.perf_counter() - t0, 1)
    plans = load_json(str(pre / "nnUNetPlans.json"))
    config = plans["configurations"][CONFIGURATION]
    record["plan"] = {
        "patch": config["patch_size"],
        "batch": config["batch_size"],
        "features": config["architecture"]["arch_kwargs"]["features_per_stage"],
    }

    trainer_class = _budget_trainer(minutes, iterations_per_epoch)
    plans["continue_training"] = False
    trainer = trainer_class(
        plans=plans,
        configuration=CONFIGURATION,
        fold="all",
        dataset_json=load_json(str(pre / "dataset.json")),
        device=torch.device("cpu"),
    )
    model_dir = Path(trainer.output_folder_base)
    done = model_dir / "training.json"
    if done.exists():
        record.update(json.loads(done.read_text()))
    else:
        t0 = time.perf_counter()
        trainer.run_training()
        trained = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "epochs": trainer.current_epoch,
            "iterations": trainer.iterations_done,
        }
        done.write_text(json.dumps(trained))
        record.update(trained)

    pred = work / "test_predictions"
    t0 = time.perf_counter()
    # The network from the trainer: nnU-Net's own loader imports every trainer class it ships,
    # some of which need timm, which the nnunet extra leaves out (it would replace the CPU torch).
    checkpoint = Path(trainer.output_folder) / "checkpoint_final.pth"
    trainer.load_checkpoint(str(checkpoint))
    trainer.set_deep_supervision_enabled(False)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    predictor = nnUNetPredictor(
        use_mirroring=mirroring, perform_everything_on_device=False, device=torch.device("cpu")
    )
    predictor.manual_initialization(
        trainer.network,
        trainer.plans_manager,
        trainer.configuration_manager,
        [saved["network_weights"]],
        trainer.dataset_json,
        "nnUNetTrainer",
        saved["inference_allowed_mirroring_axes"],
    )
    predictor.predict_from_files(
        str(dataset / "imagesTs"),
        str(pred),
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )
    record["predict_seconds"] = round(time.perf_counter() - t0, 1)
    record["mirroring"] = mirroring
    record["predictions"] = str(pred)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="sparse dataset folder with imagesTs, labelsTs")
    parser.add_argument("--out", type=Path, required=True, help="work and result folder")
    parser.add_argument("--minutes", type=float, default=30.0, help="nnU-Net's training budget")
    parser.add_argument("--ours", type=Path, help="experiment run folder (its result.json)")
    parser.add_argument("--iterations-per-epoch", type=int, default=25)
    parser.add_argument("--workers", type=int, default=1, help="nnU-Net augmentation processes")
    parser.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring")
    args = parser.parse_args()

    work = args.out.resolve() / "nnunet"
    _setup_environment(work, args.workers)
    from sparseseg import api

    dataset = args.dataset.resolve()
    record = run_nnunet(
        dataset, work, args.minutes, args.iterations_per_epoch, not args.no_mirroring
    )
    metrics = api.evaluate(
        record["predictions"], dataset, out=args.out / "nnunet_metrics.json", split="Ts"
    )
    per_class = {n: c["dice"]["mean"] for n, c in metrics["summary"]["classes"].items()}
    names = list(per_class)
    header = f"| system | training (min) | iterations | {' | '.join(names)} | mean Dice |"
    lines = [header, "|" + "---|" * (len(names) + 4)]

    def add(system: str, minutes: float, iterations: str, dice: list[float]) -> None:
        values = " | ".join(f"{d:.3f}" for d in dice)
        lines.append(f"| {system} | {minutes:.1f} | {iterations} | {values} |")

    record["dice"] = {**per_class, "mean": sum(per_class.values()) / len(per_class)}
    add(
        f"nnU-Net {CONFIGURATION} (nnunetv2)",
        record["train_seconds"] / 60,
        str(record["iterations"]),
        list(record["dice"].values()),
    )
    if args.ours:
        rows = json.loads((args.ours / "result.json").read_text())["rows"]
        record["ours"] = {}
        for model in dict.fromkeys(r["model"] for r in rows):
            dice = {r["class"]: r["dice"] for r in rows if r["model"] == model}
            seconds = next(r["train_seconds"] for r in rows if r["model"] == model)
            record["ours"][model] = {"train_seconds": seconds, "dice": dice}
            add(f"sparseseg {model}", seconds / 60, "", [dice[n] for n in [*names, "mean"]])
    table = "\n".join(lines)
    print(table)
    print(
        f"nnU-Net: plan {record['plan']}, preprocessing {record['preprocess_seconds']:.0f} s, "
        f"{record['epochs']} epochs, prediction {record['predict_seconds']:.0f} s"
    )
    (args.out / "vs_nnunet.json").write_text(json.dumps(record, indent=2))
    (args.out / "vs_nnunet.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
