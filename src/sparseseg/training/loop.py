"""The one training loop shared by the 2D, 3D and meta models.

:func:`fit` runs Adam or SGD with the configured schedule under bf16 autocast (CPU with bf16
support, and CUDA) and writes atomic checkpoints that resume exactly: model, optimizer, step, RNG
states, history and the caller's extra state. Checkpoints hold only tensors and primitive
containers, so ``torch.load(path, weights_only=True)`` reads them.

Exact resumption relies on ``batches(step)`` being a pure function of the step (the samplers in
:mod:`sparseseg.training.sampling` seed each step's draw from ``(seed, step)``); then a run killed
at any point and resumed ends in the same state as an unbroken run.

Under ``torchrun`` (a process group from :func:`sparseseg.distributed.init_from_env`) the model
is wrapped in DistributedDataParallel, so gradients are averaged over the ranks every step. Rank
``r`` of ``n`` draws ``batches(step * n + r)``: each rank sees different samples, the draws stay
pure functions of the step, and with one process nothing changes. The logged loss is the mean
over ranks; rank 0 alone writes checkpoints (with every rank's RNG state) and shows progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from sparseseg import distributed
from sparseseg.fileio import atomic_path
from sparseseg.runtime import autocast, autocast_dtype, memory_format_for, resolve_device
from sparseseg.training.schedules import lr_at

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, Batch, int], tuple[torch.Tensor, dict[str, float]]]

CHECKPOINT_FORMAT = 1


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


def batch_to(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """Move every tensor of ``batch`` to ``device`` (float 4D/5D tensors in channels-last order
    when asked); other values pass through."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.is_floating_point() and value.dim() in (4, 5):
                value = value.contiguous(memory_format=memory_format_for(value.dim()))
        out[key] = value
    return out


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU byte tensors, whatever map_location the checkpoint was read with.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (tensors and primitive containers only).

    A checkpoint is training's internal state for resuming (weights, optimizer, step, RNG states,
    history), read back only by :func:`fit`; it is not a model file. A trained model kept for
    later use is stored in the model bundle format (:mod:`sparseseg.bundle`)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``."""
    return torch.load(path, map_location=map_location, weights_only=True)


def fit(
    model: nn.Module,
    batches: Callable[[int], Batch],
    loss_fn: LossFn,
    cfg,
    checkpoint: str | Path | None = None,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress_desc: str = "train",
    progress: bool = True,
    extra_state: dict[str, Stateful] | None = None,
    iterations: int | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``cfg.iterations`` (or ``iterations``) steps; return history.

    Each step: ``batch = batches(step)`` (tensors moved to the device), then
    ``loss, logs = loss_fn(model, batch, step)`` under autocast, backward, an optimizer step
    (:func:`make_optimizer`: Adam or SGD, gradients clipped to ``cfg.grad_clip``) with the
    learning rate of ``lr_at(step, cfg)``. ``cfg`` is a :class:`sparseseg.config.TrainConfig`.

    ``checkpoint``: file written every ``cfg.checkpoint_every`` steps or ``cfg.checkpoint_seconds``
    and at the end. With ``resume=True`` an existing checkpoint is continued (a finished one only
    loads the weights); without it any old checkpoint is overwritten. ``extra_state`` objects
    (``state_dict``/``load_state_dict``) are saved and restored with it, e.g. NN-fit's choices.

    History: one dict per ``cfg.log_every`` steps with 'step' (steps done), 'lr', 'loss', 'time'
    (seconds of training so far) and the mean of every numeric value ``loss_fn`` logged.
    """
    device = resolve_device(device)
    total = int(cfg.iterations if iterations is None else iterations)
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(cfg.seed + rank)
    channels_last = cfg.channels_last and device.type == "cpu"
    _place(model, device, channels_last)
    optimizer = make_optimizer(model.parameters(), cfg)
    scaler = _grad_scaler(device, cfg.precision)
    run = _Run()
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.exists():
        state = load_checkpoint(path, map_location=device)
        _restore(state, model, optimizer, scaler, extra_state, rank, world)
        run = _Run.of_checkpoint(state)
        if state.get("done"):
            return run.history

    net = distributed.wrap_ddp(model, device)  # the model itself in a single process

    def snapshot(done: bool) -> None:
        if path is not None:
            _snapshot(path, run, done, model, optimizer, scaler, extra_state, world)

    bar = _progress_bar(total, run.step, progress_desc, progress and distributed.is_main())
    last_save = time.monotonic()
    try:
        while run.step < total:
            t0 = time.perf_counter()
            lr = _set_lr(optimizer, lr_at(run.step, cfg))
            batch = batch_to(batches(run.step * world + rank), device, channels_last)
            loss, logs = _forward(net, optimizer, loss_fn, batch, run.step, device, cfg.precision)
            loss_value = float(loss.detach())
            if world == 1 and not math.isfinite(loss_value):
                raise _not_finite(progress_desc, loss_value, run.step)
            _update(model, optimizer, scaler, loss, cfg.grad_clip)
            run.step += 1
            dt = time.perf_counter() - t0
            run.elapsed += dt
            due = run.step < total and (
                run.step % cfg.checkpoint_every == 0
                or time.monotonic() - last_save > cfg.checkpoint_seconds
            )
            if world > 1:
                loss_value, due = _agree(
                    loss_value, due, world, device, progress_desc, run.step - 1
                )
            values = {"loss": loss_value, **logs}
            run.record(values)
            _show(bar, values, _voxels(batch) * world, dt)
            if run.step % cfg.log_every == 0 or run.step == total:
                run.log(lr)
            if due:
                snapshot(done=False)
                last_save = time.monotonic()
    finally:
        bar.close()
    distributed.broadcast_buffers(model)  # every rank leaves with rank 0's BatchNorm statistics
    snapshot(done=True)
    model.eval()
    return run.history


