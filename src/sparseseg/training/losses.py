"""Masked cross-entropy (paper eqs. 1 and 2): the loss over annotated voxels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the voxels whose label is not ``ignore_index``.

    ``logits`` (B, C, ...) and ``target`` (B, ...) integer class indices. A batch without any
    annotated voxel gives a loss of exactly 0 that still depends on ``logits`` (zero gradient,
    never NaN). Computed in float32 whatever the logits' dtype.
    """
    target = target.long()
    per_voxel = F.cross_entropy(
        logits.float(),
        target,
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction="none",
    )
    if ignore_index is None:
        return per_voxel.mean()
    mask = target != ignore_index
    count = mask.sum()
    # Ignored voxels already contribute 0 to per_voxel; dividing by max(count, 1) keeps the empty
    # case finite and differentiable (gradient 0).
    return per_voxel.sum() / count.clamp(min=1).to(per_voxel.dtype)


def deep_supervision_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    ignore_index: int | None = None,
    aux_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked CE of the main output plus ``aux_weight`` x masked CE of each auxiliary output.

    ``outputs`` is a logits tensor or ``(main, aux, ...)`` as DenseVoxNet returns in training mode.
    Returns ``(loss, logs)`` with the separate terms in ``logs`` ('ce', 'aux').
    """
    if isinstance(outputs, torch.Tensor):
        loss = masked_cross_entropy(outputs, target, ignore_index)
        return loss, {"ce": float(loss.detach())}
    main = masked_cross_entropy(outputs[0], target, ignore_index)
    aux = sum(masked_cross_entropy(o, target, ignore_index) for o in outputs[1:])
    return main + aux_weight * aux, {"ce": float(main.detach()), "aux": float(aux.detach())}
