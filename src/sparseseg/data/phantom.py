"""Phantom data, the embedded default: MR-like hearts and serial-section EM stacks.

Both generators are pure functions of a numpy ``Generator`` and return ``(image, label)``: a
float32 image and an integer label map, both (X, Y, Z). :func:`write_phantom_dataset` writes a
whole dataset in the canonical layout; the same seed gives the same bytes.

``heart`` (labels background 0, myocardium 1, blood_pool 2): a left ventricle cup with a thick
myocardial wall, a crescent right ventricle with a thin wall, an atrium above the valve plane and
two curved great vessels leaving the heart, warped by a smooth random field so that the anatomy
changes from slice to slice. The image has bSSFP-like contrast (bright blood, grey muscle), with
surrounding tissue whose intensities overlap both classes (chest-wall muscle like myocardium,
fat like blood, dark lung), partial-volume blur (stronger along the thick slices), a smooth bias
field and Rician noise.

``em`` (labels membrane 0, interior 1): packed cells as a warped power diagram whose seeds drift,
appear and vanish from section to section; dark membranes of varying width and contrast; dark
mitochondria and vesicles inside cells (interior, though as dark as membrane); per-section
brightness changes, blur and noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sparseseg.data.layout import write_case, write_dataset_json
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.fileio import atomic_dir

HEART_LABELS = {"background": 0, "myocardium": 1, "blood_pool": 2}
EM_LABELS = {"membrane": 0, "interior": 1}
HEART_SHAPE = (64, 64, 40)
HEART_SPACING = (1.0, 1.0, 1.6)  # mm; thick slices along Z
EM_SHAPE = (128, 128, 24)
EM_SPACING = (1e-5, 1e-5, 5e-5)  # mm: 10 nm pixels, 50 nm sections
KINDS = ("heart", "em")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation (float64)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _rotation(rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """A random rotation: a spin about Z, then a tilt of the Z axis by up to ``max_tilt_deg``."""
    spin = rng.uniform(0, 2 * np.pi)
    tilt = np.deg2rad(rng.uniform(0.4, 1.0) * max_tilt_deg)
    cz, sz = np.cos(spin), np.sin(spin)
    ct, st = np.cos(tilt), np.sin(tilt)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
    return rz @ rx


def _ellipsoid(points: np.ndarray, center, radii, rotation: np.ndarray) -> np.ndarray:
    """Normalised radius (< 1 inside) of an ellipsoid; ``points`` is (..., 3) in mm."""
    local = (points - np.asarray(center)) @ rotation  # coordinates in the ellipsoid's frame
    return np.sqrt(((local / np.asarray(radii)) ** 2).sum(axis=-1))


def _tube(points: np.ndarray, control: np.ndarray, radius: float) -> np.ndarray:
    """Mask of a tube of ``radius`` mm around a quadratic Bezier curve with 3 control points."""
    t = np.linspace(0.0, 1.0, 48)[:, None]
    curve = (1 - t) ** 2 * control[0] + 2 * (1 - t) * t * control[1] + t**2 * control[2]
    flat = points.reshape(-1, 3)
    best = np.full(len(flat), np.inf)
    for c in curve:
        np.minimum(best, ((flat - c) ** 2).sum(axis=1), out=best)
    return (np.sqrt(best) < radius).reshape(points.shape[:-1])


def _shell(inside: np.ndarray, thickness: np.ndarray, spacing) -> np.ndarray:
    """Voxels outside ``inside`` closer to it than ``thickness`` (mm, per voxel)."""
    dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
    return (dist > 0) & (dist <= thickness)


def _grid_mm(shape, spacing) -> np.ndarray:
    """Voxel centres in mm, origin at the volume centre: (X, Y, Z, 3)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def make_heart_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = HEART_SHAPE,
    spacing: tuple[float, float, float] = HEART_SPACING,
) -> tuple[np.ndarray, np.ndarray]:
    """One MR-like heart: image float32 (X, Y, Z) and label uint8 (X, Y, Z) in {0, 1, 2}.

    Sizes are in mm and scale with the field of view, so small shapes give small hearts.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    extent = np.array(shape) * np.array(spacing)
    scale = float(np.min(extent[:2])) / 52.0  # anatomy sized to fill a 52 mm field of view
    grid = _grid_mm(shape, spacing)

    # Smooth warp (mm): the anatomy bends and changes from slice to slice.
    warp_sigma = [6.0 * scale / s for s in spacing]
    warp = np.stack([_smooth_noise(rng, shape, warp_sigma) for _ in range(3)], axis=-1)
    points = grid + warp * rng.uniform(1.5, 2.5) * scale

    rot = _rotation(rng, max_tilt_deg=40)
    axis = rot[:, 2]  # long axis of the ventricles, pointing from apex to base
    center = rng.uniform(-4, 4, size=3) * scale
    center[2] *= 0.5
    lv_radii = np.array([rng.uniform(8, 11), rng.uniform(7, 10), rng.uniform(13, 17)]) * scale
    lv_full = _ellipsoid(points, center, lv_radii, rot) < 1
    along = (points - center) @ axis  # mm along the long axis
    base = rng.uniform(0.35, 0.55) * lv_radii[2]  # valve plane
    below_base = along < base

    thick = [2.5 * scale / s for s in spacing]
    lv_t = rng.uniform(3.0, 5.0) * scale * (1 + 0.2 * _smooth_noise(rng, shape, thick))
    lv_myo_full = _shell(lv_full, lv_t, spacing)

    # Right ventricle: a larger ellipsoid beside the LV, minus the LV and its wall -> crescent.
    side = rot[:, 0] * (lv_radii[0] + rng.uniform(3, 6) * scale)
    rv_radii = np.array([rng.uniform(7, 9), rng.uniform(11, 14), rng.uniform(11, 14)]) * scale
    rv_full = _ellipsoid(points, center + side, rv_radii, rot) < 1
    rv_full &= ~(lv_full | lv_myo_full)
    rv_t = rng.uniform(1.5, 2.5) * scale * (1 + 0.2 * _smooth_noise(rng, shape, thick))
    rv_myo_full = _shell(rv_full, rv_t, spacing) & ~lv_full

    lv = lv_full & below_base
    rv = rv_full & below_base
    myo = (lv_myo_full | rv_myo_full) & (along < base + 1.0 * scale)

    # Atrium above the valve plane, no thick wall.
    atrium_c = center + axis * (base + rng.uniform(5, 8) * scale) - side * 0.2
    atrium_r = np.array([rng.uniform(7, 10), rng.uniform(8, 11), rng.uniform(6, 8)]) * scale
    atrium = _ellipsoid(points, atrium_c, atrium_r, rot) < 1

    # Great vessels: curved tubes from each ventricle's base out of the heart.
    vessels = np.zeros(shape, dtype=bool)
    for origin, radius in (
        (center + axis * base * 0.9 + rot[:, 1] * 3 * scale, rng.uniform(3.5, 5.0)),
        (center + side * 0.8 + axis * base * 0.9, rng.uniform(3.0, 4.5)),
    ):
        direction = axis + rng.normal(0, 0.5, size=3)
        direction /= np.linalg.norm(direction)
        mid = origin + direction * rng.uniform(12, 18) * scale
        bend = rng.normal(0, 1, size=3)
        bend -= bend @ direction * direction
        end = mid + bend / (np.linalg.norm(bend) + 1e-9) * rng.uniform(15, 25) * scale
        vessels |= _tube(points, np.stack([origin, mid, end]), radius * scale)

    blood = lv | rv | atrium | vessels
    label = np.zeros(shape, dtype=np.uint8)
    label[myo & ~blood] = 1
    label[blood] = 2

    # Surrounding tissue: lung (dark), soft tissue, muscle (like myocardium), fat (like blood).
    tissue_sigma = [5.0 * scale / s for s in spacing]
    t = _smooth_noise(rng, shape, tissue_sigma)
    background = np.select(
        [t < -0.9, t < 0.3, t < 1.3], [0.07, 0.45, 0.36], default=rng.uniform(0.7, 0.85)
    )
    myo_mean = rng.uniform(0.3, 0.38)
    blood_mean = rng.uniform(0.85, 0.95)
    image = np.where(label == 2, blood_mean, np.where(label == 1, myo_mean, background))
    texture = _smooth_noise(rng, shape, [1.5 / s * scale for s in spacing])
    image = image * (1 + 0.08 * texture)

    # Partial-volume blur: the slice profile is wider than the in-plane point spread.
    image = ndimage.gaussian_filter(image, [0.6, 0.6, 0.9], mode="nearest")

    # Smooth multiplicative bias field (up to about +-30 %).
    coords = grid / (extent / 2)
    bias = sum(rng.normal(0, 0.12) * coords[..., i] for i in range(3))
    bias = bias + rng.normal(0, 0.06) * coords[..., 0] * coords[..., 1]
    bias = bias + 0.08 * _smooth_noise(rng, shape, [20.0 * scale / s for s in spacing])
    image = image * np.exp(bias)

    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    sigma = rng.uniform(0.04, 0.07)
    real = image + rng.normal(0, sigma, shape)
    imag = rng.normal(0, sigma, shape)
    image = np.sqrt(real**2 + imag**2) * rng.uniform(400, 1200)  # arbitrary scanner units
    return image.astype(np.float32), label


def make_em_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = EM_SHAPE,
    mean_cell_diameter: float = 18.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One serial-section EM stack: image float32 (X, Y, Z), label uint8 (0 membrane, 1 interior).

    ``mean_cell_diameter`` is in pixels. Each Z section is a 2D cell packing; cells drift,
    appear and vanish along Z, as neurites do in serial sections.
    """
    nx, ny, nz = (int(n) for n in shape)
    n_cells = max(4, int(round(nx * ny / (0.8 * mean_cell_diameter**2))))
    # Seeds, jittered so cells are packed rather than clumped; power weights vary cell sizes.
    seeds = rng.uniform(0, 1, size=(n_cells, 2)) * [nx, ny]
    velocity = rng.normal(0, 0.5, size=(n_cells, 2))  # pixels per section
    curve = rng.normal(0, 0.03, size=(n_cells, 2))
    weight = rng.uniform(-0.3, 0.6, size=n_cells) * mean_cell_diameter**2 / 4
    # About a fifth of the cells exist only over part of the stack.
    start = np.where(rng.random(n_cells) < 0.1, rng.integers(1, max(2, nz), n_cells), 0)
    stop = np.where(rng.random(n_cells) < 0.1, rng.integers(0, max(1, nz - 1), n_cells), nz)
    stop = np.maximum(stop, start + 1)
    start[:4], stop[:4] = 0, nz  # a few cells span the stack: every section has two or more

    warp_sigma = (mean_cell_diameter * 0.7, mean_cell_diameter * 0.7, 3.0)
    warp = [_smooth_noise(rng, (nx, ny, nz), warp_sigma) * 0.25 * mean_cell_diameter]
    warp.append(_smooth_noise(rng, (nx, ny, nz), warp_sigma) * 0.25 * mean_cell_diameter)
    half_width = 1.0 + 0.8 * (0.5 + 0.5 * np.tanh(_smooth_noise(rng, (nx, ny, nz), (6, 6, 2))))
    contrast = 0.55 + 0.45 * (0.5 + 0.5 * np.tanh(_smooth_noise(rng, (nx, ny, nz), (8, 8, 2))))
    cell_tone = rng.uniform(0.58, 0.8, size=n_cells)

    xs, ys = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="ij")
    label = np.zeros((nx, ny, nz), dtype=np.uint8)
    image = np.zeros((nx, ny, nz))
    for z in range(nz):
        alive = np.flatnonzero((start <= z) & (z < stop))
        pos = seeds[alive] + velocity[alive] * z + curve[alive] * z**2
        px = xs + warp[0][..., z]
        py = ys + warp[1][..., z]
        power = (
            (px[..., None] - pos[:, 0]) ** 2 + (py[..., None] - pos[:, 1]) ** 2 - weight[alive]
        )  # (X, Y, cells)
        two = np.argpartition(power, 1, axis=-1)[..., :2]
        p1 = np.take_along_axis(power, two[..., :1], -1)[..., 0]
        p2 = np.take_along_axis(power, two[..., 1:], -1)[..., 0]
        first = np.where(p1 <= p2, two[..., 0], two[..., 1])
        gap = np.abs(p2 - p1) / (2 * np.linalg.norm(pos[two[..., 0]] - pos[two[..., 1]], axis=-1))
        membrane = gap < half_width[..., z]  # distance to the bisector, in pixels
        label[..., z] = (~membrane).astype(np.uint8)
        tone = cell_tone[alive][first]
        image[..., z] = np.where(membrane, tone - contrast[..., z] * (tone - 0.18), tone)

    # Organelles inside cells: dark mitochondria (ellipses with a darker rim) and vesicles.
    interior = label == 1
    n_mito = int(n_cells * nz / 6)
    for _ in range(n_mito):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        cz = rng.integers(0, nz)
        a, b = rng.uniform(2.0, 4.5), rng.uniform(1.5, 2.5)
        ang = rng.uniform(0, np.pi)
        depth = int(rng.integers(1, 4))
        u = (xs - cx) * np.cos(ang) + (ys - cy) * np.sin(ang)
        v = -(xs - cx) * np.sin(ang) + (ys - cy) * np.cos(ang)
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        for dz in range(depth):
            zz = cz + dz
            if zz >= nz:
                break
            inside = (r < 1) & interior[..., zz]
            image[..., zz] = np.where(inside, np.where(r > 0.7, 0.22, 0.36), image[..., zz])
    vesicles = (rng.random((nx, ny, nz)) < 0.004) & interior
    vesicles = ndimage.binary_dilation(vesicles, structure=np.ones((2, 2, 1), bool)) & interior
    image[vesicles] = 0.35

    image += 0.05 * _smooth_noise(rng, (nx, ny, nz), (2.0, 2.0, 0.5))  # cytoplasm texture
    image = ndimage.gaussian_filter(image, (0.9, 0.9, 0.0))
    gain = 1 + rng.normal(0, 0.06, size=nz)  # section-to-section brightness and contrast
    offset = rng.normal(0, 0.03, size=nz)
    image = image * gain + offset
    image += rng.normal(0, rng.uniform(0.05, 0.08), size=image.shape)
    image = np.clip(image, 0, 1) * 255
    return image.astype(np.float32), label


