import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from sparseseg.config import TrainConfig, apply_overrides, get_preset, preset_from_dict
from sparseseg.data.planes import plane_transforms
from sparseseg.models import UNet2D
from sparseseg.runtime import zscore
from sparseseg.training.augment import apply_transform, crop_shape_for
from sparseseg.training.loop import fit, load_checkpoint, supervised_loss
from sparseseg.training.sampling import (
    PatchSampler3D,
    SliceSampler2D,
    crop_padded,
    crop_start,
)
from sparseseg.training.schedules import lr_at, poly_lr, step_lr

IGNORE = 2


def _volume(seed=0, shape=(20, 18, 16)):
    """Image and a label that is a function of it (label = image > 0), to check alignment."""
    rng = np.random.default_rng(seed)
    image = zscore(rng.normal(size=shape))
    return image, (image > 0).astype(np.int16)


def _sparse(label, planes_every=5):
    out = np.full(label.shape, IGNORE, np.int16)
    out[::planes_every] = label[::planes_every]
    out[:, :, 2] = label[:, :, 2]
    return out


# Schedules and config -------------------------------------------------------------------------
def test_schedules():
    assert step_lr(9, 5e-4, 10) == 5e-4 and step_lr(10, 5e-4, 10) == pytest.approx(5e-5)
    assert poly_lr(0, 1.0, 100) == 1.0 and poly_lr(100, 1.0, 100) == 0.0
    assert poly_lr(50, 1.0, 100, 0.9) == pytest.approx(0.5**0.9)
    cfg = TrainConfig(iterations=100, schedule="step", step_at=10)
    assert lr_at(10, cfg) == pytest.approx(5e-5)


def test_presets_round_trip_and_overrides():
    preset = get_preset("cpu", ["train3d.iterations=7", "train3d.patch=16x24x32"])
    assert preset.train3d.iterations == 7 and preset.train3d.patch == (16, 24, 32)
    assert preset_from_dict(preset.to_dict()) == preset
    paper = get_preset("paper")
    assert paper.train2d.schedule == "step" and paper.train2d.step_at == 10000
    assert paper.train3d.schedule == "poly" and paper.train3d.lr == 5e-4
    assert paper.train3d.eps == 1e-10 and paper.train3d.betas == (0.9, 0.999)
    assert apply_overrides(preset, {"meta.switch_threshold": 0.1}).meta.switch_threshold == 0.1
    assert get_preset("cpu", ["planes=xy"]).planes == ("xy",)
    assert get_preset("cpu", {"planes": "yz, xy"}).planes == ("xy", "yz")
    bads = (
        ["nope.x=1"],
        ["train3d.nope=1"],
        ["train3d.iterations=abc"],
        ["noequals"],
        ["planes=x"],
    )
    for bad in bads:
        with pytest.raises(ValueError):
            get_preset("cpu", bad)


# Sampling and augmentation --------------------------------------------------------------------
def test_crop_padded_and_transforms():
    a = np.arange(24).reshape(2, 3, 4)
    crop = crop_padded(a, (-1, 1, 2), (3, 3, 3), -7)
    assert crop.shape == (3, 3, 3) and crop[0].max() == -7
    np.testing.assert_array_equal(crop[1:, :2, :2], a[:, 1:3, 2:4])
    assert crop_shape_for((4, 6, 8), 1) == (6, 4, 8)
    rotated = apply_transform(np.zeros((2, 6, 4, 8)), 3, 1, (2,))
    assert rotated.shape == (2, 4, 6, 8)


def test_patch_sampler_3d_keeps_image_and_label_aligned_and_is_deterministic():
    image, label = _volume()
    sparse = _sparse(label)
    sampler = PatchSampler3D(
        [{"image": image, "label": sparse}],
        (8, 12, 16),
        6,
        ignore_index=IGNORE,
        annotated_fraction=1.0,
        seed=3,
    )
    batch = sampler(5)
    assert batch["image"].shape == (6, 1, 8, 12, 16) and batch["label"].shape == (6, 8, 12, 16)
    assert batch["label"].dtype == torch.int64
    lab, img = batch["label"], batch["image"][:, 0]
    known = lab != IGNORE
    assert torch.all(known.flatten(1).any(1))  # every crop holds an annotated voxel
    assert torch.equal(lab[known], (img[known] > 0).long())  # flips/rotations keep alignment
    assert all(torch.equal(batch[k], sampler(5)[k]) for k in batch)
    assert not torch.equal(batch["image"], sampler(6)["image"])


