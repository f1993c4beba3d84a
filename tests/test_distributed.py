"""Two CPU processes under torchrun (gloo): DDP keeps weights in sync, resume is exact, and the
train pipeline writes one bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_preset import TINIER

from sparseseg import distributed
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import write_phantom_dataset

# Runs on every rank. 1) fit() on a small BatchNorm + dropout net whose ranks start from different
# weights: DDP must broadcast rank 0's and keep them equal, while each rank draws other batches.
# 2) The same fit killed after two steps and resumed must end where the unbroken run ends.
# 3) `sparseseg train` through the CLI, inside the same process group.
WORKER = r"""
import hashlib, json, sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from sparseseg import distributed
from sparseseg.cli import main
from sparseseg.config import TrainConfig
from sparseseg.training.loop import fit

out = Path(sys.argv[1])
with distributed.session("auto") as device:
    rank = distributed.rank()

    def digest(model):
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode() + v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def net():
        torch.manual_seed(100 + rank)  # different initial weights on each rank
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.3),
            nn.Conv2d(4, 2, 1),
        )

    seen = []

    def batches(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(2, 1, 8, 8, generator=g)
        seen.append(step)
        return {"image": x, "label": (x > 0).long()[:, 0]}

    def loss_fn(model, batch, step):
        out_ = model(batch["image"])
        return nn.functional.cross_entropy(out_, batch["label"]), {}

    cfg = TrainConfig(iterations=4, lr=1e-2, precision="fp32", checkpoint_every=1, log_every=1)
    model = net()
    before = digest(model)
    history = fit(model, batches, loss_fn, cfg, out / "a.ckpt", progress=False)
    result = {"rank": rank, "before": before, "after": digest(model), "draws": seen[:],
              "history": history, "device": str(device)}

    class Crash(Exception):
        pass

    def crashing(step):
        if step >= 2 * distributed.world_size():  # draws of step 2 onwards
            raise Crash
        return batches(step)

    model = net()
    try:
        fit(model, crashing, loss_fn, cfg, out / "b.ckpt", progress=False)
    except Crash:
        pass
    model = net()
    fit(model, batches, loss_fn, cfg, out / "b.ckpt", resume=True, progress=False)
    result["resumed"] = digest(model)
    if rank == 0:
        state = torch.load(out / "b.ckpt", weights_only=True)
        result["rng_ranks"] = len(state["rng_ranks"])

    code = main(["train", sys.argv[2], "--out", str(out / "model"), "--preset", "cpu", "--quiet",
                 *[a for k, v in json.loads(sys.argv[3]).items() for a in ("--set", f"{k}={v}")]])
    result["code"] = code
    (out / f"rank{rank}.json").write_text(json.dumps(result))
"""


def sparse_dataset(root: Path) -> Path:
    """Two heart phantoms labelled on every 4th slice of each plane, one dense test case."""
    dense = write_phantom_dataset(
        root / "dense", "heart", cases=2, seed=0, test_cases=1, shape=(24, 24, 16)
    )
    ds = Dataset.open(dense)
    out, ignore = root / "sparse", ds.num_classes
    for case in ds.cases("Tr"):
        image, label = ds.load_pair(case)
        keep = np.zeros(label.shape, bool)
        keep[::4] = keep[:, ::4] = keep[:, :, ::4] = True
        write_case(out, case, image, image.with_array(np.where(keep, label.array, ignore)))
    for case in ds.cases("Ts"):
        image, label = ds.load_pair(case, "Ts")
        write_case(out, case, image, label, "Ts")
    write_dataset_json(out, {**ds.class_labels, "ignore": ignore}, 2)
    return out


def test_single_process_helpers():
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.gather_sharded(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    assert distributed.run_on_main(lambda: 5) == 5
    assert distributed.all_reduce_sum([1, 2.5], None) == [1.0, 2.5]


def test_torchrun_two_cpu_ranks(tmp_path):
    dataset = sparse_dataset(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARS}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path), str(dataset), json.dumps(TINIER)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))

    # fit(): different starting weights, different batches, the same weights after every step.
    assert r0["before"] != r1["before"]
    assert r0["after"] == r1["after"] != r0["before"]
    assert r0["draws"] == [0, 2, 4, 6] and r1["draws"] == [1, 3, 5, 7]
    assert r0["device"] == r1["device"] == "cpu"
    # The logged loss is the mean over both ranks, so both histories agree.
    assert [h["loss"] for h in r0["history"]] == [h["loss"] for h in r1["history"]]
    # Killed after two steps and resumed: the same weights as the unbroken run.
    assert r0["resumed"] == r1["resumed"] == r0["after"]
    assert r0["rng_ranks"] == 2

    # The pipeline: one bundle, every stage done, log and results printed once.
    assert r0["code"] == r1["code"] == 0
    model = tmp_path / "model"
    assert sorted(p.name for p in model.glob("bundle*")) == ["bundle.json", "bundle.pt"]
    state = json.loads((model / "pipeline.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("pseudolabels", "meta", "bundle", "report"))
    for case in ("heart_000", "heart_001"):  # one case pseudo-labelled on each rank
        assert (model / "stage2_pseudolabels" / "pl_xy" / "labelsTr" / f"{case}.nii.gz").exists()
    log = json.loads((model / "stage3_meta" / "selftrain.json").read_text())
    assert log["steps"] == 4 and len(log["nnfit"]["rounds"]) == 2
    assert all(len(r["choice"]) == 2 for r in log["nnfit"]["rounds"])
    assert (model / "report.json").exists()
    assert proc.stdout.count("model bundle:") == 1
    assert proc.stderr.count("meta: running") == 1


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_device_choice_without_torchrun(device, monkeypatch):
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    expected = "cuda" if device == "auto" and distributed.torch.cuda.is_available() else "cpu"
    assert distributed.init_from_env(device).type == expected
    assert not distributed.is_distributed()
