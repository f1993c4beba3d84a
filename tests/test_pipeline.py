"""The train pipeline: stages on disk, skipping finished stages, resuming an interrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_preset import TINY

from sparseseg.cli import main
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.errors import InputError

# Small enough that a whole train runs in seconds on two cores.


def sparse_dataset(root: Path, cases: int = 3, shape=(24, 24, 16), step: int = 4) -> Path:
    """A heart phantom with labels on every ``step``-th slice of each plane, plus one labelled
    test case."""
    dense = write_phantom_dataset(root / "dense", "heart", cases, seed=3, test_cases=1, shape=shape)
    ds = Dataset.open(dense)
    out = root / "sparse"
    ignore = ds.num_classes
    for case in ds.cases("Tr"):
        image, label = ds.load_pair(case)
        keep = np.zeros(label.shape, bool)
        keep[::step] = keep[:, ::step] = keep[:, :, ::step] = True
        sparse = np.where(keep, label.array, ignore).astype(np.uint8)
        write_case(out, case, image, image.with_array(sparse))
    for case in ds.cases("Ts"):
        image, label = ds.load_pair(case, "Ts")
        write_case(out, case, image, label, "Ts")
    write_dataset_json(out, {**ds.class_labels, "ignore": ignore}, cases)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, model folder, log lines) of one tiny training run shared by the tests."""
    from sparseseg.pipeline import train

    root = tmp_path_factory.mktemp("pipeline")
    dataset = sparse_dataset(root)
    lines: list[str] = []
    train(dataset, root / "model", "cpu", TINY, progress=False, log=lines.append)
    return dataset, root / "model", lines