def make_case(
    kind: str, rng: np.random.Generator, shape: tuple[int, int, int] | None = None
) -> tuple[Volume, Volume]:
    """One phantom case of ``kind`` as (image, label) volumes with the kind's spacing."""
    if kind == "heart":
        image, label = make_heart_case(rng, shape or HEART_SHAPE, HEART_SPACING)
        spacing = HEART_SPACING
    elif kind == "em":
        image, label = make_em_case(rng, shape or EM_SHAPE)
        spacing = EM_SPACING
    else:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    affine = affine_from_spacing(spacing)
    return Volume(image, affine), Volume(label, affine)


def case_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator for case ``index``: independent of how many cases are made."""
    return np.random.default_rng([int(seed), KINDS.index(kind), int(index)])


def write_phantom_dataset(
    out: str | Path,
    kind: str = "heart",
    cases: int = 10,
    seed: int = 0,
    test_cases: int = 0,
    shape: tuple[int, int, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a phantom dataset (canonical layout) to ``out``, atomically; return its path.

    Training cases are ``{kind}_000`` .. and test cases (with labels, in imagesTs/labelsTs)
    continue the numbering. Raises FileExistsError if ``out`` exists and not ``overwrite``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    if cases < 1 or test_cases < 0:
        raise ValueError("need at least one training case and a non-negative number of test cases")
    out = Path(out)
    labels = HEART_LABELS if kind == "heart" else EM_LABELS
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for index in range(cases + test_cases):
            image, label = make_case(kind, case_rng(seed, kind, index), shape)
            split = "Tr" if index < cases else "Ts"
            write_case(tmp, f"{kind}_{index:03d}", image, label, split)
        write_dataset_json(
            tmp,
            labels,
            num_training=cases,
            channel_names={"0": "MRI" if kind == "heart" else "EM"},
            name=out.name,
            description=f"sparseseg {kind} phantom, seed {seed}",
            spacing=list(HEART_SPACING if kind == "heart" else EM_SPACING),
        )
    return out
