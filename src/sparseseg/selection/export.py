"""Write a selection to disk: the record, masks to annotate, contact sheets, a t-SNE figure and,
from dense labels, a simulated sparse dataset.

    OUT/selection.json       per case and plane: chosen slices in priority order, gains, cost
    OUT/masks/CASE.nii.gz    uint8 (X, Y, Z), 1 on the slices to annotate; the image's affine
    OUT/sheets/CASE.png      the chosen slices, in priority order
    OUT/tsne.png             slice features of the first case in 2D, chosen slices marked
    OUT/dataset/             (simulate_from_labels) canonical dataset: true labels on the chosen
                             slices, ``ignore`` elsewhere; images and the test split copied. In a
                             later round (``selection.round``) the dataset's current labels are
                             kept and the true labels, from ``dense_labels``, are added on the
                             new slices: the union of previous and new slices.

:func:`write_sparse_dataset` writes such a sparse dataset from any labels on chosen slices: the
simulated ones here, annotators' painted ones in :mod:`sparseseg.annotation_import`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from sparseseg.data.io import write_nifti
from sparseseg.data.layout import FILE_ENDING, IGNORE, Dataset, with_ignore, write_dataset_json
from sparseseg.data.volume import Volume
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_dir, write_json
from sparseseg.selection.features import intensity_features, normalise_volume
from sparseseg.selection.figures import contact_sheet, tsne_figure
from sparseseg.selection.selector import Selection
from sparseseg.selection.sparsify import (
    annotation_cost,
    annotation_mask,
    sparsify_labels,
    total_cost,
)


def write_selection(
    selection: Selection,
    out: str | Path,
    dataset: Dataset | str | Path | None = None,
    overwrite: bool = False,
    simulate_from_labels: bool = False,
    sheets: bool = True,
    tsne: bool = True,
    dense_labels: Dataset | str | Path | None = None,
) -> Path:
    """Write ``selection`` (made on ``dataset``, default: the one it records) to the folder
    ``out``, atomically; return ``out``. See the module docstring for the contents."""
    if dataset is None:
        if selection.dataset is None:
            raise InputError("the selection does not record its dataset; pass the dataset")
        dataset = selection.dataset
    ds = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    out = Path(out)
    root, target = ds.root.resolve(), out.resolve()
    if target == root or root.is_relative_to(target):
        raise InputError("the output folder would replace the source dataset", out)
    if out.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", out)
    names = list(selection.cases)
    dense = None
    if simulate_from_labels and selection.round is not None:
        if dense_labels is None:
            recorded = ds.meta.get("sparse_annotation", {}).get("source")
            hint = f" (its dataset.json names {recorded} as the source)" if recorded else ""
            raise InputError(
                "simulating a later round needs a dataset with the dense labels: pass "
                f"--dense-labels{hint}",
                ds.root,
            )
        dense = dense_labels if isinstance(dense_labels, Dataset) else Dataset.open(dense_labels)
    if simulate_from_labels:
        source = ds if dense is None else dense
        missing = [c for c in names if not source.label_path(c).exists()]
        if missing:
            raise InputError(
                f"--simulate-from-labels needs dense labels; labelsTr lacks {missing[:3]}",
                source.root,
            )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "selection.json", selection.to_json())
        for name in names:
            _write_case(selection, ds, name, tmp, sheets)
        if tsne and names:
            first = names[0]
            feats = selection.features.get(first)
            kind = (selection.extractor or {}).get("name", "")
            if not feats:
                image = normalise_volume(first_channel(ds.load_image(first).array))
                feats = {p: intensity_features(image, p) for p in selection.planes}
                kind = "intensity"
            title = f"{first}: {selection.strategy} s{selection.budget:g}, {kind} features"
            tsne_figure(feats, selection.chosen(first), tmp / "tsne.png", title, selection.seed)
        if simulate_from_labels:
            simulate_sparse_dataset(ds, selection, tmp / "dataset", dense)
    return out


def _write_case(selection: Selection, ds: Dataset, name: str, out: Path, sheet: bool) -> None:
    """The mask (and contact sheet) of one case; its image is freed on return."""
    image = ds.load_image(name)
    chosen = selection.chosen(name)
    if tuple(image.shape[-3:]) != tuple(selection.cases[name].shape):
        raise InputError(
            f"image shape {image.shape[-3:]} differs from the selection's "
            f"{selection.cases[name].shape}",
            ds.image_path(name),
        )
    mask = annotation_mask(image.shape[-3:], chosen).astype(np.uint8)
    write_nifti(out / "masks" / f"{name}{FILE_ENDING}", image.with_array(mask))
    if sheet:
        title = f"{name}: {selection.strategy} s{selection.budget:g}"
        contact_sheet(
            normalise_volume(first_channel(image.array)),
            chosen,
            out / "sheets" / f"{name}.png",
            image.spacing,
            title,
        )


def first_channel(image: np.ndarray) -> np.ndarray:
    """Channel 0 of an image (C, X, Y, Z), or the image (X, Y, Z) itself: what figures show."""
    return image[0] if image.ndim == 4 else image


def simulate_sparse_dataset(
    ds: Dataset, selection: Selection, dest: str | Path, dense: Dataset | None = None
) -> Path:
    """Write a canonical dataset at ``dest`` whose training labels are the true labels on the
    chosen slices and ``ignore`` elsewhere (as if an annotator had labelled only those slices).

    With ``dense`` (a later round): the true labels come from ``dense`` and every voxel ``ds``
    has labelled already keeps its label; the two must agree there (InputError otherwise).
    See :func:`write_sparse_dataset` for the rest of its content. The source is never modified.
    """
    ignore = sparse_labels(ds)[IGNORE]

    def sparse_label(name: str) -> Volume:
        image = ds.load_image(name)
        label = (ds if dense is None else dense).load_label(name, image=image)
        chosen = selection.chosen(name)
        sparse = sparsify_labels(label.array, chosen, ignore)
        if dense is not None:
            current = ds.load_label(name, image=image).array
            done = current != ds.ignore_value
            if np.any(label.array[done] != current[done]):
                raise InputError(
                    f"dense labels of {name} differ from its current labels on annotated voxels",
                    dense.label_path(name),
                )
            new = annotation_mask(label.shape, chosen)
            if dense.ignore_value is not None and np.any(label.array[new] == dense.ignore_value):
                raise InputError(
                    f"labels of {name} are not dense: the new slices hold the ignore label",
                    dense.label_path(name),
                )
            sparse = np.where(done, current, sparse)
        return label.with_array(sparse)

    chosen = {name: case.chosen for name, case in selection.cases.items()}
    return write_sparse_dataset(ds, selection, dest, chosen, sparse_label, dense=dense)


def sparse_labels(ds: Dataset) -> dict[str, int]:
    """The labels of a sparse dataset made from ``ds``: its classes and ``ignore``."""
    return ds.labels if IGNORE in ds.labels else with_ignore(ds.class_labels)


def write_sparse_dataset(
    ds: Dataset,
    selection: Selection,
    dest: str | Path,
    chosen: Mapping[str, Mapping[str, Sequence[int]]],
    sparse_label: Callable[[str], Volume],
    *,
    dense: Dataset | None = None,
) -> Path:
    """Write the sparse training dataset made from ``ds`` for the cases of ``chosen``.

    ``chosen``: case -> plane -> the slices annotated in it; ``sparse_label(case)``: its label
    map (X, Y, Z) with ``ignore`` off those slices (stored as uint8 where the values fit).
    ``dense``: the dense labels a later round's slices were simulated from (recorded, with the
    round and the cost of the union of all rounds' slices).
    Training images are copied byte for byte; imagesTs/labelsTs are copied unchanged, so the
    sparse dataset trains and evaluates as it is. dataset.json declares the ``ignore`` label and
    records the selection and the annotation cost of ``chosen`` under 'sparse_annotation'.
    """
    dest = Path(dest)
    labels = sparse_labels(ds)
    for name in chosen:
        (dest / "imagesTr").mkdir(parents=True, exist_ok=True)
        for image_path in ds.image_paths(name):
            shutil.copyfile(image_path, dest / "imagesTr" / image_path.name)
        label = sparse_label(name)
        sparse = label.array
        if sparse.max() <= 255 and sparse.min() >= 0:
            sparse = sparse.astype(np.uint8)
        write_nifti(dest / "labelsTr" / f"{name}{ds.file_ending}", label.with_array(sparse))
    for folder in ("imagesTs", "labelsTs"):
        source = ds.root / folder
        if source.is_dir():
            (dest / folder).mkdir(parents=True, exist_ok=True)
            for f in sorted(source.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, dest / folder / f.name)
    cost = total_cost([annotation_cost(selection.cases[n].shape, c) for n, c in chosen.items()])
    reserved = {"labels", "numTraining", "channel_names", "file_ending", "name"}
    extra = {k: v for k, v in ds.meta.items() if k not in reserved}
    extra["sparse_annotation"] = {
        "source": str(ds.root if dense is None else dense.root),
        "strategy": selection.strategy,
        "budget": selection.budget,
        "planes": list(selection.planes),
        "seed": selection.seed,
        "annotated_fraction": cost["annotated_fraction"],
        "covered_fraction": cost["covered_fraction"],
    }
    if dense is not None:  # the labelled fraction of the union of all rounds' slices
        union = {
            n: {p: [*(c.annotated or []), *c.indices] for p, c in case.planes.items()}
            for n, case in selection.cases.items()
        }
        cost = total_cost([annotation_cost(selection.cases[n].shape, u) for n, u in union.items()])
        extra["sparse_annotation"].update(
            round=selection.round,
            previous=str(ds.root),
            annotated_fraction=cost["annotated_fraction"],
            covered_fraction=cost["covered_fraction"],
        )
    write_dataset_json(
        dest,
        labels,
        num_training=len(chosen),
        channel_names=ds.meta.get("channel_names"),
        name=f"{ds.name}_{selection.strategy}_s{selection.budget:g}"
        if dense is None
        else f"{ds.name}_round{selection.round}",
        **extra,
    )
    return dest
