"""Masked losses over annotated voxels only: cross-entropy (paper eqs. 1 and 2) and soft Dice."""

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


def masked_soft_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """1 - mean soft Dice of the foreground classes (1..C-1), over annotated voxels only.

    ``logits`` (B, C, ...) and ``target`` (B, ...). Intersection and both sums run over the
    voxels whose label is not ``ignore_index`` only, pooled over the batch (nnU-Net's batch
    Dice), so an unannotated voxel changes nothing, neither its logits nor its label. A class
    absent from the annotated voxels scores ``smooth / (sum of its probabilities + smooth)``
    (1 when it is not predicted there). Computed in float32.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    target = target.long()
    if ignore_index is None:
        mask = torch.ones_like(target, dtype=torch.bool)
    else:
        mask = target != ignore_index
    onehot = F.one_hot(torch.where(mask, target, 0), num_classes).movedim(-1, 1).float()
    weight = mask.unsqueeze(1).float()
    dims = (0, *range(2, logits.dim()))
    probs = probs * weight
    onehot = onehot * weight
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    foreground = dice[1:] if num_classes > 1 else dice
    return 1.0 - foreground.mean()


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights of ``n`` outputs (full resolution first): halving per level, summing to
    1 (1 output: [1.0])."""
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def dice_ce_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked cross-entropy + masked soft Dice of every output, deep-supervision weighted.

    ``outputs``: logits or ``(main, aux1, ...)`` all at the target's resolution (as
    :class:`sparseseg.models.dynunet.SegDynUNet` returns them). Logs the main output's 'ce' and
    'dice' (the Dice loss term) and the weighted auxiliary total 'aux'.
    """
    outs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    weights = deep_supervision_weights(len(outs))
    ce = masked_cross_entropy(outs[0], target, ignore_index)
    dice = masked_soft_dice(outs[0], target, ignore_index)
    terms = [ce + dice] + [
        masked_cross_entropy(o, target, ignore_index) + masked_soft_dice(o, target, ignore_index)
        for o in outs[1:]
    ]
    loss = sum(w * t for w, t in zip(weights, terms, strict=True))
    logs = {"ce": float(ce.detach()), "dice": float(dice.detach())}
    if len(outs) > 1:
        aux = zip(weights[1:], terms[1:], strict=True)
        logs["aux"] = float(sum(w * t.detach() for w, t in aux))
    return loss, logs


def segmentation_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    ignore_index: int | None,
    kind: str = "ce",
    aux_weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss ``kind`` of a :class:`sparseseg.config.TrainConfig`: 'ce'
    (:func:`deep_supervision_loss`) or 'ce+dice' (:func:`dice_ce_loss`)."""
    if kind == "ce":
        return deep_supervision_loss(outputs, target, ignore_index, aux_weight)
    if kind == "ce+dice":
        return dice_ce_loss(outputs, target, ignore_index)
    raise ValueError(f"unknown loss {kind!r} (expected 'ce' or 'ce+dice')")
