"""Peak resident memory of ``select``, ``train`` and ``predict`` on a dataset larger than memory.

Generates ``--cases`` synthetic volumes of ``--size``^3 voxels (uint8 images, sparse uint8 labels,
uncompressed NIfTI, written one case at a time), then runs in child processes, each measured by
its own peak resident set (VmHWM of /proc/PID/status, read by the child at exit):

* with ``--select`` (or ``--select-only``), first ``select`` (representative, the VGG-19
  auto-encoder's features; its trunk keeps its random initialisation where no ImageNet weights
  are installed, which costs the same memory) with ``--select-steps`` auto-encoder steps and
  ``--select-image-size`` (default: the automatic size, 128 px for 256^3);
* ``train`` (the whole pipeline) with a tiny schedule: few iterations, small patches, tiny
  widths (the point is memory, not quality); with ``--base-only`` only the store build and the
  two base models of Step II (:func:`sparseseg.pseudolabels.train_base_models`), which read every
  training case, while the rest of ``train`` works one case at a time;
* ``predict`` of the first test image, then of all ``--test-cases`` test images: memory should
  stay flat per case. With ``--base-only`` the bundle comes from a ``train`` on a small copy
  (``--bundle-cases`` cases of ``--bundle-size``^3).

Prints a table against the size of the training images as float32. Example (the full scale)::

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/large_dataset.py --root /tmp/large \\
        --cases 60 --size 256 --test-cases 2

The data (~2 GB for 60 cases) and the model folder are deleted at the end unless ``--keep``. The
model folder holds ~7 GB per 10 cases of 256^3 at its largest, before its case stores are
deleted (train store 0.9, meta-model store 3.1, pseudo-labels and A(Y) as uncompressed NIfTI
2.5): 42 GB in all for 60 cases with the data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LABELS = {"background": 0, "ball": 1, "shell": 2, "ignore": 3}
TINY = {
    "model2d.base_channels": 4,
    "model2d.depth": 2,
    "train2d.iterations": 4,
    "train2d.batch_size": 2,
    "train2d.patch": "32x32",
    "model3d.stem_channels": 4,
    "model3d.growth": 4,
    "model3d.block_layers": "1,1",
    "model3d.up_channels": "4,4",
    "train3d.iterations": 4,
    "train3d.batch_size": 1,
    "train3d.patch": "32x32x32",
    "inference.patch": "64x64x64",
    "meta.model.stem_channels": 4,
    "meta.model.growth": 4,
    "meta.model.block_layers": "1,1",
    "meta.model.up_channels": "4,4",
    "meta.ay_stem_channels": 4,
    "meta.train.batch_size": 1,
    "meta.train.patch": "32x32x32",
    "meta.train.iterations": 4,
    "meta.stage1_iterations": 2,
    "meta.nnfit_round_iterations": 2,
}
GIB = 2.0**30


# Data -----------------------------------------------------------------------------------------
def write_case(root: Path, split: str, case: str, size: int, seed: int, sparse: bool) -> None:
    """One synthetic case: a ball in a shell over noise, uint8 image and (sparse) uint8 label."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[:size, :size, :size]
    c = size / 2 + rng.uniform(-size / 8, size / 8, 3)
    r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2  # float64 (size^3), one at a time
    label = np.zeros((size,) * 3, np.uint8)
    label[r2 < (size / 4) ** 2] = 2
    label[r2 < (size / 5) ** 2] = 1
    del r2
    image = rng.integers(0, 60, label.shape, dtype=np.uint8)
    image += label * 70
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    (root / f"images{split}").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(root / f"images{split}" / f"{case}_0000.nii"))
    if sparse:  # every 32nd slice of each plane annotated
        keep = np.zeros(label.shape, bool)
        keep[::32] = keep[:, ::32] = keep[:, :, ::32] = True
        label[~keep] = LABELS["ignore"]
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, affine), str(root / f"labels{split}" / f"{case}.nii"))


def make_dataset(root: Path, cases: int, size: int, test_cases: int) -> None:
    from sparseseg.data.layout import write_dataset_json

    for i in range(cases):
        write_case(root, "Tr", f"vol_{i:03d}", size, i, sparse=True)
    for i in range(test_cases):
        write_case(root, "Ts", f"test_{i:03d}", size, 10_000 + i, sparse=False)
    write_dataset_json(root, LABELS, num_training=cases, file_ending=".nii")


# Measuring ------------------------------------------------------------------------------------
CHILD = r"""
import json, sys
from pathlib import Path
what, args, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if what == "cli":
    from sparseseg.cli import main
    rc = main(args)
else:
    from sparseseg.config import get_preset
    from sparseseg.pseudolabels import train_base_models
    train_base_models(args[0], args[1], get_preset("cpu", args[2]), device="cpu", progress=False)
    rc = 0
status = Path("/proc/self/status").read_text().splitlines()
kb = {l.split(":")[0]: int(l.split()[1]) for l in status if l.startswith(("VmHWM", "VmRSS"))}
Path(out).write_text(json.dumps({"rc": rc, "peak_kb": kb["VmHWM"]}))
"""