def test_patch_sampler_pads_small_volumes_with_ignore():
    image, label = _volume(shape=(6, 5, 4))
    sampler = PatchSampler3D([{"image": image, "label": label}], (8, 8, 8), 2, ignore_index=IGNORE)
    batch = sampler(0)
    assert (batch["label"] == IGNORE).sum(dim=(1, 2, 3)).tolist() == [8**3 - 120] * 2
    assert torch.all(batch["image"][batch["label"][:, None] == IGNORE] == 0)


def test_patch_sampler_places_a_small_volume_uniformly_in_the_canvas():
    """A volume smaller than the patch lands at every offset equally often, also when crops are
    centred on annotated voxels (clamping a centred draw piled 3 in 4 offsets on the walls)."""
    image, label = _volume(shape=(6, 5, 4))
    sampler = PatchSampler3D(
        [{"image": image, "label": label}],
        (14, 8, 8),
        200,
        ignore_index=IGNORE,
        annotated_fraction=1.0,
        flip_axes=(),
        rot90_xy=False,
    )
    known = torch.cat([sampler(s)["label"] != IGNORE for s in range(10)])  # (2000, 14, 8, 8)
    first = known.flatten(2).any(2).float().argmax(1)  # the volume's first x in the canvas
    counts = torch.bincount(first, minlength=9).tolist()  # offsets 0..8 are possible
    assert len(counts) == 9 and min(counts) > 2000 / 9 * 0.7 and max(counts) < 2000 / 9 * 1.3


def test_patch_sampler_centred_crops_hold_the_centre_and_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(500):
        size = [int(v) for v in rng.integers(3, 30, 3)]
        shape = [int(v) for v in rng.integers(3, 30, 3)]
        centre = [int(rng.integers(n)) for n in size]
        start = crop_start(rng, centre, size, shape)
        for s, c, n, p in zip(start, centre, size, shape, strict=True):
            assert s <= c < s + p  # the centre is in the crop
            assert (0 <= s <= n - p) if n >= p else (n - p <= s <= 0)  # no needless padding


def test_zoom_augmentation_scales_the_crop_and_keeps_labels_and_padding():
    """Zoomed in 2x, a crop covers half the extent of the x ramp; zoomed out, the label keeps
    only its own values and the ignore padding; image and label stay aligned either way."""
    x = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None], (32, 32, 32))
    label = (x >= 16).astype(np.int16)
    case = {"image": np.ascontiguousarray(x), "label": label}
    common = {"ignore_index": IGNORE, "flip_axes": (), "rot90_xy": False, "augment_prob": 1.0}
    plain = PatchSampler3D([case], (16, 16, 16), 4, **common)(0)["image"]
    zoomed = PatchSampler3D([case], (16, 16, 16), 4, scale_range=(2.0, 2.0), **common)(0)
    span = lambda img: img.amax(dim=(1, 2, 3, 4)) - img.amin(dim=(1, 2, 3, 4))  # noqa: E731
    assert torch.all(span(plain) == 15) and torch.all(span(zoomed["image"]) < 8.5)
    lab, img = zoomed["label"], zoomed["image"][:, 0]
    assert torch.equal(lab, (img >= 15.5).long())
    out = PatchSampler3D([case], (16, 16, 16), 4, scale_range=(0.25, 0.25), **common)(0)
    assert set(out["label"].unique().tolist()) <= {0, 1, IGNORE}
    assert (out["label"] == IGNORE).any()  # a 64-voxel crop of a 32-voxel volume: padding
    flat = SliceSampler2D(
        [case],
        (16, 16),
        4,
        ignore_index=IGNORE,
        planes=("yz",),
        scale_range=(2.0, 2.0),
        augment_prob=1.0,
        flip_axes=(),
        rot90=False,
    )(0)
    assert flat["image"].shape == (4, 1, 16, 16)


