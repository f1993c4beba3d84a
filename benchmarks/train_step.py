"""Throughput of the 3D base model (DenseVoxNet): training steps and sliding-window inference.

Training: the same model, batch and optimizer step (masked cross-entropy with deep supervision,
Adam) under fp32 and the faster CPU settings, side by side. Inference: plain fp32
``monai.inferers.sliding_window_inference`` against :func:`sparseseg.inference.predict_volume_3d`
(bf16 autocast), with the argmax agreement of the two.

    .venv/bin/python benchmarks/train_step.py                 # cpu preset model, batch 2, 48^3
    .venv/bin/python benchmarks/train_step.py --compile       # also try torch.compile
    .venv/bin/python benchmarks/train_step.py --preset paper --patch 64 --batch 1 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import numpy as np
import torch

from sparseseg.config import get_preset
from sparseseg.inference import predict_volume_3d
from sparseseg.models import build_model3d
from sparseseg.training.loop import autocast, cpu_supports_bf16
from sparseseg.training.losses import deep_supervision_loss

IGNORE = 3


def train_throughput(model, batch, steps, warmup, bf16, channels_last, compile_model):
    device = torch.device("cpu")
    model = copy.deepcopy(model).train()
    image, label = batch
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, eps=1e-10)
    forward = torch.compile(model) if compile_model else model
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, "bf16" if bf16 else "fp32"):
            loss, _ = deep_supervision_loss(forward(image), label, IGNORE, 0.5)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return step, image.shape[0] * math.prod(image.shape[2:]) / step


def synthetic(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random images (z-scored) and 3-class labels that follow them (thresholds), with
    every fourth xy slice annotated and the rest ignored."""
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(size=shape), (0, 3, 3, 3)[-len(shape) :])
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    label = np.digitize(image, (-0.5, 0.7)).astype(np.int64)
    label[..., np.arange(shape[-1]) % 4 != 0] = IGNORE
    return image, label


def warm_up_model(model, steps, patch, batch):
    """Train ``model`` briefly on synthetic data so its predictions are decisive (argmax
    agreement of an untrained, near-uniform model says little)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, eps=1e-10)
    rng = np.random.default_rng(1)
    model.train()
    for _ in range(steps):
        image, label = synthetic(rng, (batch, *patch))
        optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), "auto"):
            out = model(torch.from_numpy(image)[:, None])
            loss, _ = deep_supervision_loss(out, torch.from_numpy(label), IGNORE, 0.5)
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


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=48, help="cubic training/inference patch")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--volume", default="96,96,64", help="inference volume X,Y,Z")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="a trained model3d.pt for inference")
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
    patch = (args.patch,) * 3
    image_np, label_np = synthetic(np.random.default_rng(0), (args.batch, *patch))
    image, label = torch.from_numpy(image_np)[:, None], torch.from_numpy(label_np)
    print(
        f"DenseVoxNet ({args.preset} preset, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters), batch {args.batch} x {patch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU bf16 support: {cpu_supports_bf16()}"
    )
    settings = [
        ("fp32", False, False, False),
        ("fp32 + channels_last_3d", False, True, False),
        ("bf16 autocast", True, False, False),
        ("bf16 autocast + channels_last_3d", True, True, False),
    ]
    if args.compile:
        settings.append(("bf16 autocast + torch.compile", True, False, True))
    results = {"train": [], "inference": []}
    base = None
    print(f"\n{'training setting':40s} {'s/step':>8s} {'voxels/s':>11s} {'speed-up':>9s}")
    for name, bf16, cl, comp in settings:
        try:
            step, vps = train_throughput(
                model, (image, label), args.steps, args.warmup + (2 if comp else 0), bf16, cl, comp
            )
        except Exception as exc:  # e.g. torch.compile without a C compiler
            print(f"{name:40s} failed: {type(exc).__name__}: {exc}"[:200])
            continue
        base = base or vps
        print(f"{name:40s} {step:8.3f} {vps:11.3g} {vps / base:8.2f}x")
        results["train"].append({"setting": name, "s_per_step": step, "voxels_per_s": vps})

    shape = tuple(int(s) for s in args.volume.split(","))
    volume, _ = synthetic(np.random.default_rng(2), shape)
    if args.model:
        from sparseseg.models import load_model

        model, _ = load_model(args.model)
    else:
        loss = warm_up_model(model, args.train_steps, patch, args.batch)
        print(
            f"\n(inference model: {args.train_steps} training steps on synthetic data, "
            f"loss {loss:.3f})"
        )
    model.eval()
    t_ref, ref = timed(
        lambda: plain_monai(model, volume, patch, args.overlap, preset.inference.sw_batch_size),
        args.repeats,
    )
    nvox = math.prod(shape)
    print(
        f"\n{'inference ' + str(shape):40s} {'seconds':>8s} {'voxels/s':>11s} {'speed-up':>9s}"
        f" {'argmax agreement':>17s}"
    )
    print(
        f"{'plain fp32 sliding_window_inference':40s} {t_ref:8.3f} {nvox / t_ref:11.3g} "
        f"{1.0:8.2f}x {1.0:17.4%}"
    )
    results["inference"].append({"setting": "plain fp32 MONAI", "seconds": t_ref})
    for name, precision, cl in (
        ("predict_volume_3d fp32", "fp32", False),
        ("predict_volume_3d bf16", "bf16", False),
        ("predict_volume_3d bf16 + channels_last_3d", "bf16", True),
    ):
        t, probs = timed(
            lambda p=precision, c=cl: predict_volume_3d(
                model,
                volume,
                patch,
                args.overlap,
                sw_batch_size=preset.inference.sw_batch_size,
                precision=p,
                channels_last=c,
                device="cpu",
            ),
            args.repeats,
        )
        agree = float(np.mean(probs.argmax(0) == ref.argmax(0)))
        print(f"{name:40s} {t:8.3f} {nvox / t:11.3g} {t_ref / t:8.2f}x {agree:17.4%}")
        results["inference"].append({"setting": name, "seconds": t, "agreement": agree})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
