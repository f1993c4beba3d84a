"""Fingerprint -> plan -> preset `auto`: pooling from the spacing, plan.json, budgets."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sparseseg.cli import main
from sparseseg.config import get_preset, preset_from_dict
from sparseseg.data.layout import Dataset, write_case, write_dataset_json
from sparseseg.data.phantom import HEART_LABELS, case_rng, make_case, write_phantom_dataset
from sparseseg.data.volume import Volume, affine_from_spacing
from sparseseg.errors import InputError
from sparseseg.planning import fingerprint, fingerprint_arrays, make_plan, plan_preset
from sparseseg.planning.budget import (
    FEW_3D_STEPS,
    ITERATION_FIELDS,
    ORDER_FIELDS,
    describe_budget,
    fit_budget,
    inference_seconds,
    probe,
)
from sparseseg.planning.plan import describe, pooling, total_stride

# Every iteration field set: no time probe, a few steps each.
FEW_STEPS = {
    "train2d.iterations": 3,
    "train3d.iterations": 3,
    "meta.train.iterations": 4,
    "meta.stage1_iterations": 2,
}


# probe numbers for the budget tests: seconds per training step and per inferred voxel
MEASURED = {
    "2d_step": 0.1,
    "3d_step": 0.5,
    "meta_step": 0.6,
    "2d_voxel": 1e-7,
    "3d_voxel": 1e-6,
    "meta_voxel": 1e-6,
    "seconds": 20.0,
}


def _fp(shape, spacing, cases=4):
    ratio = max(spacing) / min(spacing)
    return {
        "cases": cases,
        "test_cases": 1,
        "median_shape": list(shape),
        "median_spacing": list(spacing),
        "spacing_spread": [list(spacing), list(spacing)],
        "anisotropy": ratio,
        "thick_axis": int(np.argmax(spacing)) if ratio >= 2 else None,
        "annotated_fraction": 1.0,
        "shapes": [list(shape)] * cases,
    }


def _levels(flat, dims=3):
    return [tuple(flat[i : i + dims]) for i in range(0, len(flat), dims)]


def test_fingerprint_of_a_phantom_counts_annotated_voxels_only(tmp_path):
    data = write_phantom_dataset(tmp_path / "h", "heart", cases=2, seed=0, shape=(24, 20, 16))
    fp = fingerprint(Dataset.open(data))
    assert fp["cases"] == 2 and fp["num_classes"] == 3
    assert fp["median_shape"] == [24, 20, 16]
    assert fp["median_spacing"] == pytest.approx([1.0, 1.0, 1.6])
    assert fp["anisotropy"] == pytest.approx(1.6) and fp["thick_axis"] is None
    assert fp["annotated_fraction"] == 1.0 and sum(fp["class_fractions"]) == pytest.approx(1.0)
    assert 0 < fp["foreground_fraction"] < 1
    assert fp["intensity"]["p00_5"] <= fp["intensity"]["mean"] <= fp["intensity"]["p99_5"]

    # sparse labels: only annotated voxels count (here: one slice of pure background)
    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    label = np.full((4, 4, 3), 9, np.uint8)
    label[:, :, 0] = 0
    label[0, 0, 0] = 1
    sparse = fingerprint_arrays([(image, label, (1, 1, 4))], ["bg", "fg"], ignore_index=9)
    assert sparse["annotated_fraction"] == pytest.approx(16 / 48)
    assert sparse["foreground_fraction"] == pytest.approx(1 / 16)
    assert sparse["intensity"]["mean"] == 0.0  # the one annotated foreground voxel
    assert sparse["thick_axis"] == 2 and sparse["anisotropy"] == 4


def _two_classes(rng, ignore=None):
    """Class 2 always after class 1 along y, on either side along x, level along z."""
    label = np.zeros((16, 20, 12), np.uint8)
    near, far = slice(2, 6), slice(10, 14)
    if rng.random() < 0.5:
        near, far = far, near
    label[near, 2:6, 4:8] = 1
    label[far, 12:16, 4:8] = 2
    if ignore is not None:  # sparse: two xz slices and one xy slice annotated
        sparse = np.full(label.shape, ignore, np.uint8)
        for index in ((slice(None), 4), (slice(None), 13), (slice(None), slice(None), 5)):
            sparse[index] = label[index]
        label = sparse
    return np.zeros(label.shape, np.float32), label, (1.0, 1.0, 1.0)


def test_the_plan_flips_only_axes_along_which_the_classes_keep_no_order():
    rng = np.random.default_rng(0)
    names = ["bg", "a", "b"]
    for ignore in (None, 9):
        fp = fingerprint_arrays([_two_classes(rng, ignore) for _ in range(20)], names, ignore)
        assert fp["class_order"][1] == 1.0 and fp["class_order"][2] == 0.0
        assert 0.2 < fp["class_order"][0] < 0.95
        plan = make_plan(fp)
        assert plan.train3d.flip_axes == plan.train2d.flip_axes == (0, 2)
        assert plan.meta.train.flip_axes == plan.inference.mirror_axes == (0, 2)
        assert not plan.train3d.rot90_xy  # a quarter turn in xy would swap x and y
        text = "\n".join(describe(plan, fp))
        assert "flips along x,z, xy quarter turns off (the classes keep one order along y)" in text
    # one foreground class: no order to keep, flips and turns everywhere (nnU-Net's default)
    one = [(image, np.minimum(label, 1), s) for image, label, s in [_two_classes(rng)] * 3]
    fp = fingerprint_arrays(one, names[:2])
    assert fp["class_order"] is None
    plan = make_plan(fp)
    assert plan.train3d.flip_axes == plan.inference.mirror_axes == (0, 1, 2)
    assert plan.train3d.rot90_xy


def test_plan_pools_a_thick_axis_only_once_it_is_comparable():
    iso = make_plan(_fp((36, 50, 35), (1.0, 1.0, 1.0)))
    em = make_plan(_fp((128, 128, 24), (1.0, 1.0, 10.0)))
    assert iso.train3d.patch == (48, 64, 48)  # the median volume with a margin
    assert iso.model3d.filters == (16, 32, 64, 128) and iso.planes == ("xy", "xz", "yz")
    iso_strides, em_strides = _levels(iso.model3d.strides), _levels(em.model3d.strides)
    assert all(s == (2, 2, 2) for s in iso_strides[1:])
    z_pools = sum(s[2] == 2 for s in em_strides)
    xy_pools = sum(s[0] == 2 for s in em_strides)
    assert z_pools < xy_pools and em_strides[1] == (2, 2, 1)
    assert _levels(em.model3d.kernels)[0] == (3, 3, 1)  # in-plane kernels first
    assert em.planes == ("xy",)  # strong anisotropy: 2D model on the sections only
    for plan in (iso, em):
        stride = total_stride(_levels(plan.model3d.strides))
        assert all(p % k == 0 for p, k in zip(plan.train3d.patch, stride, strict=True))
        assert math.prod(plan.train3d.patch) <= 150_000
        assert plan.model3d.arch == "dynunet"
    assert em.train3d.rot90_xy and not make_plan(_fp((20, 20, 20), (1, 2, 2))).train3d.rot90_xy
    strides, kernels = pooling((1.0, 1.0, 3.0), (64, 64, 16), 5)
    assert strides[1] == (2, 2, 1) and kernels[0] == (3, 3, 1) and kernels[-1] == (3, 3, 3)


def test_the_plan_picks_the_optimiser_for_the_machine():
    """Adam on a CPU (a budget buys a few thousand steps), nnU-Net's SGD on a GPU; every model
    of a plan trains with it, the meta-model included."""
    fp = _fp((36, 50, 35), (1.0, 1.0, 1.0))
    for device, optimizer, lr in (("cpu", "adam", 1e-3), ("cuda", "sgd", 1e-2)):
        plan = make_plan(fp, device)
        for train in (plan.train2d, plan.train3d, plan.meta.train):
            assert (train.optimizer, train.lr) == (optimizer, lr), device
    thick = make_plan(_fp((128, 128, 24), (1.0, 1.0, 10.0)))
    assert thick.meta.plane == "xy" and thick.meta.train.optimizer == "adam"


def _thick_heart(root: Path, cases: int = 2, shape=(24, 24, 12)) -> Path:
    """The heart phantom re-labelled as thick sections: spacing (1, 1, 10) mm."""
    affine = affine_from_spacing((1.0, 1.0, 10.0))
    for i in range(cases + 1):
        image, label = make_case("heart", case_rng(0, "heart", i), shape)
        split = "Tr" if i < cases else "Ts"
        write_case(root, f"h{i}", Volume(image.array, affine), Volume(label.array, affine), split)
    write_dataset_json(root, HEART_LABELS, num_training=cases)
    return root


def test_train_prints_a_plan_that_pools_z_differently_on_thick_sections(tmp_path, capsys):
    iso = write_phantom_dataset(
        tmp_path / "iso", "heart", 2, seed=0, test_cases=1, shape=(24, 24, 16)
    )
    thick = _thick_heart(tmp_path / "thick")
    sets = [f"--set={k}={v}" for k, v in FEW_STEPS.items()]
    lines, meta_line = {}, {}
    for name, data in (("iso", iso), ("thick", thick)):
        out = tmp_path / f"model_{name}"
        code = main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--preset",
                "auto",
                "--quiet",
                "--no-report",
                *sets,
            ]
        )
        assert code == 0
        err = capsys.readouterr().err.splitlines()
        lines[name] = [ln for ln in err if ln.startswith("3D:")]
        meta_line[name] = next(ln for ln in err if ln.startswith("2D:"))
        plan = json.loads((out / "plan.json").read_text())
        assert plan["preset"]["name"] == "auto" and plan["budget"] is None  # iterations set
        bundle = json.loads((out / "bundle.json").read_text())
        assert bundle["parts"]["3d"]["arch"] == "dynunet"
        assert bundle["parts"]["meta"]["arch"] == "dynunet-meta"
        assert bundle["config"]["model3d"]["strides"] == plan["preset"]["model3d"]["strides"]
    assert "pooling x2 y2 z2" in lines["iso"][0] or "pooling x3 y3 z3" in lines["iso"][0]
    iso_z = int(lines["iso"][0].split(" z")[1][0])
    thick_z = int(lines["thick"][0].split(" z")[1][0])
    assert thick_z < iso_z
    assert "3x3x1" in lines["thick"][0]
    # the 2D model of the thick stack trains on xy sections only, and so does the meta-model,
    # started from the 2D model; it predicts section by section
    bundle = json.loads((tmp_path / "model_thick" / "bundle.json").read_text())
    assert bundle["planes"] == ["xy"] and bundle["config"]["meta"]["plane"] == "xy"
    meta, two = bundle["parts"]["meta"]["kwargs"], bundle["parts"]["2d"]["kwargs"]
    assert meta["spatial_dims"] == 2 and meta["filters"] == two["filters"]
    assert "meta-model: dynunet (stack) 2D on xy" in meta_line["thick"]
    assert "2D on" not in meta_line["iso"]
    iso_bundle = json.loads((tmp_path / "model_iso" / "bundle.json").read_text())
    assert iso_bundle["parts"]["meta"]["kwargs"]["spatial_dims"] == 3
    from sparseseg.predict import Predictor

    image = Dataset.open(thick).load_pair("h2", "Ts")[0].array
    labels = Predictor(tmp_path / "model_thick" / "bundle.pt").predict(image)["meta"].labels
    assert labels.shape == image.shape and labels.max() < 3


def test_plan_json_round_trips_and_overrides_win(tmp_path):
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, shape=(24, 24, 16))
    out = tmp_path / "m"
    out.mkdir()
    lines: list[str] = []
    overrides = {**FEW_STEPS, "train3d.batch_size": 1, "meta.fusion": "y"}
    preset = plan_preset(data, overrides, model_dir=out, log=lines.append)
    assert preset.train3d.batch_size == 1 and preset.meta.fusion == "y"
    stored = json.loads((out / "plan.json").read_text())
    assert preset_from_dict(stored["preset"]) == preset
    assert stored["notes"]["resampling"].startswith("none")
    assert any(line.startswith("3D: DynUNet") for line in lines)
    again: list[str] = []
    assert plan_preset(data, overrides, model_dir=out, log=again.append) == preset
    assert any("reused" in line for line in again)
    # another request is planned afresh
    other = plan_preset(data, {**overrides, "train3d.batch_size": 3}, model_dir=out)
    assert other.train3d.batch_size == 3
    # the unplanned preset stays reachable by name, and so do the old ones
    assert (
        get_preset("auto").name == "auto" and get_preset("cpu-aniso").model3d.arch == "densevoxnet"
    )


def test_budget_turns_minutes_into_iterations():
    plan = make_plan(_fp((36, 50, 35), (1.0, 1.0, 1.0), cases=10))
    plan = dataclasses.replace(plan, budget_minutes=10.0)
    measured = dict(MEASURED)
    reserve = inference_seconds(plan, _fp((36, 50, 35), (1, 1, 1), cases=10), measured)
    assert set(reserve) == {"pseudolabels", "nnfit", "test", "io"}
    fitted, record = fit_budget(plan, _fp((36, 50, 35), (1, 1, 1), cases=10), measured)
    spare = 600 - sum(reserve.values()) - 20
    assert record["training_seconds"] == pytest.approx(spare, abs=0.1)
    assert fitted.train3d.iterations == int(0.4 * spare / 0.5)
    assert fitted.train2d.iterations == int(0.2 * spare / 0.1)
    meta = fitted.meta.train.iterations
    assert meta == pytest.approx(0.4 * spare / 0.6, abs=1)
    assert fitted.meta.stage1_iterations == round(meta * 2 / 3)
    # time spent: about the budget
    spent = (
        (fitted.train2d.iterations * 0.1 + fitted.train3d.iterations * 0.5 + meta * 0.6)
        + sum(reserve.values())
        + 20
    )
    assert 0.97 * 600 <= spent <= 600
    kept, record = fit_budget(plan, _fp((36, 50, 35), (1, 1, 1)), measured, ["train3d.iterations"])
    assert kept.train3d.iterations == plan.train3d.iterations
    assert "train3d.iterations" not in record["iterations"] and set(ITERATION_FIELDS) > set(
        record["iterations"]
    )
    tight = dataclasses.replace(plan, budget_minutes=0.1)
    starved, record = fit_budget(tight, _fp((36, 50, 35), (1, 1, 1)), measured)
    assert record["over_budget"] and starved.train3d.iterations == 20


@pytest.mark.parametrize("models", [("2d", "3d", "meta"), ("3d",)])
def test_a_budget_that_buys_few_3d_steps_names_the_minutes_that_would_not(models):
    fp = _fp((36, 50, 35), (1.0, 1.0, 1.0), cases=10)
    plan = dataclasses.replace(make_plan(fp), budget_minutes=5.0)
    fitted, record = fit_budget(plan, fp, MEASURED, models=models)
    assert fitted.train3d.iterations < FEW_3D_STEPS
    line = describe_budget(record)
    minutes = int(line.split("few 3D steps: --minutes ")[1].split()[0])
    enough, record = fit_budget(
        dataclasses.replace(plan, budget_minutes=minutes), fp, MEASURED, models=models
    )
    assert FEW_3D_STEPS <= enough.train3d.iterations < 1.05 * FEW_3D_STEPS
    assert "few 3D steps" not in describe_budget(record)


def test_a_probe_that_shared_the_cpu_says_so():
    fp = _fp((36, 50, 35), (1.0, 1.0, 1.0), cases=10)
    plan = make_plan(fp)
    for others, spare, busy in ((0.1, 0.0, False), (1.0, 0.0, True), (1.0, 6.0, False)):
        _, record = fit_budget(plan, fp, dict(MEASURED, other_cores=others, spare_cores=spare))
        assert ("other jobs kept" in describe_budget(record)) is busy
    _, record = fit_budget(plan, fp, MEASURED)  # a GPU probe does not count the CPUs
    assert "other jobs" not in describe_budget(record)


def test_a_2d_meta_model_is_reserved_one_pass_over_its_sections():
    """A thick stack gets a 2D meta-model: its NN-fit rounds and test prediction cost one
    slice-by-slice pass over the volume (no sliding 3D windows, no mirroring)."""
    fp = _fp((128, 128, 24), (1.0, 1.0, 10.0), cases=3)
    plan = make_plan(fp)
    assert plan.meta.plane == "xy" and plan.meta.init == "2d"
    assert plan.meta.train.patch == plan.train2d.patch and len(plan.inference.mirror_axes) == 3
    voxels = 128 * 128 * 24
    reserve = inference_seconds(plan, fp, MEASURED)
    meta3d = dataclasses.replace(plan.meta, plane="", init="scratch")
    three = inference_seconds(dataclasses.replace(plan, meta=meta3d), fp, MEASURED)
    assert reserve["nnfit"] == pytest.approx(5 * 3 * voxels * MEASURED["meta_voxel"])
    assert reserve["nnfit"] < three["nnfit"] and reserve["test"] < three["test"]


def test_minutes_option_probes_and_plans_iterations(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, shape=(16, 16, 16))
    out = tmp_path / "pl"
    args = ["pseudolabel", str(data), "--out", str(out), "--preset", "auto", "--quiet"]
    args += ["--minutes", "0.4"]
    args += ["--set=train2d.iterations=3", "--set=train3d.iterations=3"]
    args += ["--set=train3d.channels_last=true"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "budget 0.4 min: probe" in err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["preset"]["budget_minutes"] == 0.4
    assert plan["preset"]["train3d"]["iterations"] == 3  # set explicitly: kept
    assert set(plan["budget"]["iterations"]) == {
        "meta.train.iterations",
        "meta.stage1_iterations",
    }
    assert all(plan["budget"]["probe"][f"{k}_step"] > 0 for k in ("2d", "3d", "meta"))
    assert plan["budget"]["probe"]["other_cores"] >= 0  # on Linux
    # the memory order: timed and chosen where not set (2D, meta), kept where set (3D)
    orders = plan["budget"]["channels_last"]
    assert set(orders) == {ORDER_FIELDS["2d"], ORDER_FIELDS["meta"]}
    assert orders[ORDER_FIELDS["2d"]] == plan["preset"]["train2d"]["channels_last"]
    assert orders[ORDER_FIELDS["meta"]] == plan["preset"]["meta"]["train"]["channels_last"]
    assert plan["preset"]["train3d"]["channels_last"] is True
    assert "3d_order_gain" not in plan["budget"]["probe"]
    assert describe(preset_from_dict(plan["preset"]))[0].startswith("3D: DynUNet")
    with pytest.raises(SystemExit) as exc:  # argparse: usage error
        main(
            ["train", str(data), "--out", str(tmp_path / "x"), "--preset", "auto", "--minutes", "0"]
        )
    assert exc.value.code == 2


def test_settings_that_do_not_fit_the_plan_are_refused_in_one_line(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, shape=(24, 24, 16))
    out = tmp_path / "m"
    few = [f"--set={k}={v}" for k, v in FEW_STEPS.items()]  # should a check fail to refuse
    bad_levels = ["--set", "model3d.filters=8,16"]
    bad_patch = ["--set", "train3d.patch=18x18x18"]  # the plan's stride is 4 along each axis
    for bad, words in ((bad_levels, "model3d.strides needs 3 numbers"), (bad_patch, "multiple")):
        assert (
            main(["train", str(data), "--out", str(out), "--preset", "auto", "--quiet", *few, *bad])
            == 2
        )
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_full_supervision_budget_goes_to_the_3d_model_alone():
    plan = dataclasses.replace(
        make_plan(_fp((36, 50, 35), (1.0, 1.0, 1.0), cases=10)), budget_minutes=10.0
    )
    measured = dict(MEASURED)
    fp = {**_fp((36, 50, 35), (1, 1, 1), cases=10), "test_cases": 5}
    reserve = inference_seconds(plan, fp, measured, ("3d",))
    assert set(reserve) == {"test", "io"}  # no pseudo-labels, no NN-fit
    fitted, record = fit_budget(plan, fp, measured, models=("3d",))
    spare = 600 - sum(reserve.values()) - 20
    assert fitted.train3d.iterations == int(spare / 0.5)
    both, _ = fit_budget(plan, fp, measured)
    assert fitted.train3d.iterations > 2 * both.train3d.iterations


def test_the_probe_takes_the_device_as_the_cli_passes_it(tmp_path):
    """`experiment` hands the planner the CLI's --device unresolved ('auto' by default)."""
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, shape=(16, 16, 16))
    measured = probe(plan_preset(data, budget=False), 2, device="auto", steps=2, orders=("3d",))
    assert all(measured[f"{k}_step"] > 0 for k in ("2d", "3d", "meta"))
    # the 3D step timed in both memory orders (on the CPU): the faster is kept
    assert measured["3d_channels_last"] in (0.0, 1.0) and measured["3d_order_gain"] >= 1.0
    assert "2d_channels_last" not in measured and "meta_order_gain" not in measured


