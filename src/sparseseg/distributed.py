"""Multi-process runs under ``torchrun``: process group, ranks, sharding and rank-0-only work.

``torchrun --nproc-per-node N`` starts N copies of a command with RANK, WORLD_SIZE and LOCAL_RANK
in the environment. :func:`init_from_env` turns that into a ``torch.distributed`` process group
(NCCL on CUDA, gloo on the CPU) and picks the device (``cuda:LOCAL_RANK`` by default). Without
those variables nothing is initialised and every helper here behaves as for a single process
(rank 0 of 1), so the same code runs alone or distributed.

Conventions used by the pipeline: training wraps the model in
``torch.nn.parallel.DistributedDataParallel`` (gradients averaged across ranks every step); each
rank draws its own batches; files are written by rank 0 only, the other ranks wait at a barrier;
per-case work (pseudo-labels, prediction) is split with :func:`shard` so each output is written
once. Every rank must call the collective helpers (:func:`barrier`, :func:`run_on_main`,
:func:`all_gather_object`, :func:`gather_sharded`) in the same order.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
R = TypeVar("R")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Ranks wait at barriers while rank 0 alone scores or writes, or while others finish a larger
# share of cases; the collectives' default timeouts (10-30 min) are too short for big volumes.
TIMEOUT = timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """True when torchrun's RANK, WORLD_SIZE and LOCAL_RANK are all in the environment."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 when not under torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and shows progress."""
    return rank() == 0


def default_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' / None -> CUDA if available, else CPU; a bare 'cuda' under torchrun becomes
    ``cuda:LOCAL_RANK`` so each process on a node gets its own GPU."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and launched_by_torchrun():
        return torch.device("cuda", local_rank())
    return torch.device(name)


def init_from_env(device: str | torch.device | None = None) -> torch.device:
    """Join the process group torchrun describes (if any) and return this process's device.

    NCCL when the device is CUDA, gloo otherwise. Without torchrun's variables (or when a group
    already exists) no group is created; the device is resolved all the same.
    """
    dev = default_device(device)
    if not launched_by_torchrun() or is_distributed():
        return dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl", device_id=dev, timeout=TIMEOUT)
    else:
        dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    return dev


def shutdown() -> None:
    """Leave the process group (if one was joined).

    DDP wrappers left in reference cycles keep the gloo group alive until interpreter shutdown,
    where its worker threads abort the process ("terminate called without an active exception",
    about one run in three on loaded CPUs). Collecting them first lets the group close cleanly.
    """
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device | None = None) -> Iterator[torch.device]:
    """``with session(args.device) as device:`` -- :func:`init_from_env`, then
    :func:`shutdown` on the way out (only for a group this call created)."""
    created = launched_by_torchrun() and not is_distributed()
    dev = init_from_env(device)
    try:
        yield dev
    finally:
        if created:
            shutdown()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size()``-th item starting at ``rank()``."""
    return list(items[rank() :: world_size()])


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_sharded(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]``, with the items split across ranks and the results
    gathered back in the original order on every rank."""
    n = world_size()
    mine = [fn(item) for item in shard(items)]
    if n == 1:
        return mine
    parts = all_gather_object(mine)
    out: list[Any] = [None] * len(items)
    for r, results in enumerate(parts):
        out[r::n] = results
    return out


def run_on_main(fn: Callable[[], R]) -> R:
    """Run ``fn`` on rank 0 only and return its result on every rank (after all ranks met).

    An exception on rank 0 is raised on every rank (the same exception where it pickles), so
    no rank is left waiting.
    """
    if not is_distributed():
        return fn()
    import pickle

    box: list[Any] = [None]
    original: BaseException | None = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - every rank must learn of the failure
            original = exc
            box[0] = ("error", exc)
        try:
            pickle.dumps(box[0])
        except Exception as exc:  # noqa: BLE001
            box[0] = ("error", RuntimeError(f"rank 0: {original or exc!r}"))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise original if original is not None else value
    return value


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks (a copy in a single process)."""
    if not is_distributed():
        return [float(v) for v in values]
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

    DDP does this at the start of each forward; after the last training step each rank still
    holds its own statistics, which would make the ranks' predictions differ slightly.
    """
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel (the model itself in a single process).

    Parameters and buffers are broadcast from rank 0 when wrapping, so every rank starts from
    the same weights.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index], output_device=index)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return getattr(model, "module", model) if _is_ddp(model) else model


def _is_ddp(model: torch.nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)
