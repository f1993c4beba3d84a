"""Figures of a selection: a contact sheet of the chosen slices, and a t-SNE map of slice features
with the chosen slices marked (as in the paper's Fig. 6(c))."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sparseseg.data.planes import NORMAL_AXIS, slice_index
from sparseseg.fileio import atomic_path

TILE = 96  # pixels of a tile's longer side
LABEL_H = 14  # pixels of text above a tile
PER_ROW = 10


def _tile(image: np.ndarray, plane: str, n: int, spacing: Sequence[float]) -> np.ndarray:
    """One slice as a uint8 tile: first in-plane axis to the right, second upwards, scaled to
    its physical aspect ratio with the longer side ``TILE`` pixels."""
    from PIL import Image

    axes = [a for a in range(3) if a != NORMAL_AXIS[plane] % 3]
    sl = image[slice_index(plane, n)]  # (A, B)
    pix = np.clip(sl * 255.0, 0, 255).astype(np.uint8).T[::-1]  # rows = B (up), cols = A
    width_mm, height_mm = sl.shape[0] * spacing[axes[0]], sl.shape[1] * spacing[axes[1]]
    scale = TILE / max(width_mm, height_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(pix)).resize(size, Image.BILINEAR))


def contact_sheet(
    image: np.ndarray,
    chosen: Mapping[str, Sequence[int]],
    path: str | Path,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> None:
    """Write a PNG of the chosen slices of ``image`` (X, Y, Z), normalised to [0, 1]: one block
    of rows per plane, tiles in priority order, each labelled 'plane index #rank'."""
    from PIL import Image, ImageDraw

    cell_w, cell_h = TILE + 4, TILE + LABEL_H + 4
    rows = []  # (plane, [(n, rank)]) per row of the sheet
    for plane, indices in chosen.items():
        items = [(int(n), r + 1) for r, n in enumerate(indices)]
        for start in range(0, max(len(items), 1), PER_ROW):
            rows.append((plane, items[start : start + PER_ROW]))
    head = LABEL_H + 6 if title else 0
    width = 40 + cell_w * min(PER_ROW, max((len(r[1]) for r in rows), default=1))
    sheet = Image.new("L", (width, head + cell_h * len(rows)), color=32)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill=255)
    for r, (plane, items) in enumerate(rows):
        y = head + r * cell_h
        draw.text((4, y + LABEL_H + TILE // 2 - 6), plane, fill=255)
        for c, (n, rank) in enumerate(items):
            x = 40 + c * cell_w
            tile = _tile(image, plane, n, spacing)
            sheet.paste(Image.fromarray(tile), (x, y + LABEL_H + 2))
            draw.text((x, y + 1), f"{n} #{rank}", fill=255)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def embed_tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2D t-SNE embedding (N, 2) of slice features (N, D) on cosine distance."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        return np.column_stack([np.arange(n, dtype=float), np.zeros(n)])
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    # The exact method is faster than Barnes-Hut for the few hundred slices of a plane.
    method = "exact" if n <= 1000 else "barnes_hut"
    tsne = TSNE(
        2,
        perplexity=perplexity,
        init="pca",
        metric="cosine",
        method=method,
        max_iter=500,
        random_state=seed,
    )
    return tsne.fit_transform(np.asarray(features, dtype=np.float64))


def tsne_figure(
    features: Mapping[str, np.ndarray],
    chosen: Mapping[str, Sequence[int]],
    path: str | Path,
    title: str = "",
    seed: int = 0,
) -> None:
    """Write a PNG with one panel per plane: the slices' features in 2D (t-SNE), consecutive
    slices joined by a line coloured by slice index, chosen slices marked and labelled with their
    index and priority; a bar at the left of each panel shows where the chosen slices lie along
    the plane's normal axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    planes = [p for p in chosen if p in features]
    fig = plt.figure(figsize=(5.2 * max(len(planes), 1), 5.0))
    for k, plane in enumerate(planes):
        feats, picks = features[plane], [int(i) for i in chosen[plane]]
        n = len(feats)
        xy = embed_tsne(feats, seed)
        left = k / max(len(planes), 1)
        width = 1.0 / max(len(planes), 1)
        bar = fig.add_axes((left + 0.11 * width, 0.08, 0.03 * width, 0.8))
        ax = fig.add_axes((left + 0.18 * width, 0.08, 0.78 * width, 0.8))
        colors = plt.cm.viridis(np.linspace(0, 1, max(n - 1, 1)))
        for i in range(n - 1):
            ax.plot(xy[i : i + 2, 0], xy[i : i + 2, 1], color=colors[i], lw=1.0)
        ax.scatter(xy[:, 0], xy[:, 1], s=8, color="0.6", zorder=2)
        ax.scatter(xy[picks, 0], xy[picks, 1], s=40, color="tab:blue", zorder=3)
        for rank, i in enumerate(picks):
            ax.annotate(f"{i} (#{rank + 1})", xy[i], fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_title(f"{plane}: {len(picks)} of {n} slices")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.margins(0.08)
        bar.plot([0, 0], [0, n - 1], color="0.3", lw=2)
        bar.scatter(np.zeros(len(picks)), picks, color="tab:blue", s=18, zorder=3)
        bar.set_ylim(n - 0.5, -0.5)
        bar.set_xticks([])
        bar.set_ylabel(f"slice index along {'xyz'[NORMAL_AXIS[plane] % 3]}", fontsize=8)
        bar.tick_params(labelsize=7)
        bar.yaxis.set_major_locator(MaxNLocator(integer=True))
        bar.spines[["top", "right", "bottom"]].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