def test_the_probe_picks_each_models_faster_memory_order_unless_set():
    fp = _fp((36, 50, 35), (1.0, 1.0, 1.0), cases=10)
    plan = make_plan(fp)
    assert not plan.train3d.channels_last  # contiguous where nothing was timed
    timed = dict(
        MEASURED,
        **{"3d_channels_last": 1.0, "3d_order_gain": 1.2},
        **{"2d_channels_last": 0.0, "2d_order_gain": 1.1},
    )
    fitted, record = fit_budget(plan, fp, timed)
    assert fitted.train3d.channels_last and not fitted.train2d.channels_last
    assert fitted.meta.train.channels_last == plan.meta.train.channels_last  # not timed
    assert record["channels_last"] == {
        ORDER_FIELDS["2d"]: False,
        ORDER_FIELDS["3d"]: True,
    }
    line = describe_budget(record)
    assert "memory order 2d contiguous (1.10x), 3d channels-last (1.20x)" in line
    kept, record = fit_budget(plan, fp, timed, keep=[ORDER_FIELDS["3d"]])
    assert not kept.train3d.channels_last and ORDER_FIELDS["3d"] not in record["channels_last"]
    _, record = fit_budget(plan, fp, MEASURED)
    assert "memory order" not in describe_budget(record)


