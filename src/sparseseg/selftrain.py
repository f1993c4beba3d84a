"""Step III: two-stage self-training of the meta-model on the four pseudo-label sets.

Stage 1 (paper eq. 9): each iteration, each sample's target is one PL set drawn at random.
Stage 2 (NN-fit): in rounds; at the start of a round the model predicts every training volume and
each volume's target becomes the PL set with the lowest cross-entropy to that prediction. The
rounds stop when the share of volumes whose target switched falls under a threshold, or when the
iteration budget is spent. Which sets are chosen is logged over time.

The functions at the top are pure (tensors in, tensors out); :func:`train_meta` wires them to the
shared training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def ce_per_set(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of each sample's output to each of its K label sets.

    logits: (B, C, *S) raw scores; targets: (B, K, *S) integer labels 0..C-1; valid: optional
    (B, *S) bool, the voxels that count (e.g. inside the original extent). Returns (B, K) float32.
    A sample with no valid voxel gets 0 for every set.
    """
    if targets.shape[0] != logits.shape[0] or targets.shape[2:] != logits.shape[2:]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match logits {logits.shape}")
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -torch.gather(
        logp.unsqueeze(1).expand(-1, targets.shape[1], *logp.shape[1:]),
        2,
        targets.long().unsqueeze(2),
    ).squeeze(2)  # (B, K, *S)
    dims = tuple(range(2, nll.ndim))
    if valid is None:
        return nll.mean(dim=dims)
    w = valid.unsqueeze(1).to(nll.dtype)
    return (nll * w).sum(dim=dims) / w.sum(dim=dims).clamp_min(1.0)


def nearest_sets(ce: torch.Tensor) -> torch.Tensor:
    """(B, K) cross-entropies -> (B,) index of the lowest per sample (ties: the lower index)."""
    return torch.argmin(ce, dim=1)


def random_sets(batch: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch,) PL-set indices drawn uniformly from 0..k-1 (paper eq. 9, stage 1)."""
    return torch.randint(0, k, (batch,), generator=generator)


def pick_targets(targets: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) label sets and (B,) choices -> (B, *S) the chosen set per sample."""
    index = choice.long().view(-1, *([1] * (targets.ndim - 1))).expand(-1, 1, *targets.shape[2:])
    return torch.gather(targets, 1, index.to(targets.device)).squeeze(1)


def switch_share(previous: Sequence[int] | None, current: Sequence[int]) -> float:
    """Fraction of samples whose chosen set differs from the previous round (1.0 if none)."""
    if previous is None:
        return 1.0
    if len(previous) != len(current):
        raise ValueError("previous and current choices differ in length")
    if not current:
        return 0.0
    return sum(int(a != b) for a, b in zip(previous, current, strict=True)) / len(current)


@dataclass
class NNFitState:
    """The NN-fit rounds so far: each round's choice per training volume and its switch share.

    ``done`` once a round's switch share falls below ``threshold`` (a first round, having no
    previous choice, never settles).
    """

    threshold: float
    rounds: list[dict] = field(default_factory=list)

    @property
    def choices(self) -> list[int] | None:
        return self.rounds[-1]["choice"] if self.rounds else None

    @property
    def done(self) -> bool:
        return bool(self.rounds) and self.rounds[-1]["switch_share"] < self.threshold

    def update(self, ce: torch.Tensor, iteration: int) -> dict:
        """Record a round from (N, K) cross-entropies of every volume to every set."""
        choice = nearest_sets(ce).tolist()
        share = switch_share(self.choices, choice)
        record = {
            "round": len(self.rounds),
            "iteration": int(iteration),
            "choice": choice,
            "ce": [[round(float(v), 6) for v in row] for row in ce.tolist()],
            "switch_share": share,
        }
        self.rounds.append(record)
        return record

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "rounds": self.rounds}

    @classmethod
    def from_dict(cls, data: dict) -> NNFitState:
        return cls(float(data["threshold"]), list(data["rounds"]))
