"""Learning-rate schedules as pure functions of the iteration (so resuming needs no state)."""

from __future__ import annotations


def step_lr(step: int, base_lr: float, step_at: int, gamma: float = 0.1) -> float:
    """``base_lr`` before iteration ``step_at``, ``base_lr * gamma`` from then on (paper, 2D)."""
    return base_lr * (gamma if step >= step_at else 1.0)


def poly_lr(step: int, base_lr: float, total: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total) ** power`` (the paper's 3D and meta schedule)."""
    frac = min(max(step, 0), total) / max(total, 1)
    return base_lr * (1.0 - frac) ** power


def lr_at(step: int, cfg) -> float:
    """The learning rate of iteration ``step`` (0-based) under a :class:`TrainConfig`."""
    if cfg.schedule == "step":
        return step_lr(step, cfg.lr, cfg.step_at, cfg.step_gamma)
    if cfg.schedule == "poly":
        return poly_lr(step, cfg.lr, cfg.iterations, cfg.poly_power)
    if cfg.schedule == "constant":
        return cfg.lr
    raise ValueError(f"unknown schedule {cfg.schedule!r} (expected 'step', 'poly' or 'constant')")