def measured(what: str, args: list, scratch: Path) -> dict:
    """Run ``what`` ('cli': sparseseg ARGS; 'base': train_base_models) in a child process;
    return its exit code, peak RSS (bytes) and wall time (s)."""
    out = scratch / f"peak_{time.monotonic_ns()}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, what, json.dumps(args), str(out)], env=os.environ
    )
    seconds = time.perf_counter() - t0
    res = json.loads(out.read_text()) if out.exists() else {"rc": proc.returncode}
    if proc.returncode != 0 or res["rc"] != 0:
        raise SystemExit(f"{what} {args} failed with exit code {res['rc']}")
    return {"peak": res["peak_kb"] * 1024.0, "seconds": seconds}


def settings(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/sparseseg_large"))
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--test-cases", type=int, default=2)
    ap.add_argument("--base-only", action="store_true", help="Step II base models, not train")
    ap.add_argument("--bundle-cases", type=int, default=3)
    ap.add_argument("--bundle-size", type=int, default=64)
    ap.add_argument("--no-predict", action="store_true", help="measure train only")
    ap.add_argument("--select", action="store_true", help="also measure select (first)")
    ap.add_argument("--select-only", action="store_true", help="measure select only")
    ap.add_argument("--select-steps", type=int, default=20, help="auto-encoder steps")
    ap.add_argument("--select-image-size", type=int, default=None, help="VGG input size (px)")
    ap.add_argument("--keep", action="store_true", help="keep the data and model folders")
    a = ap.parse_args(argv)

    root = a.root
    if root.exists():
        raise SystemExit(f"{root} exists; remove it first")
    data, model = root / "data", root / "model"
    root.mkdir(parents=True)
    rows = []
    try:
        t0 = time.perf_counter()
        make_dataset(data, a.cases, a.size, a.test_cases)
        image_bytes = a.cases * a.size**3 * 4.0
        print(
            f"generated {a.cases} + {a.test_cases} cases of {a.size}^3 in "
            f"{time.perf_counter() - t0:.0f} s; training images as float32: "
            f"{image_bytes / GIB:.2f} GiB",
            flush=True,
        )
        cpu = ["--device", "cpu", "--quiet"]
        if a.select or a.select_only:
            args = ["select", str(data), "--budget", "10", "--out", str(root / "sel")]
            args += ["--steps", str(a.select_steps), *cpu]
            if a.select_image_size is not None:
                args += ["--image-size", str(a.select_image_size)]
            rows.append(("select (ra, VGG-19 auto-encoder)", a.cases, measured("cli", args, root)))
            if a.select_only:
                return report(rows, image_bytes)
        if a.base_only:
            r = measured("base", [str(data), str(root / "base"), TINY], root)
            rows.append(("Step II base models (store + 2D + 3D)", a.cases, r))
            small = root / "small"
            make_dataset(small, a.bundle_cases, a.bundle_size, 0)
            r = measured(
                "cli",
                [
                    "train",
                    str(small),
                    "--out",
                    str(model),
                    "--preset",
                    "cpu",
                    *settings(TINY),
                    *cpu,
                ],
                root,
            )
            rows.append((f"train (bundle, {a.bundle_size}^3 cases)", a.bundle_cases, r))
        else:
            r = measured(
                "cli",
                ["train", str(data), "--out", str(model), "--preset", "cpu", *settings(TINY), *cpu],
                root,
            )
            rows.append(("train", a.cases, r))
        if a.no_predict:
            return report(rows, image_bytes)
        first = sorted((data / "imagesTs").iterdir())[0]
        r = measured(
            "cli", ["predict", str(model), str(first), "--out", str(root / "p1"), *cpu], root
        )
        rows.append(("predict, 1 test case", 1, r))
        r = measured(
            "cli",
            ["predict", str(model), str(data / "imagesTs"), "--out", str(root / "pall"), *cpu],
            root,
        )
        rows.append(("predict, all test cases", a.test_cases, r))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(rows, image_bytes)


def report(rows: list, image_bytes: float) -> None:
    print(f"\n{'run':<40}{'cases':>6}{'peak RSS GiB':>14}{'/ images f32':>14}{'seconds':>9}")
    for name, n, r in rows:
        print(
            f"{name:<40}{n:>6}{r['peak'] / GIB:>14.2f}{r['peak'] / image_bytes:>14.3f}"
            f"{r['seconds']:>9.0f}"
        )


if __name__ == "__main__":
    main()