def test_experiment_plans_the_full_supervision_budget_for_the_3d_model_alone(tmp_path, monkeypatch):
    import sparseseg.planning as planning

    monkeypatch.setattr(planning, "probe", lambda *a, **k: dict(MEASURED, seconds=0.0))
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, test_cases=1, shape=(16,) * 3)
    out = tmp_path / "x"
    args = ["experiment", str(data), "--out", str(out), "--budgets", "", "--seeds", "0"]
    assert main([*args, "--preset", "auto", "--minutes", "0.5", "--quiet"]) == 0
    plan = json.loads((out / "runs" / "full-seed0" / "plan.json").read_text())
    assert plan["request"]["models"] == ["3d"]
    assert set(plan["budget"]["reserve_seconds"]) == {"test", "io"}  # no PLs, no NN-fit
    everything = plan_preset(data, {"budget_minutes": 0.5})
    assert plan["preset"]["train3d"]["iterations"] > everything.train3d.iterations


def _spread_fp(shapes, spacings):
    """A fingerprint of cases with their own shapes and spacings (as fingerprint_arrays)."""
    spacing = np.array(spacings, float)
    fp = _fp(np.median(np.array(shapes), 0).round().astype(int), np.median(spacing, 0))
    return {
        **fp,
        "cases": len(shapes),
        "shapes": [list(s) for s in shapes],
        "spacings": spacing.tolist(),
        "spacing_spread": [spacing.min(0).tolist(), spacing.max(0).tolist()],
    }


