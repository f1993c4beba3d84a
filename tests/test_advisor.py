"""The budget advisor: coverage curves, the budget table, the recommendation rule, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparseseg.cli import main
from sparseseg.data.phantom import write_phantom_dataset
from sparseseg.selection.advisor import (
    advise_volumes,
    plane_curve,
    prefix_coverage,
    recommend,
)
from sparseseg.selection.facility import cosine_similarity, coverage, lazy_greedy
from sparseseg.selection.features import extract_features


def _features(seed: int, n: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).cumsum(axis=0)


@pytest.mark.parametrize("seed", range(3))
def test_curve_is_monotone_and_reaches_one(seed):
    feats = _features(seed)
    curve = plane_curve(feats)
    sim = cosine_similarity(feats)
    assert curve.coverage[0] == 0 and curve.coverage[-1] == 1.0
    assert np.all(np.diff(curve.coverage) >= 0)
    # The curve is the greedy's F(S_K) / F(all).
    order = lazy_greedy(sim, len(sim)).order
    assert np.array_equal(curve.order, order)
    for k in (1, 5, 12):
        assert curve.coverage[k] == pytest.approx(coverage(sim, order[:k]) / len(sim))
    assert np.allclose(
        prefix_coverage(sim, order[:3]), [0, *(coverage(sim, order[:k]) for k in (1, 2, 3))]
    )


def test_round_curve_starts_from_annotated_and_drains_uncertainty():
    feats = _features(4)
    u = np.linspace(1, 0, 25)
    curve = plane_curve(feats, [0, 12], u)
    sim = cosine_similarity(feats)
    assert curve.coverage[0] == pytest.approx(coverage(sim, [0, 12]) / 25)
    assert curve.coverage[-1] == 1.0 and np.all(np.diff(curve.coverage) >= 0)
    assert curve.order.size == 23 and not {0, 12} & set(curve.order.tolist())
    assert curve.remaining[0] == 1.0 and curve.remaining[-1] == 0.0
    assert np.all(np.diff(curve.remaining) <= 1e-12)


def test_recommended_budget_follows_the_rule():
    rng = np.random.default_rng(0)
    vols = [rng.normal(size=(20, 18, 30)).cumsum(axis=2).astype(np.float32) for _ in range(2)]
    fs = extract_features(vols, ("xy", "xz", "yz"), "intensity")
    shapes = [v.shape for v in vols]
    for target in (0.9, 0.97, 0.995):
        advice = advise_volumes(fs.features, shapes, ("xy", "xz", "yz"), target)
        rows = advice["budgets"]
        cov = [r["coverage"] for r in rows]
        assert rows[0]["budget"] == "s1" and cov[0] == pytest.approx(1.0)
        assert all(a >= b - 1e-12 for a, b in zip(cov, cov[1:], strict=False))  # k grows
        best = advice["recommended_row"]
        # The sparsest budget reaching the target: it reaches it, every sparser one does not.
        assert best["coverage"] >= target
        assert all(r["coverage"] < target for r in rows if r["k"] > best["k"])
        assert advice["recommended"] == best["budget"] == recommend(rows, target)["budget"]
        for p, k in advice["recommended_slices"].items():
            by = advice["by_slices"]
            assert by[k][f"coverage_{p}"] >= target and by[k - 1][f"coverage_{p}"] < target
        # annotated fraction: slices times slice area over voxels, all planes
        assert rows[0]["annotated_fraction"] == pytest.approx(3.0)


def test_advise_cli_writes_table_and_plot(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "ph", "heart", 2, seed=1, shape=(20, 24, 12))
    out = tmp_path / "adv"
    assert main(["advise", str(data), "--out", str(out), "--extractor", "intensity"]) == 0
    assert "recommended s" in capsys.readouterr().out
    advice = json.loads((out / "advice.json").read_text())
    assert advice["recommended"] and advice["round"] is False
    assert "| budget |" in (out / "advice.md").read_text()
    header = (out / "advice.csv").read_text().splitlines()[0]
    assert header.startswith("budget,k,slices,coverage_xy")
    assert (out / "advice.png").stat().st_size > 1000
    assert main(["advise", str(data), "--out", str(out), "--extractor", "intensity"]) == 2
    assert main(["advise", str(data), "--out", str(tmp_path / "x"), "--target", "0"]) == 2
