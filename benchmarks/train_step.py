"""Throughput of the 3D base model: training steps and sliding-window inference.

The model is the preset's 3D base model: DenseVoxNet (``cpu``, ``paper``) or DynUNet (``auto``,
unplanned: 16-32-64-128, isotropic pooling). Training: the same model, batch and optimizer step
(the preset's loss and optimizer: masked CE with deep supervision and Adam for DenseVoxNet,
masked CE + soft Dice and SGD for DynUNet) under fp32 and the faster CPU settings, side by
side; for DynUNet each setting also with torch's instance norm in place of the model's
group-norm form (docs/performance.md). Inference: plain fp32
``monai.inferers.sliding_window_inference`` against :func:`sparseseg.inference.predict_volume_3d`
(bf16 autocast), with the argmax agreement.

    .venv/bin/python benchmarks/train_step.py                 # cpu preset model, batch 2, 48^3
    .venv/bin/python benchmarks/train_step.py --compile       # also try torch.compile
    .venv/bin/python benchmarks/train_step.py --preset paper --patch 64 --batch 1 --steps 3
    .venv/bin/python benchmarks/train_step.py --preset auto --patch 48,64,48   # DynUNet
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
import types

import numpy as np
import torch

from sparseseg.config import get_preset
from sparseseg.inference import predict_volume_3d
from sparseseg.models import build_model3d
from sparseseg.runtime import autocast, cpu_supports_bf16
from sparseseg.training.loop import make_optimizer
from sparseseg.training.losses import segmentation_loss

IGNORE = 3


class TrainRun:
    """One training setting: its own copy of the model and optimizer; ``step()`` times one step."""

    def __init__(
        self, model, batch, bf16, channels_last, compile_model, train_cfg, torch_norm=False
    ):
        self.model = copy.deepcopy(model).train()
        if torch_norm:  # torch's own instance norm instead of the DynUNet group-norm form
            for module in self.model.modules():
                if isinstance(module, (torch.nn.InstanceNorm3d, torch.nn.InstanceNorm2d)):
                    module.forward = types.MethodType(_torch_instance_norm, module)
        self.image, self.label = batch
        self.cfg = train_cfg
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
            self.image = self.image.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer = make_optimizer(self.model.parameters(), train_cfg)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.precision = "bf16" if bf16 else "fp32"
        self.times: list[float] = []

    def step(self, record: bool) -> None:
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), self.precision):
            loss, _ = _loss(self.forward(self.image), self.label, self.cfg)
        loss.backward()
        self.optimizer.step()
        if record:
            self.times.append(time.perf_counter() - t0)


def _torch_instance_norm(self, x):
    """The DynUNet norm as it was before its group-norm form: torch's instance norm, float32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.nn.modules.instancenorm._InstanceNorm.forward(self, x.float()).to(x.dtype)


def _loss(outputs, label, cfg):
    return segmentation_loss(outputs, label, IGNORE, cfg.loss, cfg.aux_weight)


