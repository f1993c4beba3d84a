"""Peak memory of ``sparseseg predict`` and of pseudo-label generation on one large volume.

Writes an untrained cpu-preset bundle (3 classes) and a random int16 volume of ``--shape`` under
``--work``, then runs each measured step in a fresh child process and reports its peak resident
set size (``ru_maxrss`` of the child) and wall time as one JSON line per step:

    .venv/bin/python benchmarks/large_volume.py --shape 300x512x512 --work /tmp/large
    .venv/bin/python benchmarks/large_volume.py --shape 300x512x512 --work /tmp/large \\
        --steps predict,pseudolabel

``predict`` is the real command (``python -m sparseseg predict MODEL IMAGE --out DIR``);
``pseudolabel`` is :func:`sparseseg.pseudolabels.generate_pseudolabels` on a one-case dataset
(sparse labels: one annotated slice per plane) with the same base models. Untrained weights cost
the same memory and time as trained ones. Files are uncompressed NIfTI (``.nii``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLASSES = ["background", "a", "b"]

PSEUDOLABEL = r"""
import sys
from sparseseg.config import get_preset
from sparseseg.pseudolabels import generate_pseudolabels
generate_pseudolabels(sys.argv[1], sys.argv[2], get_preset("cpu"), progress=False)
"""


def prepare(work: Path, shape: tuple[int, int, int]) -> None:
    """The bundle (work/model), the image (work/big_0000.nii) and a one-case sparse dataset with
    the base models in work/step2/models (skipped where they exist)."""

    import numpy as np

    from sparseseg.bundle import Bundle, ModelPart, save_bundle
    from sparseseg.config import get_preset
    from sparseseg.data.io import write_nifti
    from sparseseg.data.layout import write_dataset_json
    from sparseseg.data.volume import Volume
    from sparseseg.models import base_part, build_model2d, build_model3d
    from sparseseg.models.meta import build_meta, meta_kwargs

    p, c = get_preset("cpu"), len(CLASSES)
    if not (work / "model" / "bundle.pt").exists():
        m2, m3, mm = (
            build_model2d(p.model2d, 1, c),
            build_model3d(p.model3d, 1, c),
            build_meta(p.meta, c),
        )
        parts = {
            "2d": base_part(m2, "unet2d", p.model2d),
            "3d": base_part(m3, "densevoxnet", p.model3d),
            "meta": ModelPart("ydensevoxnet", meta_kwargs(p.meta, c), mm.state_dict()),
        }
        (work / "model").mkdir(parents=True, exist_ok=True)
        config = json.loads(json.dumps(p.to_dict()))
        save_bundle(Bundle(parts, CLASSES, "cpu", config), work / "model")
        for name in ("2d", "3d"):  # the base models as Step II saves them: one part each
            one = Bundle({name: parts[name]}, CLASSES, "cpu", config)
            save_bundle(one, work / "step2" / "models" / f"model{name}.pt")
    image = work / "data" / "imagesTr" / "big_0000.nii"
    if not image.exists():
        rng = np.random.default_rng(0)
        volume = Volume(rng.integers(0, 2000, shape).astype(np.int16), np.eye(4))
        write_nifti(image, volume)
        label = np.full(shape, c, np.uint8)  # all 'ignore' but one slice per plane
        label[shape[0] // 2] = label[:, shape[1] // 2] = label[:, :, shape[2] // 2] = 1
        write_nifti(work / "data" / "labelsTr" / "big.nii", volume.with_array(label))
        labels = {name: i for i, name in enumerate(CLASSES)} | {"ignore": c}
        write_dataset_json(work / "data", labels, 1, file_ending=".nii")


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` as a child; its own peak RSS (GiB), CPU and wall seconds."""
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed with exit code {proc.returncode}")
    return {
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),  # ru_maxrss is in KiB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="300x512x512", help="X x Y x Z (default 300x512x512)")
    parser.add_argument(
        "--work", required=True, help="scratch folder (several GB for large shapes)"
    )
    parser.add_argument("--steps", default="predict", help="predict, pseudolabel or both")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    work = Path(args.work)
    prepare(work, shape)
    image = work / "data" / "imagesTr" / "big_0000.nii"
    py = sys.executable
    for step in args.steps.split(","):
        if step == "predict":
            cmd = [py, "-m", "sparseseg", "predict", str(work / "model"), str(image)]
            cmd += ["--out", str(work / "pred"), "--device", "cpu", "--quiet"]
        elif step == "pseudolabel":
            cmd = [py, "-c", PSEUDOLABEL, str(work / "data"), str(work / "step2")]
        else:
            raise SystemExit(f"unknown step {step!r}")
        result = {"step": step, "shape": list(shape), **measure(cmd)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
