"""Quality flags on predictions: a case the models disagree on ranks above one they agree on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparseseg.quality import case_quality, rank_cases, rank_slices
from sparseseg.uncertainty import vote_counts


def _case(disagree: bool):
    """Meta labels with a foreground cube; 4 PL sets that agree, or 2 of 4 that miss the cube."""
    meta = np.zeros((10, 8, 6), np.uint8)
    meta[2:6, 2:6, 1:4] = 1
    other = np.zeros_like(meta) if disagree else meta
    votes = vote_counts([meta, meta, other, other], 2)
    probs = np.stack([1.0 - 0.9 * meta, 0.9 * meta]).astype(np.float32)
    return meta, probs, votes


def test_disagreement_ranks_first_by_hand():
    calm, shaky = case_quality(*_case(False), 4), case_quality(*_case(True), 4)
    assert calm["disagreement"] == 0.0 and shaky["disagreement"] == 0.5
    assert calm["entropy"] == shaky["entropy"] > 0  # same meta-model probabilities
    assert shaky["score"] > calm["score"]
    ranked = rank_cases({"calm": calm, "shaky": shaky})
    assert [r["case"] for r in ranked] == ["shaky", "calm"] and ranked[0]["rank"] == 1
    # The slices through the cube come first, ranked by their uncertain mass.
    top = shaky["slices"][0]
    assert top["plane"] in ("xy", "xz", "yz")
    axis = {"xy": 2, "xz": 1, "yz": 0}[top["plane"]]
    assert top["index"] in range(*[(1, 4), (2, 6), (2, 6)][2 - axis])
    slices = rank_slices({"calm": calm, "shaky": shaky})
    assert slices[0]["case"] == "shaky"
    assert [s["mass"] for s in slices] == sorted((s["mass"] for s in slices), reverse=True)


def test_slabs_give_the_whole_volume_formula():
    """Volumes longer than a slab along X: the slab-wise sums equal the formula on the whole."""
    from sparseseg.data.planes import to_slices
    from sparseseg.uncertainty import normalised_entropy

    rng = np.random.default_rng(0)
    shape = (37, 9, 7)
    sets = [rng.integers(0, 3, shape).astype(np.uint8) for _ in range(4)]
    meta = rng.integers(0, 3, shape).astype(np.uint8)
    probs = rng.dirichlet(np.ones(3), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
    votes = vote_counts(sets, 3)
    q = case_quality(meta, probs, votes, 4, top=1000)
    d = 1 - np.take_along_axis(votes, meta[None].astype(int), 0)[0] / 4
    fg = meta != 0
    union = fg | (votes[0] < 4)
    e = normalised_entropy(probs)
    assert q["disagreement"] == pytest.approx(d[union].mean())
    assert q["entropy"] == pytest.approx(e[fg].mean())
    mass = (d * union + e * fg) / 2
    for s in q["slices"]:
        assert s["mass"] == pytest.approx(to_slices(mass, s["plane"])[s["index"]].sum())
    assert len(q["slices"]) == 37 + 9 + 7


def test_empty_foreground_scores_zero():
    meta = np.zeros((4, 4, 4), np.uint8)
    probs = np.stack([np.ones((4, 4, 4)), np.zeros((4, 4, 4))]).astype(np.float32)
    q = case_quality(meta, probs, vote_counts([meta] * 4, 2), 4)
    assert q["score"] == 0 and q["slices"] == []


class Threshold(torch.nn.Module):
    """A stand-in 2-class model: foreground where the (z-scored) input exceeds ``t``; as a
    meta-model (``meta``) it follows the majority of A(Y)."""

    stride, num_classes = 4, 2

    def __init__(self, t: float = 0.0, meta: bool = False):
        super().__init__()
        self.t, self.meta = t, meta

    def forward(self, x):
        if self.meta:
            return 10.0 * (x[:, 1:] - 0.5)
        fg = 10.0 * (x[:, :1] - self.t)
        return torch.cat([-fg, fg], dim=1)


def test_predict_writes_ranked_quality_flags(tmp_path):
    """End to end through predict_files: base models that agree on a two-valued image and
    disagree on a smooth ramp; the ramp is ranked first."""
    from test_predict import tiny_bundle

    from sparseseg.data.io import write_nifti
    from sparseseg.predict import predict_files

    class StandIn(type(tiny_bundle())):
        def build(self, part):
            return {"2d": Threshold(0.0), "3d": Threshold(0.8), "meta": Threshold(meta=True)}[part]

    bundle = tiny_bundle(2)
    bundle = StandIn(**{k: getattr(bundle, k) for k in bundle.__dataclass_fields__})
    shape = (12, 12, 8)
    ramp = np.broadcast_to(np.linspace(-1, 1, 12)[:, None, None], shape).astype(np.float32)
    step = np.where(ramp > 0, 1.0, -1.0).astype(np.float32)
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "ramp_0000.nii.gz", ramp, np.eye(4))
    write_nifti(tmp_path / "in" / "step_0000.nii.gz", step, np.eye(4))
    out = tmp_path / "pred"
    predict_files(bundle, tmp_path / "in", out, parts="meta", progress=False, device="cpu")
    report = json.loads((out / "quality.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["ramp", "step"]
    ramp_q, step_q = report["cases"]
    assert step_q["disagreement"] == 0.0 and ramp_q["disagreement"] > 0.1
    assert (out / "quality" / "ramp.json").exists()
    lines = (out / "quality_cases.csv").read_text().splitlines()
    assert lines[0].startswith("rank,case,score") and lines[1].split(",")[1] == "ramp"
    slices = (out / "quality_slices.csv").read_text().splitlines()
    assert slices[1].split(",")[1] == "ramp"
    # Only the asked parts are written; no quality without the meta-model or when switched off.
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["ramp.nii.gz", "step.nii.gz"]
    predict_files(bundle, tmp_path / "in", tmp_path / "p3d", parts="3d", progress=False)
    predict_files(bundle, tmp_path / "in", tmp_path / "pq", progress=False, quality=False)
    assert not (tmp_path / "p3d" / "quality.json").exists()
    assert not (tmp_path / "pq" / "quality.json").exists()


def test_cli_predict_no_quality_flag_parses():
    from sparseseg.cli import build_parser

    args = build_parser().parse_args(["predict", "m", "i", "--out", "o", "--no-quality"])
    assert args.no_quality


@pytest.mark.parametrize("bad", [(3, 3, 3), (2, 2, 2)])
def test_case_quality_rejects_mismatched_shapes(bad):
    meta, probs, votes = _case(True)
    with pytest.raises(ValueError):
        case_quality(np.zeros(bad, np.uint8), probs, votes, 4)
