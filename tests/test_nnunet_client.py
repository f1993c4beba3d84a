"""nnU-Net v2 as a client: our sparse datasets pass its own dataset integrity check.

Runs nnunetv2's ``verify_dataset_integrity`` (installed by ``make install``, see the Makefile) on
a dataset written by ``select --simulate-from-labels`` and on one imported from painted maps by
``sparseseg annotations``. Skips only where nnunetv2 is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sparseseg import api
from sparseseg.data.io import write_nifti
from sparseseg.data.layout import Dataset
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.selection import annotation_mask, read_selection

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None, reason="nnunetv2 is not installed"
)


@pytest.fixture(scope="module")
def verify(tmp_path_factory):
    """nnunetv2's verify_dataset_integrity, with nnU-Net's folders set to empty temporary ones
    (it reads them at import); an installed but broken nnunetv2 fails here rather than skips."""
    root = tmp_path_factory.mktemp("nnunet")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / var).mkdir()
            mp.setenv(var, str(root / var))
        module = importlib.import_module("nnunetv2.experiment_planning.verify_dataset_integrity")
        yield root / "nnUNet_raw", module.verify_dataset_integrity


def check(verify_fn, folder: Path, capfd) -> None:
    """Run the check (one worker) and demand its 'Done' line and none of its warnings."""
    verify_fn(str(folder), 1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "Warning" not in printed and "Error" not in printed, printed


def test_simulated_and_imported_sparse_datasets_pass_nnunet_integrity_check(
    verify, tmp_path, capfd
):
    raw, verify_fn = verify
    ds = write_phantom_dataset(
        tmp_path / "ph", "heart", 2, seed=4, test_cases=1, shape=(20, 24, 12)
    )
    sel = tmp_path / "sel"
    api.select(ds, 4, sel, strategy="eia", simulate_from_labels=True, progress=False)
    # nnU-Net's own naming, DatasetXXX_Name under nnUNet_raw, though the check does not need it.
    simulated = raw / "Dataset901_PhantomSimulated"
    shutil.copytree(sel / "dataset", simulated)
    check(verify_fn, simulated, capfd)

    painted = tmp_path / "painted"
    dense = Dataset.open(ds)
    for case in dense.cases("Tr"):
        label = dense.load_label(case)
        on = annotation_mask(label.shape, read_selection(sel).chosen(case))
        write_nifti(painted / f"{case}.nii.gz", label.with_array(np.where(on, label.array, 0)))
    imported = raw / "Dataset902_PhantomPainted"
    api.import_annotations(sel, painted, imported, keep_extra=True)
    check(verify_fn, imported, capfd)
    assert Dataset.open(imported).ignore_value == 3

    # The check does look at the labels: a value the dataset does not declare fails it.
    broken = tmp_path / "broken"
    shutil.copytree(imported, broken)
    path = Dataset.open(broken).label_path(dense.cases("Tr")[0])
    img = nib.load(path)
    array = np.asarray(img.dataobj).copy()
    array[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(array, img.affine, img.header), path)
    with pytest.raises(RuntimeError, match="unexpected labels"):
        verify_fn(str(broken), 1)
    # Its workers' lines reach the captured output, so the checks in check() can see warnings.
    assert "Unexpected labels found in file" in capfd.readouterr().out
