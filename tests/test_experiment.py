"""The experiment runner on a tiny phantom: every run scored, tables written, reruns skipped."""

import json

import numpy as np
import pytest
from tiny_preset import TINIER

from sparseseg import report
from sparseseg.cli import main
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.demo import run_demo


def test_demo_grid_runs_scores_reports_and_skips(tmp_path):
    logs = []
    kwargs = dict(
        cases=2,
        test_cases=2,
        budget=4,
        shape=(24, 24, 16),
        preset="cpu",
        overrides=TINIER,
        progress=False,
    )
    report_md = run_demo(tmp_path / "demo", log=logs.append, **kwargs)
    out = tmp_path / "demo" / "experiment"
    paths = {name: out / name for name in ("results.csv", "tables.md", "fig5.png")}
    rows = report.read_rows(paths["results.csv"])
    models = {(r["strategy"], r["model"]) for r in rows}
    assert ("full", "full") in models
    for strategy in ("ra", "eia"):
        for model in ("meta", "3d", "xy", "xz", "yz"):
            assert (strategy, model) in models
    classes = {r["class"] for r in rows}
    assert classes == {"myocardium", "blood_pool", "mean"}
    ra_mean = [r for r in rows if r["strategy"] == "ra" and r["class"] == "mean"]
    # s4 on three planes annotates about 3/4 of the voxels' worth of pixels
    assert all(0.5 < r["annotated_fraction"] < 0.8 for r in ra_mean)
    # Each model's mean row averages its class rows, and the rows are the run's own test scores.
    scored = json.loads((out / "runs" / "ra-s4-seed0" / "model" / "report.json").read_text())
    assert {r["model"] for r in ra_mean} == set(scored["parts"])
    for r in ra_mean:
        per_class = [
            x["dice"]
            for x in rows
            if (x["strategy"], x["model"]) == ("ra", r["model"])
            and x["class"] != "mean"
            and x["dice"] is not None
        ]
        assert r["dice"] == pytest.approx(np.mean(per_class), abs=1e-5)  # the CSV keeps 6 digits
        assert r["dice"] == pytest.approx(scored["parts"][r["model"]]["mean_dice"], abs=1e-5)
    cases = report.read_rows(out / "cases.csv")
    assert len({r["case"] for r in cases}) == 2
    assert "RA+ST" in paths["tables.md"].read_text()
    assert paths["fig5.png"].read_bytes()[:4] == b"\x89PNG"
    comparisons = json.loads((out / "comparisons.json").read_text())
    assert any(c["comparison"] == "RA - EIA (meta)" and c["n"] == 2 for c in comparisons)

    text = report_md.read_text()
    assert "RA+ST" in text and "![predictions](predictions.png)" in text
    for figure in ("selection.png", "predictions.png"):
        assert (tmp_path / "demo" / figure).read_bytes()[:4] == b"\x89PNG"

    # A second call finds every run done and only rewrites the tables.
    logs.clear()
    run_demo(tmp_path / "demo", log=logs.append, **kwargs)
    assert sum("skipped" in line for line in logs) == 3


