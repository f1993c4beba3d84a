"""Step III: two-stage self-training of the meta-model on the four pseudo-label sets.

Stage 1 (paper eq. 9): each iteration, each sample's target is one PL set drawn at random.
Stage 2 (NN-fit): in rounds; at the start of a round the model predicts every training volume and
each volume's target becomes the PL set with the lowest cross-entropy to that prediction. Once the
share of volumes whose target switched falls under a threshold the choices are frozen, and
training goes on with them to the end of the schedule (the learning rate to its poly end). Which
sets are chosen is logged over time.

The functions at the top are pure (tensors in, tensors out); :func:`train_meta` wires them to the
shared training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparseseg.data.planes import PL_SETS


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
        return len(self.rounds) > 1 and self.rounds[-1]["switch_share"] < self.threshold

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


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
class NNFitCheckpoint:
    """Adapter so the training loop saves and restores the NN-fit rounds with its checkpoint."""

    def __init__(self, state: NNFitState):
        self.state = state

    def state_dict(self) -> dict:
        return self.state.to_dict()

    def load_state_dict(self, data: dict) -> None:
        restored = NNFitState.from_dict(data)
        self.state.threshold = restored.threshold
        self.state.rounds = restored.rounds


class MetaSampler:
    """``sampler(step) -> batch`` for the meta-model: a pure function of ``(seed, step)``.

    Each sample: a case drawn uniformly, a random crop of ``patch`` with flips on ``flip_axes`` and
    axial quarter turns (the same transform for image, A(Y) and all K PL sets; padding carries
    ``ignore_index``), and a PL set drawn uniformly (the stage-1 target). With a ``plane`` (a 2D
    meta-model) the crop is 2D, from a slice of that plane drawn uniformly, flipped and turned
    as :func:`sparseseg.data.planes.plane_transforms` matches the volume's ``flip_axes``. Batch
    keys: 'image' (B, Cin + C, *patch) float32, 'targets' (B, K, *patch) int64,
    'case' (B,) and 'random' (B,) int64.
    """

    def __init__(
        self,
        cases: Sequence[dict],
        patch: Sequence[int],
        batch_size: int,
        *,
        ignore_index: int,
        flip_axes: Sequence[int] = (0, 1, 2),
        rot90_xy: bool = True,
        seed: int = 0,
        plane: str = "",
    ):
        from sparseseg.training.sampling import PatchSampler3D

        self.cases = list(cases)
        self.plane = plane
        self.patch = tuple(int(p) for p in patch)
        self.rot90 = rot90_xy
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.ignore_index = int(ignore_index)
        self.per_case = [
            PatchSampler3D(
                [case],
                patch,
                1,
                ignore_index=ignore_index,
                label_key="",  # dense targets: crops are placed uniformly
                flip_axes=flip_axes,
                rot90_xy=rot90_xy,
                seed=seed,
            )
            for case in (() if plane else self.cases)
        ]
        self.num_sets = int(self.cases[0]["targets"].shape[0])
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def _slice_crop(self, case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from sparseseg.data.planes import plane_transforms, to_slices
        from sparseseg.training.augment import apply_transform, crop_shape_for, draw_transform
        from sparseseg.training.sampling import crop_padded, crop_start

        image = to_slices(case["image"], self.plane)  # (Cin + C, N, A, B)
        targets = to_slices(case["targets"], self.plane)  # (K, N, A, B)
        n = int(rng.integers(image.shape[-3]))
        k, flips = draw_transform(rng, 2, *plane_transforms(self.plane, self.flip_axes, self.rot90))
        shape = crop_shape_for(self.patch, k)
        start = crop_start(rng, None, image.shape[-2:], shape)
        return {
            "image": apply_transform(crop_padded(image[:, n], start, shape, 0.0), 2, k, flips),
            "targets": apply_transform(
                crop_padded(targets[:, n], start, shape, self.ignore_index), 2, k, flips
            ),
        }

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 7919, int(step)])
        images, targets, index, random = [], [], [], []
        for _ in range(self.batch_size):
            i = int(rng.integers(len(self.cases)))
            if self.plane:
                item = self._slice_crop(self.cases[i], rng)
            else:
                item = self.per_case[i].sample_one(rng)
            images.append(item["image"])
            targets.append(item["targets"])
            index.append(i)
            random.append(int(rng.integers(self.num_sets)))
        return {
            "image": torch.from_numpy(np.stack(images).astype(np.float32, copy=False)),
            "targets": torch.from_numpy(np.stack(targets).astype(np.int64)),
            "case": torch.tensor(index, dtype=torch.int64),
            "random": torch.tensor(random, dtype=torch.int64),
        }


CE_BLOCK = 1 << 20  # voxels per block of whole_volume_ce (a multiple of any SIMD width)


def whole_volume_ce(
    model: torch.nn.Module,
    case: dict,
    inference,
    *,
    plane: str = "",
    patch2d: Sequence[int] | None = None,
    device=None,
    precision: str = "auto",
) -> torch.Tensor:
    """(K,) mean cross-entropy of the model's whole-volume prediction to each PL set of a case.

    ``inference`` is an :class:`sparseseg.config.InferenceConfig` (sliding-window settings);
    ``plane`` and ``patch2d`` as :func:`sparseseg.inference.predict_meta`. The same numbers as
    :func:`ce_per_set` on the whole volume, computed in blocks of voxels: one (C, X, Y, Z)
    float32 volume and one (X, Y, Z) of losses at a time, not K int64 targets, a log-softmax
    copy and their gathers (tests/test_selftrain.py checks the equality).
    """
    from sparseseg.inference import predict_meta

    probs = predict_meta(
        model, case["image"], inference, plane, patch2d, device=device, precision=precision
    )
    np.log(np.clip(probs, 1e-8, None, out=probs), out=probs)  # in place: one (C, *S) volume
    logp = torch.from_numpy(probs)[None]
    # Each set read through a mapping of its own: the pages of one (X, Y, Z) uint8 set at a time.
    return torch.cat([volume_ce(logp, case["targets"][k]) for k in range(len(case["targets"]))])


def volume_ce(logits: torch.Tensor, target: np.ndarray, block: int = CE_BLOCK) -> torch.Tensor:
    """(1,) :func:`ce_per_set` of ``logits`` (1, C, *S) to one ``target`` (*S) of integer labels,
    in blocks of ``block`` voxels (the log-softmax of a block of a multiple of the SIMD width is
    that of the whole, voxel for voxel; the mean is taken over all voxels at once)."""
    flat = logits.reshape(1, logits.shape[1], -1)
    labels = np.asarray(target).reshape(-1)
    nll = torch.empty((1, 1, flat.shape[2]), dtype=torch.float32)
    for a in range(0, flat.shape[2], block):
        t = torch.from_numpy(labels[a : a + block].astype(np.int64))[None, None]
        nll[:, :, a : a + block] = -torch.gather(
            F.log_softmax(flat[:, :, a : a + block].float(), dim=1), 1, t
        )
    return nll.reshape(1, 1, *logits.shape[2:]).mean(dim=tuple(range(2, logits.ndim)))[0]


def warm_start(
    meta: torch.nn.Module, base: dict[str, torch.Tensor], image_channels: int, init: str = "3d"
) -> None:
    """Load a base model's weights ``base`` (a state dict: the 3D model's, or the 2D model's
    for a 2D meta-model, ``init`` '3d' or '2d') into ``meta`` (in place).

    Every meta-model tensor but the A(Y) skip must have its namesake in ``base`` with the same
    shape, except input convolutions, which have the C channels of A(Y) after the
    ``image_channels`` of the base model: those take the base weights for the image channels and
    zeros for A(Y). The meta-model then starts out predicting what the base model predicts (plus
    the A(Y) skip). ValueError where the two networks differ in any other way.
    """
    target = meta.state_dict()
    loaded = {}
    for name, tensor in target.items():
        if name.startswith("ay_skip."):
            continue
        src = base.get(name)
        if src is not None and src.shape == tensor.shape:
            loaded[name] = src
        elif (
            src is not None
            and src.dim() == tensor.dim() > 2
            and src.shape[1] == image_channels < tensor.shape[1]
            and src.shape[:1] + src.shape[2:] == tensor.shape[:1] + tensor.shape[2:]
        ):
            weight = torch.zeros_like(tensor)
            weight[:, :image_channels] = src
            loaded[name] = weight
        else:
            shape = "missing" if src is None else tuple(src.shape)
            raise ValueError(
                f"meta.init='{init}' needs the meta-model to be the {init.upper()} base model "
                f"plus A(Y) input channels (DynUNet, fusion 'stack', the same sizes): {name} is "
                f"{tuple(tensor.shape)} in the meta-model, {shape} in the {init.upper()} model"
            )
    meta.load_state_dict(loaded, strict=False)


@dataclass
class MetaTrainResult:
    model: torch.nn.Module
    history: list[dict]
    nnfit: NNFitState
    steps: int  # the whole schedule, meta.train.iterations
    # why the NN-fit rounds stopped: 'settled' (switch share under the threshold; the choices were
    # then kept to the end of the schedule) or 'budget' (the schedule ended first)
    stop_reason: str
    settled_at: int | None  # the iteration of the round that settled


def train_meta(
    cases: Sequence[dict],
    num_classes: int,
    preset,
    checkpoint: str | Path | None = None,
    *,
    pl_names: Sequence[str] = PL_SETS,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> MetaTrainResult:
    """Two-stage self-training of the Y-shaped meta-model (see the module doc).

    ``cases``: from :func:`sparseseg.pseudolabels.read_meta_case`, ``{'image': float32
    (Cin + C, X, Y, Z), 'targets': uint8 (K, X, Y, Z)}`` (the image channels are the input
    channels beyond the C of A(Y)). ``preset.meta`` gives the model, the training settings
    (``train``: batch, patch, lr, ``iterations`` of the whole schedule, poly over both stages),
    ``stage1_iterations``, ``switch_threshold`` and ``nnfit_round_iterations`` (iterations
    between NN-fit choices; default a fifth of stage 2). One run of the shared training loop
    covers both stages, so a checkpoint taken in either resumes exactly, NN-fit rounds and
    frozen choices included. ``init_state``: the weights of the base model named by
    ``meta.init`` ('3d', or '2d' for a 2D meta-model), to start from them (:func:`warm_start`).
    """
    from sparseseg.config import check_meta_schedule
    from sparseseg.models.meta import build_meta
    from sparseseg.training.loop import fit
    from sparseseg.training.losses import segmentation_loss

    mcfg = preset.meta
    check_meta_schedule(mcfg)
    cfg = mcfg.train
    s1 = int(mcfg.stage1_iterations)
    round_len = int(mcfg.nnfit_round_iterations or max(1, (cfg.iterations - s1) // 5))
    ignore = int(num_classes)  # padding only: PL sets are dense
    torch.manual_seed(cfg.seed)  # the initial weights follow the seed, not what ran before
    image_channels = int(cases[0]["image"].shape[0]) - int(num_classes)
    model = build_meta(mcfg, num_classes, image_channels, preset.model2d)
    if init_state is not None:
        warm_start(model, init_state, image_channels, mcfg.init)
    sampler = MetaSampler(
        cases,
        cfg.patch,
        cfg.batch_size,
        ignore_index=ignore,
        flip_axes=cfg.flip_axes,
        rot90_xy=cfg.rot90_xy,
        seed=cfg.seed,
        plane=mcfg.plane,
    )
    nnfit = NNFitState(float(mcfg.switch_threshold))
    say = log or (lambda _msg: None)

    def nnfit_round(net: torch.nn.Module, step: int) -> None:
        # Under torchrun the cases are split across ranks and the rows gathered, so every rank
        # makes the same choices; the bare module runs (a DDP forward would be a collective).
        from sparseseg import distributed

        plain = distributed.unwrap(net)
        distributed.broadcast_buffers(plain)
        ce = torch.stack(
            distributed.gather_sharded(
                lambda c: whole_volume_ce(
                    plain,
                    c,
                    preset.inference,
                    plane=mcfg.plane,
                    patch2d=cfg.patch,
                    device=device,
                    precision=cfg.precision,
                ).cpu(),
                cases,
            )
        )
        rec = nnfit.update(ce, step)
        picked = {n: rec["choice"].count(k) for k, n in enumerate(pl_names)}
        say(
            f"NN-fit round {rec['round']} at iteration {step}: targets {picked}, "
            f"switched {rec['switch_share']:.0%}"
        )
        net.train()

    def loss_fn(net: torch.nn.Module, batch: dict, step: int):
        if step < s1:
            choice = batch["random"]
        else:
            if not nnfit.done and len(nnfit.rounds) < (step - s1) // round_len + 1:
                nnfit_round(net, step)
            choice = torch.tensor(nnfit.choices, dtype=torch.int64)[batch["case"].cpu()]
        target = pick_targets(batch["targets"], choice)
        loss, logs = segmentation_loss(
            net(batch["image"]), target, ignore, cfg.loss, cfg.aux_weight
        )
        for k, name in enumerate(pl_names):
            logs[f"pick_{name}"] = float((choice == k).float().mean())
        logs["stage"] = 1.0 if step < s1 else 2.0
        return loss, logs

    history = fit(
        model,
        sampler,
        loss_fn,
        cfg,
        checkpoint,
        resume=resume,
        device=device,
        progress_desc="meta-model",
        progress=progress,
        extra_state={"nnfit": NNFitCheckpoint(nnfit)},
    )
    steps = int(history[-1]["step"]) if history else 0
    if nnfit.done:
        return MetaTrainResult(
            model, history, nnfit, steps, "settled", nnfit.rounds[-1]["iteration"]
        )
    return MetaTrainResult(model, history, nnfit, steps, "budget", None)