def test_intensity_augmentation_changes_the_image_only_and_is_deterministic():
    image, label = _volume()
    case = {"image": image, "label": label}
    common = {"ignore_index": IGNORE, "seed": 4, "augment_prob": 1.0}
    plain = PatchSampler3D([case], (8, 8, 8), 1, **common)(2)
    sampler = PatchSampler3D([case], (8, 8, 8), 1, intensity_scale=0.3, noise_std=0.2, **common)
    batch = sampler(2)  # one sample: its crop is drawn before the intensity draws
    assert torch.equal(batch["label"], plain["label"])
    assert not torch.allclose(batch["image"], plain["image"])
    assert (batch["image"] - plain["image"]).abs().max() < 3.0
    assert all(torch.equal(batch[k], sampler(2)[k]) for k in batch)
    off = PatchSampler3D([case], (8, 8, 8), 1, intensity_scale=0.3, **{**common, "augment_prob": 0})
    assert torch.equal(off(2)["image"], plain["image"])


def test_augmentation_settings_are_checked():
    for bad in ("train3d.scale_range=1.2", "train3d.scale_range=1.4,0.7", "train2d.noise_std=-1"):
        with pytest.raises(ValueError, match="scale_range|noise_std"):
            get_preset("auto", [bad])
    cfg = get_preset("auto", ["train3d.scale_range=0.7,1.4", "train3d.intensity_scale=0.25"])
    assert cfg.train3d.scale_range == (0.7, 1.4) and cfg.train3d.intensity_scale == 0.25


def test_slice_sampler_2d_draws_only_annotated_slices():
    image, label = _volume(1)
    sparse = np.full(label.shape, IGNORE, np.int16)
    sparse[:, :, 7] = label[:, :, 7]  # one annotated xy slice; xz/yz slices hold a line of it
    sampler = SliceSampler2D(
        [{"image": image, "label": sparse}],
        (16, 16),
        8,
        ignore_index=IGNORE,
        planes=("xy",),
        seed=0,
    )
    batch = sampler(0)
    assert batch["image"].shape == (8, 1, 16, 16) and batch["label"].shape == (8, 16, 16)
    slice7 = image[:, :, 7]
    for sample in batch["image"][:, 0].numpy():
        inner = sample[sample != 0]
        assert np.isin(inner, slice7).all()
    known = batch["label"] != IGNORE
    assert torch.equal(batch["label"][known], (batch["image"][:, 0][known] > 0).long())
    dense = SliceSampler2D([{"image": image, "label": label}], (8, 8), 4, ignore_index=IGNORE)
    assert set(dense.weights[0]) == {"xy", "xz", "yz"}


def test_slices_flip_and_turn_only_along_the_volume_axes_that_flip():
    assert plane_transforms("xy", (0, 1, 2), True) == ((0, 1), True)
    assert plane_transforms("xy", (0,), True) == ((0,), False)
    assert plane_transforms("xz", (0, 2), True) == ((0, 1), True)
    assert plane_transforms("xz", (0, 2), False) == ((0, 1), False)
    assert plane_transforms("yz", (0,), True) == ((), False)
    assert plane_transforms("yz", (2,), True) == ((1,), False)
    # an image increasing along y: xy slices keep it increasing when only x flips
    image = np.broadcast_to(np.arange(1, 17, dtype=np.float32)[None, :, None], (16, 16, 8))
    case = {"image": image.copy(), "label": np.zeros((16, 16, 8), np.int16)}

    def rows_increase(flip_axes):
        sampler = SliceSampler2D(
            [case], (16, 16), 8, ignore_index=IGNORE, planes=("xy",), flip_axes=flip_axes
        )
        rows = np.concatenate([sampler(step)["image"][:, 0].numpy() for step in range(4)])
        return (np.diff(rows, axis=-1) > 0).all(axis=(-2, -1))

    assert rows_increase((0, 2)).all()
    assert not rows_increase((0, 1, 2)).all()


def test_slice_sampler_with_context_stacks_the_neighbouring_slices():
    """With context 1, channel 1 is the sampled slice and channels 0 and 2 its neighbours along
    the plane's normal (z for xy): a volume whose value is its z index shows n-1, n, n+1."""
    z = np.broadcast_to(np.arange(10, dtype=np.float32), (16, 16, 10)).copy()
    label = np.full(z.shape, IGNORE, np.int16)
    label[:, :, 0] = label[:, :, 5] = 1  # annotated slices at both an end and the middle
    sampler = SliceSampler2D(
        [{"image": z, "label": label}],
        (16, 16),
        16,
        ignore_index=IGNORE,
        planes=("xy",),
        context=1,
        annotated_fraction=1.0,
    )
    image = sampler(0)["image"]  # (16, 3, 16, 16)
    assert image.shape == (16, 3, 16, 16)
    middle = image[:, 1, 0, 0]
    assert set(middle.tolist()) == {0.0, 5.0}
    assert torch.equal(image[:, 0, 0, 0], torch.clamp(middle - 1, min=0))  # end slice repeated
    assert torch.equal(image[:, 2, 0, 0], middle + 1)


