"""How well the time budget holds: ``sparseseg train`` with ``--minutes`` on a phantom.

Writes a heart phantom (or a thick-section EM phantom), runs the whole ``train`` (plan, probe,
Step II, Step III, bundle, test-split report) in a subprocess with a time budget, and prints the
measured wall time over the budget, with the plan's own reckoning from MODEL/plan.json.

    .venv/bin/python benchmarks/plan_budget.py                     # heart, 2 minutes
    .venv/bin/python benchmarks/plan_budget.py --minutes 5 --kind em --cases 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--kind", default="heart", choices=("heart", "em"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--shape", default=None, help="X,Y,Z (default: the phantom's)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for train")
    parser.add_argument("--work", default=None, help="folder to keep (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args()

    from sparseseg.data.phantom import write_phantom_dataset

    work = Path(args.work or tempfile.mkdtemp(prefix="plan_budget_"))
    data = work / f"phantom_{args.kind}"
    if not (data / "dataset.json").exists():
        shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else None
        write_phantom_dataset(data, args.kind, args.cases, 0, args.test_cases, shape)
    out = work / f"model_{args.minutes:g}min"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "sparseseg", "train", str(data), "--out", str(out)]
    cmd += ["--preset", "auto", "--minutes", str(args.minutes), "--quiet"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    print(proc.stderr.strip())
    if proc.returncode != 0:
        raise SystemExit(f"train failed with code {proc.returncode}")
    plan = json.loads((out / "plan.json").read_text())
    state = json.loads((out / "pipeline.json").read_text())
    stages = {k: v.get("seconds") for k, v in state["stages"].items()}
    budget = args.minutes * 60
    result = {
        "kind": args.kind,
        "budget_seconds": budget,
        "wall_seconds": round(seconds, 1),
        "wall_over_budget": round(seconds / budget, 3),
        "stage_seconds": stages,
        "plan_reserve_seconds": plan["budget"]["reserve_seconds"],
        "plan_training_seconds": plan["budget"]["training_seconds"],
        "iterations": plan["budget"]["iterations"],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }
    print(proc.stdout.strip())
    print(
        f"\nbudget {budget:.0f} s, measured {seconds:.0f} s: {seconds / budget:.2f}x the budget "
        f"(load average {load:.1f} before, {result['load_after']:.1f} after)"
    )
    print("stages (s): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