def test_plan_resamples_to_the_median_spacing_only_where_cases_differ():
    from sparseseg.planning.plan import at_spacing, plan_target_spacing

    # one case at 2 mm among 1 mm cases: the median, 1 mm; its 16^3 voxels become 32^3
    mixed = _spread_fp([(24,) * 3, (60,) * 3, (16,) * 3], [(1, 1, 1), (1, 1, 1), (2, 2, 2)])
    assert plan_target_spacing(mixed) == (1.0, 1.0, 1.0)
    assert at_spacing(mixed, (1.0, 1.0, 1.0))["median_shape"] == [32, 32, 32]
    plan, kept = make_plan(mixed), make_plan(mixed, target_spacing=None)
    assert plan.target_spacing == (1.0, 1.0, 1.0) and kept.target_spacing is None
    # patch: the median shape on each grid x 1.25, rounded up to the total stride (8)
    assert plan.train3d.patch == (40, 40, 40) and kept.train3d.patch == (32, 32, 32)
    assert describe(plan, mixed)[0].endswith("resample to 1x1x1 mm (median 32x32x32 voxels)")
    assert describe(kept, mixed)[0].endswith("no resampling")
    # cases that share a spacing keep their grids: MSD Hippocampus (all 1 mm), thick sections
    # that agree (their thickness is kept), and spacings within 10% of the median
    assert plan_target_spacing(_fp((35, 50, 36), (1.0, 1.0, 1.0))) is None
    assert make_plan(_fp((128, 128, 24), (1.0, 1.0, 10.0))).target_spacing is None
    close = _spread_fp([(20,) * 3] * 3, [(1, 1, 2), (1.05, 1, 2), (0.95, 1, 2.1)])
    assert plan_target_spacing(close) is None
    thick = _spread_fp([(64, 64, 8)] * 3, [(1, 1, 10), (1, 1, 10), (1, 1, 5)])
    assert plan_target_spacing(thick) == (1.0, 1.0, 10.0)


