"""Self-training: NN-fit picks the lowest-loss PL set; the switch-share stopping rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparseseg.selftrain import (
    NNFitState,
    ce_per_set,
    nearest_sets,
    pick_targets,
    random_sets,
    switch_share,
    volume_ce,
)


def one_hot_logits(labels: torch.Tensor, c: int, scale: float = 4.0) -> torch.Tensor:
    """(B, *S) labels -> (B, C, *S) logits confident in those labels."""
    return scale * torch.nn.functional.one_hot(labels, c).movedim(-1, 1).float()


def test_ce_per_set_matches_hand_computed_value():
    # one voxel, two classes, logits (0, log 3): p = (1/4, 3/4)
    logits = torch.tensor([[[0.0], [math.log(3.0)]]])  # (1, 2, 1)
    targets = torch.tensor([[[0], [1]]])  # (1, K=2, 1)
    ce = ce_per_set(logits, targets)
    assert ce.shape == (1, 2)
    assert ce[0, 0].item() == pytest.approx(math.log(4.0), rel=1e-5)
    assert ce[0, 1].item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-5)


@pytest.mark.parametrize("shape", [(7, 5, 3), (40, 37, 29), (64, 32, 16)])
def test_blockwise_volume_ce_is_ce_per_set_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(3, *shape, generator=g), 0).numpy()
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-8, None)))[None]  # as NN-fit passes them
    target = torch.randint(0, 3, shape, generator=g)
    want = ce_per_set(logp, target[None, None])[0]
    for block in (16, 64, 1024, 1 << 20):
        assert torch.equal(volume_ce(logp, target.numpy().astype(np.uint8), block), want)


def test_nn_fit_picks_the_set_closest_to_the_output():
    g = torch.Generator().manual_seed(0)
    b, k, c, shape = 3, 4, 3, (6, 5, 4)
    truth = torch.randint(0, c, (b, *shape), generator=g)
    # Set j disagrees with the output on a fraction that grows with |j - nearest|.
    nearest = torch.tensor([2, 0, 3])
    sets = []
    for j in range(k):
        noisy = truth.clone()
        for i in range(b):
            frac = 0.1 + 0.2 * abs(j - int(nearest[i]))
            flip = torch.rand(shape, generator=g) < frac
            noisy[i][flip] = (truth[i][flip] + 1) % c
        sets.append(noisy)
    targets = torch.stack(sets, 1)  # (B, K, *S)
    logits = one_hot_logits(truth, c)
    choice = nearest_sets(ce_per_set(logits, targets))
    assert choice.tolist() == nearest.tolist()
    picked = pick_targets(targets, choice)
    for i in range(b):
        assert torch.equal(picked[i], targets[i, nearest[i]])


def test_valid_mask_restricts_the_comparison():
    # Set 0 matches the output on the 3 voxels inside the mask and misses the 5 outside; set 1
    # misses the 3 inside and matches the 5 outside: over all voxels set 1 is closer, inside the
    # mask set 0 is.
    out = torch.zeros(1, 8, dtype=torch.long)
    valid = torch.zeros(1, 8, dtype=torch.bool)
    valid[0, :3] = True
    set0 = out.clone()
    set0[0, 3:] = 1
    set1 = 1 - set0
    targets = torch.stack([set0, set1], 1)
    logits = one_hot_logits(out, 2)
    hit, miss = ce_per_set(logits[:, :, :1], torch.tensor([[[0], [1]]]))[0]  # one voxel's CE
    ce = ce_per_set(logits, targets)
    expected = torch.stack([3 * hit + 5 * miss, 5 * hit + 3 * miss]) / 8
    assert torch.allclose(ce[0], expected, atol=1e-6)
    assert nearest_sets(ce).tolist() == [1]
    masked = ce_per_set(logits, targets, valid)
    assert torch.allclose(masked[0], torch.stack([hit, miss]), atol=1e-6)
    assert nearest_sets(masked).tolist() == [0]
    # A tie goes to the lower index: 4 misses each.
    tie = torch.stack(
        [torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]), torch.tensor([[1] * 4 + [0] * 4])], 1
    )
    assert nearest_sets(ce_per_set(logits, tie)).tolist() == [0]
    none = torch.zeros_like(valid)
    assert torch.equal(ce_per_set(logits, targets, none), torch.zeros(1, 2))


def test_random_sets_cover_all_sets_uniformly():
    g = torch.Generator().manual_seed(1)
    draws = random_sets(4000, 4, g)
    counts = torch.bincount(draws, minlength=4)
    assert counts.min() > 900 and counts.max() < 1100


def test_switch_share_and_stopping_rule():
    assert switch_share(None, [0, 1]) == 1.0
    assert switch_share([0, 1, 2, 3], [0, 1, 2, 0]) == 0.25
    state = NNFitState(threshold=0.3)
    assert not state.done
    ce_a = torch.tensor([[0.1, 0.5], [0.5, 0.1], [0.1, 0.2], [0.3, 0.2]])
    state.update(ce_a, iteration=0)
    assert not state.done  # a first round never settles
    ce_b = ce_a.clone()
    ce_b[0] = torch.tensor([0.6, 0.2])  # one of four switches: 0.25 < 0.3
    rec = state.update(ce_b, iteration=10)
    assert rec["switch_share"] == 0.25 and state.done
    again = NNFitState.from_dict(state.to_dict())
    assert again.choices == [1, 1, 0, 1] and again.done
    strict = NNFitState(threshold=0.25)
    strict.update(ce_a, 0)
    strict.update(ce_b, 10)
    assert not strict.done  # the share must fall under the threshold


def _meta_cases(n: int = 2, c: int = 3, shape=(16, 16, 16)) -> list[dict]:
    import numpy as np

    from sparseseg.pseudolabels import mean_one_hot

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(n):
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        pls = [rng.integers(0, c, shape).astype(np.uint8) for _ in range(4)]
        x = np.concatenate([image, mean_one_hot(pls, c)])  # the meta-model's input: image + A(Y)
        cases.append({"image": x, "targets": np.stack(pls)})
    return cases


def test_settled_choices_are_kept_to_the_end_of_the_schedule(tmp_path, monkeypatch):
    """Once NN-fit settles no further round runs, training goes on with the frozen choices to
    the end of meta.train.iterations (the lr to its poly end), and a run killed after settling
    resumes to the same weights."""
    from tiny_preset import TINY

    from sparseseg import selftrain
    from sparseseg.config import get_preset
    from sparseseg.training.loop import load_checkpoint
    from sparseseg.training.schedules import lr_at

    preset = get_preset(
        "cpu",
        {
            **TINY,
            "meta.train.iterations": 12,
            "meta.stage1_iterations": 2,
            "meta.nnfit_round_iterations": 2,
            "meta.switch_threshold": 1.01,  # any second round settles
            "meta.train.log_every": 1,
        },
    )
    cases = _meta_cases()
    ref = selftrain.train_meta(cases, 3, preset, tmp_path / "ref.ckpt", progress=False)
    assert [r["iteration"] for r in ref.nnfit.rounds] == [2, 4]
    assert ref.stop_reason == "settled" and ref.settled_at == 4
    assert ref.steps == 12 and [h["step"] for h in ref.history] == list(range(1, 13))
    assert ref.history[-1]["lr"] == pytest.approx(lr_at(11, preset.meta.train))
    assert ref.history[-1]["lr"] < 0.2 * preset.meta.train.lr

    calls = {"n": 0}
    pick = selftrain.pick_targets

    def crash_at_step_7(targets, choice):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return pick(targets, choice)

    monkeypatch.setattr(selftrain, "pick_targets", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        selftrain.train_meta(cases, 3, preset, tmp_path / "run.ckpt", progress=False)
    monkeypatch.setattr(selftrain, "pick_targets", pick)
    state = load_checkpoint(tmp_path / "run.ckpt")
    assert state["step"] == 6 and len(state["extra"]["nnfit"]["rounds"]) == 2  # settled
    again = selftrain.train_meta(
        cases, 3, preset, tmp_path / "run.ckpt", resume=True, progress=False
    )
    assert again.nnfit.rounds == ref.nnfit.rounds and again.steps == 12
    assert [h["loss"] for h in again.history] == [h["loss"] for h in ref.history]
    for key, value in ref.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_stage1_longer_than_the_schedule_is_refused():
    from sparseseg.config import get_preset

    with pytest.raises(ValueError, match="meta.stage1_iterations"):
        get_preset("cpu", ["meta.train.iterations=10", "meta.stage1_iterations=11"])
    assert get_preset("cpu", ["meta.train.iterations=10", "meta.stage1_iterations=10"])


def test_a_2d_meta_sampler_draws_crops_of_slices_of_its_plane():
    """Plane xy: every sample is a crop of one z-section of image, A(Y) and all K sets alike
    (the image channel encodes z, the sets encode z + k), and draws repeat with the step."""
    from sparseseg.selftrain import MetaSampler

    shape = (12, 10, 6)
    z = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape)
    sets = np.stack([(z + k).astype(np.uint8) for k in range(2)])  # (K, X, Y, Z)
    case = {"image": np.stack([z, z + 100, z + 200]), "targets": sets}  # image + C=2 of A(Y)
    sampler = MetaSampler([case], (8, 8), 5, ignore_index=255, seed=1, plane="xy")
    batch = sampler(3)
    assert batch["image"].shape == (5, 3, 8, 8) and batch["targets"].shape == (5, 2, 8, 8)
    for image, targets in zip(batch["image"], batch["targets"], strict=True):
        inside = targets[0] != 255  # the crop may run past the 10-voxel y extent
        section = image[0][inside].unique()
        assert section.numel() == 1  # one section per sample
        assert torch.equal(image[1][inside], image[0][inside] + 100)
        assert torch.equal(targets[1][inside], targets[0][inside] + 1)
        assert torch.equal(targets[0][inside].float(), image[0][inside])
    again = sampler(3)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_2d_meta_nnfit_loss_is_the_loss_of_its_slice_by_slice_prediction():
    from sparseseg.config import InferenceConfig, MetaConfig, Model2DConfig, Model3DConfig
    from sparseseg.inference import predict_planes_2d
    from sparseseg.models.meta import build_meta
    from sparseseg.selftrain import whole_volume_ce

    torch.manual_seed(0)
    model2d = Model2DConfig(
        arch="dynunet", filters=(4, 8, 16), strides=(1, 1, 2, 2, 2, 2), kernels=(3,) * 6
    )
    cfg = MetaConfig(model=Model3DConfig(arch="dynunet"), plane="xy", fusion="stack")
    model = build_meta(cfg, 3, 1, model2d).eval()
    case = _meta_cases(1, shape=(16, 12, 5))[0]
    inference = InferenceConfig(patch=(8, 8, 8), overlap=0.25, slice_batch_size=4)
    ce = whole_volume_ce(model, case, inference, plane="xy", patch2d=(16, 16))
    probs = predict_planes_2d(model, case["image"], ("xy",), patch=(16, 16), overlap=0.25)["xy"]
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-8, None)))[None]
    expected = ce_per_set(logits, torch.from_numpy(case["targets"].astype(np.int64))[None])[0]
    assert torch.allclose(ce, expected, atol=1e-5)