def test_sparse_dataset_is_refused(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "h", "heart", cases=1, seed=0, shape=(16, 16, 8))
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (data / "dataset.json").write_text(json.dumps(meta))
    code = main(["experiment", str(data), "--out", str(tmp_path / "r"), "--budgets", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "needs dense" in err and str(data) in err
    assert not (tmp_path / "r").exists()


def test_xy_only_2d_model_reports_its_trained_parts(tmp_path):
    # A 2D model trained on xy sections alone gives the xy and 3D PL sets; the run annotates xy
    # sections only and scores meta, 3d and xy, not the planes the 2D model never saw.
    data = write_phantom_dataset(
        tmp_path / "data", "heart", cases=2, seed=0, test_cases=1, shape=(24, 24, 16)
    )
    sets = [a for k, v in {**TINIER, "planes": "xy"}.items() for a in ("--set", f"{k}={v}")]
    args = ["experiment", str(data), "--out", str(tmp_path / "res"), "--budgets", "4"]
    args += ["--strategies", "eia", "--seeds", "0", "--no-full", "--quiet"]  # planes: the preset's
    args += ["--preset", "cpu"]
    assert main([*args, *sets]) == 0
    rows = report.read_rows(tmp_path / "res" / "results.csv")
    assert {r["model"] for r in rows} == {"meta", "3d", "xy"}
    model = tmp_path / "res" / "runs" / "eia-s4-seed0" / "model"
    selftrain = json.loads((model / "stage3_meta" / "selftrain.json").read_text())
    assert selftrain["pl_sets"] == ["xy", "3d"]
    assert json.loads((model / "bundle.json").read_text())["pl_sets"] == ["xy", "3d"]
    selection = json.loads((model.parent / "selection" / "selection.json").read_text())
    assert all(list(c["planes"]) == ["xy"] for c in selection["cases"].values())


def test_full_run_predicts_through_the_predictor_as_the_sliding_window_did(tmp_path):
    # The full-supervision baseline predicts with predict.Predictor; its labels equal the direct
    # sliding-window argmax it used to compute itself.
    import numpy as np
    import torch
    from tiny_preset import TINY

    from sparseseg.bundle import Bundle
    from sparseseg.config import get_preset
    from sparseseg.inference import predict_volume_3d
    from sparseseg.models import base_part, build_model3d
    from sparseseg.predict import Predictor
    from sparseseg.runtime import zscore

    cfg = get_preset("cpu", TINY)
    torch.manual_seed(0)
    model = build_model3d(cfg.model3d, 1, 3).eval()
    part = base_part(model, "densevoxnet", cfg.model3d)
    image = np.random.default_rng(0).normal(size=(20, 18, 24)).astype(np.float32) * 4 + 7
    direct = predict_volume_3d(
        model,
        zscore(image),
        cfg.inference.patch,
        cfg.inference.overlap,
        sw_batch_size=cfg.inference.sw_batch_size,
        device="cpu",
    ).argmax(0)
    bundle = Bundle({"3d": part}, ["a", "b", "c"], cfg.name, cfg.to_dict())
    labels = Predictor(bundle, device="cpu").predict(image, ("3d",))["3d"].labels
    assert labels.dtype == np.uint8 and len(np.unique(direct)) > 1
    np.testing.assert_array_equal(labels, direct)


def test_second_round_total_tops_up_the_first_round_to_one_shot_s_k():
    from sparseseg.experiment import second_round_total

    # K(N, 20) = max(1, floor(N / 20)): 2 for 40 and 59 slices, 1 for 31 and 24
    first = {
        "cases": {
            "a": {
                "planes": {
                    "xy": {"num_slices": 40, "count": 1},
                    "xz": {"num_slices": 59, "count": 1},
                }
            },
            "b": {
                "planes": {
                    "xy": {"num_slices": 31, "count": 1},
                    "xz": {"num_slices": 24, "count": 1},
                }
            },
        }
    }
    assert second_round_total(first, 20) == (2 + 2 + 1 + 1) - 4
    assert second_round_total(first, 40) == 0


def test_rounds_top_up_the_ra_run_at_twice_k_to_the_slices_of_one_shot_s_k(tmp_path):
    from sparseseg.selection.strategies import budget_count

    data = write_phantom_dataset(
        tmp_path / "data", "heart", cases=2, seed=0, test_cases=1, shape=(24, 24, 16)
    )
    sets = [a for k, v in TINIER.items() for a in ("--set", f"{k}={v}")]
    args = ["experiment", str(data), "--out", str(tmp_path / "res"), "--budgets", "4"]
    args += ["--strategies", "ra,rounds", "--extractor", "intensity", "--no-full", "--quiet"]
    args += ["--preset", "cpu"]
    assert main([*args, *sets]) == 0
    runs = tmp_path / "res" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "ra-s4-seed0",
        "ra-s8-seed0",
        "rounds-s4-seed0",
    ]
    first = json.loads((runs / "ra-s8-seed0" / "selection" / "selection.json").read_text())
    second = json.loads((runs / "rounds-s4-seed0" / "selection" / "selection.json").read_text())
    one_shot = json.loads((runs / "ra-s4-seed0" / "selection" / "selection.json").read_text())
    assert second["round"] == 2
    for case, entry in second["cases"].items():
        for plane, choice in entry["planes"].items():
            before = first["cases"][case]["planes"][plane]["indices"]
            assert sorted(choice["annotated"]) == sorted(before)
            assert not set(choice["indices"]) & set(before)  # never re-picked
    total = sum(
        len(c["annotated"]) + len(c["indices"])
        for e in second["cases"].values()
        for c in e["planes"].values()
    )
    assert (
        total
        == sum(
            budget_count(c["num_slices"], 4)
            for e in one_shot["cases"].values()
            for c in e["planes"].values()
        )
        == sum(c["count"] for e in one_shot["cases"].values() for c in e["planes"].values())
    )
    rows = report.read_rows(tmp_path / "res" / "results.csv")
    means = {
        r["strategy"]: r["annotated_fraction"]
        for r in rows
        if r["model"] == "meta" and r["class"] == "mean" and r["budget"] == 4
    }
    meta = json.loads(
        (runs / "rounds-s4-seed0" / "selection" / "dataset" / "dataset.json").read_text()
    )
    assert means["rounds"] == pytest.approx(meta["sparse_annotation"]["annotated_fraction"])
    assert (
        means["rounds"]
        > json.loads((runs / "ra-s8-seed0" / "selection" / "dataset" / "dataset.json").read_text())[
            "sparse_annotation"
        ]["annotated_fraction"]
    )
    comparisons = json.loads((tmp_path / "res" / "comparisons.json").read_text())
    assert any(c["comparison"] == "ROUNDS - RA (meta)" and c["budget"] == 4 for c in comparisons)