def _two_spacings(root: Path) -> Path:
    """Three heart phantom training cases, two at 1 x 1 x 2 mm and one at 1 x 1 x 1 mm."""
    for i, (spacing, shape) in enumerate(
        [((1, 1, 2), (24, 24, 12))] * 2 + [((1, 1, 1), (24,) * 3)]
    ):
        image, label = make_case("heart", case_rng(0, "heart", i), shape)
        affine = affine_from_spacing(spacing)
        write_case(root, f"h{i}", Volume(image.array, affine), Volume(label.array, affine))
    write_dataset_json(root, HEART_LABELS, num_training=3)
    return root


def test_target_spacing_is_planned_overridden_and_recorded(tmp_path):
    data = _two_spacings(tmp_path / "d")
    runs = {}
    for name, extra in (("planned", {}), ("none", {"target_spacing": "none"})):
        extra_set = {**FEW_STEPS, **extra}
        runs[name] = {"out": tmp_path / name, "lines": []}
        runs[name]["out"].mkdir()
        runs[name]["preset"] = plan_preset(
            data, extra_set, model_dir=runs[name]["out"], log=runs[name]["lines"].append
        )
    planned, none = runs["planned"], runs["none"]
    assert planned["preset"].target_spacing == (1.0, 1.0, 2.0)
    assert "resample to 1x1x2 mm (median 24x24x12 voxels)" in planned["lines"][0]
    notes = json.loads((planned["out"] / "plan.json").read_text())["notes"]
    assert notes["target_spacing"] == [1.0, 1.0, 2.0] and notes["spacing_differs_across_cases"]
    assert notes["resampling"].startswith("to 1x1x2 mm: 1 of 3 training cases resampled")
    assert none["preset"].target_spacing is None and none["lines"][0].endswith("no resampling")
    stored = json.loads((none["out"] / "plan.json").read_text())
    assert stored["notes"]["resampling"].startswith("none")
    assert stored["notes"]["planned_target_spacing"] == [1.0, 1.0, 2.0]
    # another target: patch and pooling are planned on its grid (z at 1 mm: 24 voxels)
    iso = plan_preset(data, {**FEW_STEPS, "target_spacing": "1,1,1"})
    assert iso.target_spacing == (1.0, 1.0, 1.0)
    assert iso.train3d.patch[2] > planned["preset"].train3d.patch[2]
    with pytest.raises(InputError, match="target_spacing must be three"):
        plan_preset(data, {**FEW_STEPS, "target_spacing": "1,2"})