def test_train_writes_every_stage(trained):
    dataset, model, lines = trained
    state = json.loads((model / "pipeline.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("pseudolabels", "meta", "bundle", "report"))
    assert (model / "stage2_pseudolabels" / "pl_3d" / "labelsTr" / "heart_000.nii.gz").exists()
    assert (model / "stage3_meta" / "meta.pt").exists()
    assert (model / "bundle.pt").exists() and (model / "bundle.json").exists()
    log = json.loads((model / "stage3_meta" / "selftrain.json").read_text())
    # Stage 1 for 4 iterations, then NN-fit rounds to the end (threshold 0 never settles).
    assert log["steps"] == 10 and log["stop_reason"] == "budget" and log["settled_at"] is None
    assert log["nnfit"]["rounds"][0]["iteration"] == 4
    assert all(len(r["choice"]) == 3 for r in log["nnfit"]["rounds"])
    picks = [h for h in log["history"] if "pick_xy" in h]
    assert picks and all(
        abs(sum(h[f"pick_{n}"] for n in ("xy", "xz", "yz", "3d")) - 1) < 1e-6 for h in picks
    )
    report = json.loads((model / "report.json").read_text())
    assert set(report["parts"]) == {"meta", "3d", "xy", "xz", "yz"}
    for entry in report["parts"].values():
        assert set(entry["dice"]) == {"myocardium", "blood_pool"}
    assert any("NN-fit round" in line for line in lines)


def test_every_model_file_is_a_bundle_and_the_model_bundle_merges_their_parts(trained, tmp_path):
    import torch

    from sparseseg.bundle import load_bundle, read_bundle_json
    from sparseseg.config import get_preset
    from sparseseg.pipeline import make_bundle
    from sparseseg.pseudolabels import load_base_models

    dataset, model, _ = trained
    merged = load_bundle(model)
    assert set(merged.parts) == {"2d", "3d", "meta"}
    assert set(read_bundle_json(model)["parts"]) == {"2d", "3d", "meta"}
    stage2 = model / "stage2_pseudolabels" / "models"
    files = {"2d": stage2 / "model2d.pt", "3d": stage2 / "model3d.pt"}
    files["meta"] = model / "stage3_meta" / "meta.pt"
    settings = ("class_names", "preset", "config", "planes", "pl_sets", "normalisation")
    for name, file in files.items():
        one = load_bundle(file)
        assert list(one.parts) == [name]
        assert list(read_bundle_json(file)["parts"]) == [name]  # FILE.json beside FILE.pt
        assert all(one.metadata()[k] == merged.metadata()[k] for k in settings)
        a, b = one.parts[name], merged.parts[name]
        assert (a.arch, a.kwargs) == (
            b.arch,
            b.kwargs,
        ) and a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    broken = copy / "stage2_pseudolabels" / "models" / "model2d.pt"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(InputError, match="model2d.pt: cannot read model bundle"):
        make_bundle(Dataset.open(dataset), copy, get_preset("cpu", TINY))
    with pytest.raises(InputError, match="model2d.pt: cannot read model bundle"):
        load_base_models(copy / "stage2_pseudolabels")


def test_rerun_skips_finished_stages(trained, tmp_path):
    from sparseseg.pipeline import train

    dataset, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    before = (copy / "bundle.pt").stat().st_mtime_ns
    lines: list[str] = []
    train(dataset, copy, "cpu", TINY, progress=False, log=lines.append)
    assert sum("done already, skipped" in line for line in lines) == 4
    assert (copy / "bundle.pt").stat().st_mtime_ns == before


def test_other_settings_are_refused(trained, tmp_path):
    from sparseseg.pipeline import train

    dataset, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    with pytest.raises(InputError, match="other settings.*meta"):
        train(dataset, copy, "cpu", {**TINY, "meta.train.iterations": 11}, progress=False)


def test_folder_from_before_a_new_preset_field_is_reused(trained, tmp_path):
    from sparseseg.fingerprint import FILE
    from sparseseg.pipeline import train

    dataset, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    stored = json.loads((copy / FILE).read_text())
    del stored["settings"]["preset"]["meta"]["ay_skip"]  # as written before the field existed
    (copy / FILE).write_text(json.dumps(stored))
    lines: list[str] = []
    train(dataset, copy, "cpu", TINY, progress=False, log=lines.append)
    assert sum("done already, skipped" in line for line in lines) == 4


def test_interrupted_meta_stage_resumes_from_its_checkpoint(trained, tmp_path, monkeypatch):
    import sparseseg.selftrain as selftrain
    from sparseseg.pipeline import STATE_FILE, train
    from sparseseg.training.loop import load_checkpoint

    dataset, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("stage3_meta", "bundle.*"))
    state = json.loads((copy / STATE_FILE).read_text())
    state["stages"] = {"pseudolabels": state["stages"]["pseudolabels"]}
    (copy / STATE_FILE).write_text(json.dumps(state))

    steps: list[int] = []
    original = selftrain.pick_targets

    def counting(targets, choice):
        steps.append(1)
        if interrupt_after is not None and len(steps) > interrupt_after:
            raise KeyboardInterrupt
        return original(targets, choice)

    monkeypatch.setattr(selftrain, "pick_targets", counting)
    interrupt_after = 7  # dies in step 8, after the checkpoint of step 6
    with pytest.raises(KeyboardInterrupt):
        train(dataset, copy, "cpu", TINY, progress=False, report=False)
    ckpt = load_checkpoint(copy / "stage3_meta" / "meta.ckpt")
    assert ckpt["step"] == 6 and not ckpt["done"]
    assert len(ckpt["extra"]["nnfit"]["rounds"]) == 2  # rounds at iterations 4 and 5
    assert not json.loads((copy / STATE_FILE).read_text())["stages"].get("meta")

    again = tmp_path / "again"  # without --resume it starts over, and says how not to
    shutil.copytree(copy, again)
    steps.clear()
    interrupt_after, lines = 0, []
    with pytest.raises(KeyboardInterrupt):
        train(dataset, again, "cpu", TINY, progress=False, report=False, log=lines.append)
    assert any("--resume continues the checkpoints in stage3_meta" in line for line in lines)

    steps.clear()
    interrupt_after = None
    lines: list[str] = []
    train(dataset, copy, "cpu", TINY, resume=True, progress=False, report=False, log=lines.append)
    assert len(steps) == 4  # steps 7..10 only
    assert "pseudolabels: done already, skipped" in lines
    log = json.loads((copy / "stage3_meta" / "selftrain.json").read_text())
    assert log["steps"] == 10
    assert [r["iteration"] for r in log["nnfit"]["rounds"]] == [4, 5, 6, 7, 8, 9]
    assert (copy / "bundle.pt").exists()


def test_cli_train_then_predict_then_errors(trained, tmp_path, capsys):
    dataset, model, _ = trained
    out = tmp_path / "pred"
    code = main(["predict", str(model), str(dataset / "imagesTs"), "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "heart_003.nii.gz").exists()
    capsys.readouterr()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bundle.pt").write_bytes(b"\x00" * 10)
    code = main(["predict", str(tmp_path / "broken"), str(dataset / "imagesTs"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bundle.pt" in err
    code = main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1


def test_sparse_test_labels_skip_the_report_not_the_model(trained, tmp_path):
    from sparseseg.data.io import read_nifti, write_nifti
    from sparseseg.pipeline import train

    dataset, model, _ = trained
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    label = data / "labelsTs" / "heart_003.nii.gz"
    vol = read_nifti(label)
    sparse = vol.array.copy()
    sparse[:, :, 1::2] = 3  # the ignore value
    write_nifti(label, vol.with_array(sparse))
    lines: list[str] = []
    state = train(data, tmp_path / "model", "cpu", TINY, progress=False, log=lines.append)
    assert "ignore" in state["stages"]["report"]["skipped"] and "report" not in state
    assert any(line.startswith("report: not written") for line in lines)


def test_python_api_mirrors_the_cli(trained, tmp_path):
    from sparseseg import api

    dataset, model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    state = api.train(dataset, copy, "cpu", TINY, progress=False, verbose=False)
    assert state["stages"]["bundle"]["done"] and "meta" in state["report"]["parts"]

    ds = Dataset.open(dataset)
    image = ds.load_image("heart_003", "Ts")
    in_memory = api.predict(copy, image, parts="meta,3d", progress=False)
    assert set(in_memory) == {"meta", "3d"} and in_memory["meta"].labels.shape == image.shape
    written = api.predict(copy, ds.image_path("heart_003", "Ts"), tmp_path / "pred", progress=False)
    scores = api.evaluate(tmp_path / "pred", dataset, split="Ts")
    assert list(written) == ["heart_003"] and set(scores["cases"]) == {"heart_003"}

    sel = api.select(dataset, 8, tmp_path / "sel", strategy="eia", progress=False)
    assert (tmp_path / "sel").exists() and len(sel.cases) == 3


def test_a_2d_model_with_neighbouring_slices_trains_and_predicts(trained, tmp_path):
    """``model2d.context=1``: the 2D model reads three slices per input channel, and the
    pseudo-labels, the bundle and ``predict`` all feed it so."""
    from sparseseg.bundle import load_bundle
    from sparseseg.pipeline import train
    from sparseseg.predict import predict_files

    dataset, _, _ = trained
    state = train(
        dataset, tmp_path / "model", "cpu", {**TINY, "model2d.context": 1}, progress=False
    )
    bundle = load_bundle(tmp_path / "model")
    assert bundle.parts["2d"].kwargs["in_channels"] == 3 and bundle.num_channels == 1
    assert set(state["report"]["parts"]) == {"meta", "3d", "xy", "xz", "yz"}
    out = predict_files(
        tmp_path / "model" / "stage2_pseudolabels" / "models" / "model2d.pt",
        Path(dataset) / "imagesTs",
        tmp_path / "pred",
        parts="xy",
        progress=False,
    )
    assert all(paths["xy"].exists() for paths in out.values())
    with pytest.raises(ValueError, match="context"):
        from sparseseg.config import get_preset

        get_preset("auto", ["model2d.context=1", "meta.plane=xy", "meta.init=2d"])