def synthetic(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random images (z-scored) and 3-class labels that follow them (thresholds), with
    every fourth xy slice annotated and the rest ignored."""
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(size=shape), (0, 3, 3, 3)[-len(shape) :])
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    label = np.digitize(image, (-0.5, 0.7)).astype(np.int64)
    label[..., np.arange(shape[-1]) % 4 != 0] = IGNORE
    return image, label


def warm_up_model(model, steps, patch, batch, train_cfg):
    """Train ``model`` briefly on synthetic data so its predictions are decisive (argmax
    agreement of an untrained, near-uniform model says little)."""
    optimizer = make_optimizer(model.parameters(), train_cfg)
    rng = np.random.default_rng(1)
    model.train()
    for _ in range(steps):
        image, label = synthetic(rng, (batch, *patch))
        optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), "auto"):
            out = model(torch.from_numpy(image)[:, None])
            loss, _ = _loss(out, torch.from_numpy(label), train_cfg)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def plain_monai(model, image, patch, overlap, sw_batch_size):
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            patch,
            sw_batch_size,
            lambda w: torch.softmax(model(w), 1),
            overlap,
            mode="gaussian",
        )
    return out[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=("cpu", "paper", "auto"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--patch", default="48", help="training/inference patch: 48 (cubic) or 48,64,48"
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--volume", default="96,96,64", help="inference volume X,Y,Z")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--model",
        default=None,
        help="a model bundle with a 3D part (e.g. OUT/models/model3d.pt) for inference",
    )
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    parser.add_argument("--image", default=None, help="a NIfTI image for inference (z-scored)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=30,
        help="warm-up training steps of the inference model when no --model is given",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = get_preset(args.preset)
    torch.manual_seed(0)
    model = build_model3d(preset.model3d, 1, 3)
    sizes = [int(p) for p in args.patch.split(",")]
    patch = tuple(sizes * 3 if len(sizes) == 1 else sizes)
    # the warm-up of the inference model: Adam 2e-3 (DenseVoxNet) or the preset's SGD
    warm_cfg = preset.train3d
    if warm_cfg.optimizer == "adam":
        warm_cfg = dataclasses.replace(warm_cfg, lr=2e-3)
    image_np, label_np = synthetic(np.random.default_rng(0), (args.batch, *patch))
    image, label = torch.from_numpy(image_np)[:, None], torch.from_numpy(label_np)
    print(
        f"{type(model).__name__} ({args.preset} preset, "
        f"{sum(p.numel() for p in model.parameters()):,} "
        f"parameters), batch {args.batch} x {patch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU bf16 support: {cpu_supports_bf16()}"
    )
    # name, bf16, channels-last, torch.compile, torch's instance norm
    settings = [
        ("fp32", False, False, False, False),
        ("fp32 + channels_last_3d", False, True, False, False),
        ("bf16 autocast", True, False, False, False),
        ("bf16 autocast + channels_last_3d", True, True, False, False),
    ]
    if args.preset == "auto":  # the DynUNet norm against torch's instance norm
        settings += [(f"{s[0]}, torch instance norm", *s[1:4], True) for s in settings]
    if args.compile:
        settings.append(("bf16 autocast + torch.compile", True, False, True, False))
        settings.append(("bf16 + channels_last_3d + torch.compile", True, True, True, False))
    emulated = not cpu_supports_bf16()
    if emulated:  # the engine never autocasts there, and emulated bf16 steps take minutes
        print("no native bf16 on this CPU: timing the fp32 settings only")
        settings = [s for s in settings if not s[1]]
    results = {"train": [], "inference": []}
    # Settings take turns step by step, so load changes on a shared machine hit all of them alike.
    runs = {}
    for name, bf16, cl, comp, torch_norm in [] if args.skip_train else settings:
        try:
            run = TrainRun(model, (image, label), bf16, cl, comp, preset.train3d, torch_norm)
            for _ in range(args.warmup + (2 if comp else 0)):
                run.step(record=False)
            runs[name] = run
        except Exception as exc:  # e.g. torch.compile without a C compiler
            print(f"{name}: failed: {type(exc).__name__}: {exc}"[:200])
    for _ in range(args.steps):
        for run in runs.values():
            run.step(record=True)
    if runs:
        print(f"\n{'training setting':46s} {'s/step':>8s} {'voxels/s':>11s} {'speed-up':>9s}")
    base = None
    nvox_batch = image.shape[0] * math.prod(image.shape[2:])
    for name, run in runs.items():
        step = statistics.median(run.times)
        vps = nvox_batch / step
        base = base or vps
        print(f"{name:46s} {step:8.3f} {vps:11.3g} {vps / base:8.2f}x")
        results["train"].append({"setting": name, "s_per_step": step, "voxels_per_s": vps})

    shape = tuple(int(s) for s in args.volume.split(","))
    volume, _ = synthetic(np.random.default_rng(2), shape)
    if args.image:
        from sparseseg.data.io import read_nifti
        from sparseseg.runtime import zscore

        volume = zscore(read_nifti(args.image).array)
        shape = volume.shape
    if args.model:
        from sparseseg.bundle import load_bundle

        model = load_bundle(args.model).build("3d")
    else:
        loss = warm_up_model(model, args.train_steps, patch, args.batch, warm_cfg)
        print(
            f"\n(inference model: {args.train_steps} training steps on synthetic data, "
            f"loss {loss:.3f})"
        )
    model.eval()
    sw = preset.inference.sw_batch_size
    candidates = {
        "plain fp32 sliding_window_inference": lambda: plain_monai(
            model, volume, patch, args.overlap, sw
        ),
    }
    for name, precision, cl in (
        ("predict_volume_3d fp32", "fp32", False),
        ("predict_volume_3d bf16", "bf16", False),
        ("predict_volume_3d bf16 + channels_last_3d", "bf16", True),
    ):
        if emulated and precision == "bf16":
            continue
        candidates[name] = lambda p=precision, c=cl: predict_volume_3d(
            model,
            volume,
            patch,
            args.overlap,
            sw_batch_size=sw,
            precision=p,
            channels_last=c,
            device="cpu",
        )
    best: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # round robin, best of ``repeats``
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - t0)
            model.to(memory_format=torch.contiguous_format)
    nvox = math.prod(shape)
    ref_name = next(iter(candidates))
    ref = outputs[ref_name].argmax(0)
    t_ref = best[ref_name]
    print(
        f"\n{'inference ' + str(shape):40s} {'seconds':>8s} {'voxels/s':>11s} {'speed-up':>9s}"
        f" {'argmax agreement':>17s}"
    )
    for name in candidates:
        agree = float(np.mean(outputs[name].argmax(0) == ref))
        t = best[name]
        print(f"{name:40s} {t:8.3f} {nvox / t:11.3g} {t_ref / t:8.2f}x {agree:17.4%}")
        results["inference"].append({"setting": name, "seconds": t, "agreement": agree})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