def test_auto_is_the_default_preset_of_the_cli_and_the_api(tmp_path, capsys):
    import inspect

    from sparseseg import api
    from sparseseg.cli import build_parser
    from sparseseg.demo import DEMO_MINUTES, DEMO_PRESET, run_demo

    parser = build_parser()
    for command in ("train", "pseudolabel", "experiment"):
        args = parser.parse_args([command, "data", "--out", "o", "--minutes", "5"])
        assert args.preset == "auto" and args.overrides == ["budget_minutes=5.0"]
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "default auto" in " ".join(capsys.readouterr().out.split())
    demo = parser.parse_args(["demo"])
    # the demo runs the fast hand-sized preset; auto by name, with a budget per training
    assert demo.preset == DEMO_PRESET == "cpu" and demo.minutes == DEMO_MINUTES > 0
    assert parser.parse_args(["demo", "--preset", "auto"]).preset == "auto"
    assert inspect.signature(api.train).parameters["preset"].default == "auto"
    assert inspect.signature(run_demo).parameters["preset"].default == DEMO_PRESET
    assert main(["demo", "--out", str(tmp_path / "d"), "--minutes", "0"]) == 2
    assert not (tmp_path / "d").exists()

    # train without --preset plans (every iteration field set: no probe, a few steps)
    data = write_phantom_dataset(tmp_path / "h", "heart", 2, seed=0, shape=(16,) * 3)
    out = tmp_path / "m"
    few = [f"--set={k}={v}" for k, v in FEW_STEPS.items()]
    assert main(["train", str(data), "--out", str(out), "--minutes", "0.2", "--quiet", *few]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["preset"]["name"] == "auto" and plan["preset"]["budget_minutes"] == 0.2
    assert plan["budget"] is None and plan["preset"]["train3d"]["iterations"] == 3
    assert json.loads((out / "bundle.json").read_text())["parts"]["3d"]["arch"] == "dynunet"


def test_a_meta_model_started_from_the_2d_model_starts_nn_fit_at_once():
    fp = _fp((128, 128, 24), (1.0, 1.0, 10.0), cases=3)
    plan = dataclasses.replace(make_plan(fp), budget_minutes=10.0)
    fitted, _ = fit_budget(plan, fp, MEASURED)
    assert fitted.meta.init == "2d" and fitted.meta.stage1_iterations == 0
    assert fitted.meta.train.iterations > 20
    scratch = dataclasses.replace(plan, meta=dataclasses.replace(plan.meta, init="scratch"))
    fitted, _ = fit_budget(scratch, fp, MEASURED)
    assert fitted.meta.stage1_iterations == round(fitted.meta.train.iterations * 2 / 3)


def test_plan_lines_name_the_2d_models_neighbouring_slices():
    from sparseseg.config import apply_overrides

    plan = make_plan(_fp((35, 50, 36), (1.0, 1.0, 1.0)))
    (line,) = [x for x in describe(plan) if x.startswith("2D: ")]
    assert "neighbouring" not in line
    (line,) = [x for x in describe(apply_overrides(plan, {"model2d.context": 2})) if "2D: " in x]
    assert ", 2 neighbouring slices each side as input;" in line
