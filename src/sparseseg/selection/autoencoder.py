"""The slice auto-encoder of Step I: frozen VGG-19 trunk, FC encoder, light decoder.

    slice (1, S, S) in [0, 1] -> 3 channels, ImageNet-normalised -> VGG-19 trunk (frozen)
      -> (512, S/32, S/32) -> standardised per channel -> FC 1024 -> ReLU -> FC 128 (the feature)
    feature -> FC -> (128, 4, 4) -> 3 x (transposed conv, ReLU) -> (1, 32, 32) reconstruction

The decoder reconstructs the slice at 32 x 32: enough to force the feature to describe the
slice's layout while keeping the head cheap on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from sparseseg.runtime import autocast
from sparseseg.selection.rowfile import RowFile
from sparseseg.selection.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRUNK_CHANNELS,
    TRUNK_STRIDE,
    vgg19_features,
)

NORMALISER_CHANNELS = 64  # channels per block of fit_normaliser (a multiple of the SIMD width)


@contextlib.contextmanager
def small_cpu_work(device: torch.device) -> Iterator[None]:
    """Settings for the head's many small steps on a CPU, restored after the block: denormal
    floats flushed to zero, and one intra-op thread. On two shared cores, two threads made a step
    4-10x slower than one (0.5-1.8 s vs 0.13 s at 64 px) by waiting on each other."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


class SliceAutoEncoder(nn.Module):
    """Auto-encoder on slices with a frozen VGG-19 trunk; ``feature_dim`` features per slice."""

    recon_size = 32

    def __init__(self, image_size: int = 128, hidden: int = 1024, feature_dim: int = 128):
        super().__init__()
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.trunk = vgg19_features()
        self.trunk.requires_grad_(False)
        grid = image_size // TRUNK_STRIDE
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        # Per-channel statistics of the trunk output on the data (see fit_normaliser).
        self.register_buffer("t_mean", torch.zeros(1, TRUNK_CHANNELS, 1, 1))
        self.register_buffer("t_std", torch.ones(1, TRUNK_CHANNELS, 1, 1))
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(TRUNK_CHANNELS * grid * grid, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, feature_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(feature_dim, 128 * 4 * 4),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def run_trunk(
        self, slices: torch.Tensor, progress: Callable[[int], object] | None = None, batch: int = 32
    ) -> torch.Tensor:
        """Trunk output (N, 512, S/32, S/32) as bfloat16 on the CPU for slices (N, 1, S, S).

        Computed under bf16 autocast where the device supports it (on a CPU without native bf16,
        emulated bf16 convolutions are several times slower than fp32), stored as bf16 in all
        cases."""
        self.trunk.eval()
        trunk = self.trunk.to(memory_format=torch.channels_last)
        device = self.device
        out = []
        for start in range(0, len(slices), batch):
            x = slices[start : start + batch].to(device)
            x = ((x.expand(-1, 3, -1, -1) - self.mean) / self.std).contiguous(
                memory_format=torch.channels_last
            )
            with autocast(device):
                y = trunk(x)
            out.append(y.to("cpu", torch.bfloat16).contiguous())
            if progress is not None:
                progress(len(x))
        return torch.cat(out)

    @torch.no_grad()
    def fit_normaliser(self, trunk_out: torch.Tensor | RowFile) -> None:
        """Set per-channel mean and std of the trunk output (N, 512, g, g) over all slices.

        Computed for 64 channels at a time, not on a float32 copy of all of it (twice its
        bfloat16 size); each channel's numbers are those of the whole at once (a reduction over
        the other axes; tests/test_selection_features.py checks it)."""
        for c in range(0, TRUNK_CHANNELS, NORMALISER_CHANNELS):
            x = trunk_out[:, c : c + NORMALISER_CHANNELS].float()
            self.t_mean[0, c : c + NORMALISER_CHANNELS, 0, 0] = x.mean(dim=(0, 2, 3))
            self.t_std[0, c : c + NORMALISER_CHANNELS, 0, 0] = x.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def encode(self, trunk_out: torch.Tensor) -> torch.Tensor:
        """Features (N, feature_dim) from trunk output (N, 512, g, g)."""
        x = (trunk_out.to(self.device, torch.float32) - self.t_mean) / self.t_std
        return self.encoder(x)

    def forward(self, trunk_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), reconstruction (N, 1, 32, 32)) from trunk output."""
        z = self.encode(trunk_out)
        return z, self.decoder(z)

    @torch.no_grad()
    def encode_trunk_output(self, trunk_out: torch.Tensor, batch: int = 256) -> np.ndarray:
        """Features (N, feature_dim) float32 numpy, in batches."""
        self.eval()
        out = [self.encode(trunk_out[s : s + batch]).cpu() for s in range(0, len(trunk_out), batch)]
        return torch.cat(out).numpy().astype(np.float32)


def train_autoencoder(
    model: SliceAutoEncoder,
    trunk_out: torch.Tensor | RowFile,
    targets: torch.Tensor | RowFile,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train the encoder and decoder (the trunk stays frozen) to reconstruct ``targets``
    (N, 1, 32, 32) from ``trunk_out`` (N, 512, g, g) with mean squared error; return the loss of
    each step. Batches are drawn with replacement by a generator seeded with ``seed``; only the
    batch's rows are read (from a :class:`~sparseseg.selection.rowfile.RowFile`, off disk)."""
    from sparseseg.progress import progress_bar

    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    history = []
    n = len(trunk_out)
    with small_cpu_work(model.device):
        for _ in progress_bar(range(steps), desc="auto-encoder", unit="step", enabled=progress):
            idx = torch.randint(n, (min(batch_size, n),), generator=generator)
            _, recon = model(trunk_out[idx])
            loss = nn.functional.mse_loss(recon, targets[idx].to(model.device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    model.eval()
    return history