@dataclass
class _Run:
    """Where a training run is: steps done, seconds trained, the history, and the values logged
    since its last entry (``window``)."""

    step: int = 0
    elapsed: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    window: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any]) -> _Run:
        """The run a checkpoint stopped at (only the history of a finished one)."""
        history = list(state.get("history", []))
        if state.get("done"):
            return cls(history=history)
        window = {k: list(v) for k, v in state.get("window", {}).items()}
        return cls(int(state["step"]), float(state.get("elapsed", 0.0)), history, window)

    def record(self, values: dict[str, Any]) -> None:
        """Add a step's finite numeric ``values`` to the window."""
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.window.setdefault(key, []).append(float(value))

    def log(self, lr: float) -> None:
        """Close the window: append its means to the history."""
        entry = {"step": self.step, "lr": lr, "time": round(self.elapsed, 3)}
        entry.update({k: sum(v) / len(v) for k, v in self.window.items()})
        self.history.append(entry)
        self.window = {}


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    """Move ``model`` to ``device``, in channels-last memory order when asked."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d if _is_3d(model) else torch.channels_last)


def _grad_scaler(device: torch.device, precision: str):
    """The grad scaler fp16 autocast needs (None under bf16 or fp32)."""
    return (
        torch.amp.GradScaler("cuda") if autocast_dtype(device, precision) == torch.float16 else None
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _forward(net, optimizer, loss_fn: LossFn, batch: Batch, step: int, device, precision: str):
    """Clear the gradients, then ``loss_fn(net, batch, step)`` in training mode under autocast:
    ``(loss, logs)``."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        return loss_fn(net, batch, step)


