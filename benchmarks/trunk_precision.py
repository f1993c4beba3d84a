"""Speed of Step I's VGG-19 trunk in fp32 and under bf16 autocast, side by side.

Selection runs every slice of every training volume through the frozen trunk. The trunk
computes under bf16 autocast only where the CPU has native bf16 (``sparseseg.runtime``); this
prints both settings' speed in one run, taking turns batch by batch, so the ratio says what
that rule is worth on the machine at hand::

    .venv/bin/python benchmarks/trunk_precision.py --size 64 --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparseseg.runtime import cpu_supports_bf16
from sparseseg.selection.autoencoder import SliceAutoEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="slice side (px), a multiple of 32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    trunk = SliceAutoEncoder(image_size=args.size).trunk.eval()
    trunk = trunk.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(
        memory_format=torch.channels_last
    )
    times: dict[str, list[float]] = {"fp32": [], "bf16 autocast": []}
    with torch.inference_mode():
        trunk(x)  # warm-up
        for _ in range(args.repeats):
            for name in times:
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
                    trunk(x)
                times[name].append(time.perf_counter() - t0)
    print(
        f"native bf16: {cpu_supports_bf16()}; threads {torch.get_num_threads()}; "
        f"{args.batch} slices of {args.size}^2 per pass, median of {args.repeats}"
    )
    base = statistics.median(times["fp32"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:14s} {args.batch / t:8.1f} slices/s  {base / t:5.2f}x fp32")


if __name__ == "__main__":
    main()