# Training loop --------------------------------------------------------------------------------
def _tiny_setup(iterations=8, **cfg_kw):
    image, label = _volume(2, (24, 24, 12))
    sampler = SliceSampler2D(
        [{"image": image, "label": _sparse(label, 3)}], (16, 16), 4, ignore_index=IGNORE, seed=1
    )
    cfg = TrainConfig(
        iterations=iterations,
        batch_size=4,
        patch=(16, 16),
        schedule="step",
        step_at=6,
        checkpoint_every=3,
        log_every=2,
        lr=3e-3,
        **cfg_kw,
    )

    def make_model():
        torch.manual_seed(0)
        return UNet2D(1, 2, base_channels=4, depth=2, dropout=0.2)

    return sampler, cfg, make_model


def test_fit_decreases_the_loss(tmp_path):
    sampler, cfg, make_model = _tiny_setup(40)
    cfg = replace(cfg, log_every=10, schedule="constant")
    history = fit(
        make_model(), sampler, supervised_loss(IGNORE), cfg, tmp_path / "c.pt", progress=False
    )
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only=True
    assert state["done"] and state["step"] == 40 and len(state["history"]) == 4


class _Crash(Exception):
    pass


def test_resume_after_a_crash_reaches_the_same_state_as_an_unbroken_run(tmp_path):
    sampler, cfg, make_model = _tiny_setup(8)
    loss = supervised_loss(IGNORE)
    reference = make_model()
    ref_hist = fit(reference, sampler, loss, cfg, tmp_path / "ref.pt", progress=False)

    def crashing(model, batch, step):
        if step == 5:  # after the checkpoint at step 3: steps 3-4 are lost
            raise _Crash
        return loss(model, batch, step)

    with pytest.raises(_Crash):
        fit(make_model(), sampler, crashing, cfg, tmp_path / "run.pt", progress=False)
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 3
    resumed = make_model()
    hist = fit(resumed, sampler, loss, cfg, tmp_path / "run.pt", resume=True, progress=False)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [h["loss"] for h in hist] == [h["loss"] for h in ref_hist]
    # A finished checkpoint only reloads the weights.
    again = make_model()
    fit(again, sampler, loss, cfg, tmp_path / "run.pt", resume=True, progress=False)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in reference.state_dict().items())


def test_stateful_extra_state_is_checkpointed(tmp_path):
    sampler, cfg, make_model = _tiny_setup(8)

    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    counter = Counter()
    loss = supervised_loss(IGNORE)

    def counting(model, batch, step):
        counter.n += 1
        return loss(model, batch, step)

    hist = fit(
        make_model(),
        sampler,
        counting,
        cfg,
        tmp_path / "c.pt",
        progress=False,
        extra_state={"counter": counter},
    )
    assert hist[-1]["step"] == 8
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["done"] and state["extra"]["counter"] == {"n": 8}
    again = Counter()  # a finished run resumed: the extra state comes back, nothing trains
    fit(
        make_model(),
        sampler,
        counting,
        cfg,
        tmp_path / "c.pt",
        resume=True,
        progress=False,
        extra_state={"counter": again},
    )
    assert again.n == 8 and counter.n == 8


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_training import IGNORE, _tiny_setup
    from sparseseg.training.loop import fit, supervised_loss
    sampler, cfg, make_model = _tiny_setup(8)
    loss = supervised_loss(IGNORE)
    def slow(model, batch, step):
        if step >= 4:
            time.sleep(30)  # killed here
        return loss(model, batch, step)
    fit(make_model(), sampler, slow, cfg, {ckpt!r}, progress=False)
    """
)


def test_resume_after_sigkill(tmp_path):
    ckpt = tmp_path / "run.pt"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), ckpt=str(ckpt))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint written"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt)["step"] == 3 and not load_checkpoint(ckpt)["done"]
    sampler, cfg, make_model = _tiny_setup(8)
    loss = supervised_loss(IGNORE)
    reference = make_model()
    fit(reference, sampler, loss, cfg, None, progress=False)
    resumed = make_model()
    fit(resumed, sampler, loss, cfg, ckpt, resume=True, progress=False)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