def _update(model: nn.Module, optimizer, scaler, loss: torch.Tensor, grad_clip: float) -> None:
    """Backward, gradients clipped to ``grad_clip`` (when > 0), one optimizer step (through the
    fp16 grad ``scaler`` when there is one)."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()


def _agree(
    loss_value: float, due: bool, world: int, device, desc: str, step: int
) -> tuple[float, bool]:
    """Under torchrun: the mean loss over the ``world`` ranks, and save if any rank says so, in
    one small all-reduce that keeps the ranks' decisions identical; a non-finite loss on any
    rank (at step index ``step``) raises."""
    finite = math.isfinite(loss_value)
    total_loss, bad, dues = distributed.all_reduce_sum(
        [loss_value if finite else 0.0, not finite, due], device
    )
    if bad:
        raise _not_finite(desc, loss_value, step)
    return total_loss / world, dues > 0


def _show(bar, values: dict[str, Any], voxels: int, seconds: float) -> None:
    bar.set_postfix(
        loss=f"{values['loss']:.4f}",
        **({"vox/s": f"{voxels / seconds:.3g}"} if voxels else {}),
        refresh=False,
    )
    bar.update(1)


def _snapshot(
    path: Path,
    run: _Run,
    done: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    extra_state: dict[str, Stateful] | None,
    world: int,
) -> None:
    """Write the checkpoint of ``run`` (rank 0; every rank passes its RNG state to it)."""
    rngs = distributed.all_gather_object(_rng_state()) if world > 1 else None
    if not distributed.is_main():
        distributed.barrier()
        return
    state = _checkpoint_state(model, optimizer, scaler, extra_state, rngs)
    state.update(
        step=run.step, done=done, elapsed=run.elapsed, history=run.history, window=run.window
    )
    save_checkpoint(path, state)
    distributed.barrier()


def _restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    extra_state: dict[str, Stateful] | None,
    rank: int,
    world: int,
) -> None:
    """Load a checkpoint's weights and ``extra_state`` into the objects given and, for an
    unfinished run, the optimizer, the grad scaler and this rank's RNG state."""
    model.load_state_dict(state["model"])
    for name, obj in (extra_state or {}).items():  # a finished run's too (e.g. NN-fit's log)
        if name in state.get("extra", {}):
            obj.load_state_dict(state["extra"][name])
    if state.get("done"):
        return
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_ranks")
    _set_rng_state(per_rank[rank] if per_rank and len(per_rank) == world else state["rng"])


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler,
    extra_state: dict[str, Stateful] | None,
    rngs: list | None,
) -> dict[str, Any]:
    """The objects' part of a checkpoint: weights, optimizer, RNG states (``rngs``: every
    rank's, or None in a single process), grad scaler and ``extra_state``. :func:`fit` adds the
    step, the time and the history."""
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rngs[0] if rngs else _rng_state(),
        "extra": {k: v.state_dict() for k, v in (extra_state or {}).items()},
    }
    if rngs:
        state["rng_ranks"] = rngs
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer of a :class:`sparseseg.config.TrainConfig`: 'adam' (``betas``, ``eps``) or
    'sgd' (``momentum``, ``nesterov``), with ``lr`` and ``weight_decay``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected 'adam' or 'sgd')")


def _not_finite(desc: str, value: float, step: int) -> FloatingPointError:
    return FloatingPointError(
        f"{desc}: loss is {value} at step {step}; lower the learning rate or use precision=fp32"
    )


def _is_3d(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules())


def _voxels(batch: Batch) -> int:
    image = batch.get("image")
    if isinstance(image, torch.Tensor) and image.dim() >= 3:
        return int(image.shape[0] * math.prod(image.shape[2:]))
    return 0


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from sparseseg.progress import progress_bar

    return progress_bar(
        total=total,
        initial=initial,
        desc=desc,
        enabled=enabled,
        dynamic_ncols=True,
        mininterval=1.0,
        unit="it",
    )


def supervised_loss(ignore_index: int | None, aux_weight: float = 0.5, kind: str = "ce") -> LossFn:
    """The base models' loss_fn: the masked loss ``kind`` ('ce' or 'ce+dice', see
    :func:`sparseseg.training.losses.segmentation_loss`) of ``model(batch['image'])`` against
    ``batch['label']`` (plus deep supervision for models that return ``(main, aux, ...)``)."""
    from sparseseg.training.losses import segmentation_loss

    def loss_fn(model: nn.Module, batch: Batch, step: int):
        return segmentation_loss(
            model(batch["image"]), batch["label"], ignore_index, kind, aux_weight
        )

    return loss_fn
