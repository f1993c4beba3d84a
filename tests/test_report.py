import math

import pytest

from sparseseg import report


def _rows():
    rows = []
    for seed in (0, 1):
        for strategy, base in (("ra", 0.8), ("eia", 0.7)):
            for model, bonus in (("3d", 0.0), ("meta", 0.05), ("xy", -0.1)):
                for budget in (10, 20):
                    dice = base + bonus - budget / 1000 + seed / 100
                    for cls in ("myo", "mean"):
                        rows.append(
                            {
                                "dataset": "toy",
                                "strategy": strategy,
                                "budget": budget,
                                "seed": seed,
                                "model": model,
                                "class": cls,
                                "annotated_fraction": 3 / budget,
                                "dice": dice,
                                "adb_mm": 1.0,
                                "hausdorff_mm": 5.0,
                                "overall": dice / 2 - 0.25 - 5 / 30,
                            }
                        )
        rows.append({"model": "full", "class": "mean", "seed": seed, "dice": 0.9, "budget": 1})
        rows.append({"model": "full", "class": "myo", "seed": seed, "dice": 0.9, "budget": 1})
    return rows


def test_csv_round_trip(tmp_path):
    rows = _rows()
    report.write_rows(tmp_path / "r.csv", rows, report.RESULT_FIELDS)
    back = report.read_rows(tmp_path / "r.csv")
    assert len(back) == len(rows)
    assert back[0]["dice"] == pytest.approx(rows[0]["dice"], rel=1e-5)
    assert back[0]["strategy"] == "ra" and back[-1]["rand_f"] is None


def test_summary_table_mean_and_std_over_seeds():
    table = report.summary_table(_rows())
    lines = table.strip().splitlines()
    ra_st_s10 = next(line for line in lines if line.startswith("| RA+ST | s10"))
    # dice = 0.8 + 0.05 - 0.01 + seed/100 over seeds 0, 1 -> mean 0.845, std 0.00707
    assert "0.845 ± 0.007" in ra_st_s10
    assert any(line.startswith("| 3D (full annotation) | full") for line in lines)
    assert lines[2].split("|")[2].strip() == "s20"  # sparsest budget first, full last


def test_budget_plot_writes_png(tmp_path):
    labels = report.plot_budget_curve(_rows(), tmp_path / "fig5.png")
    assert (tmp_path / "fig5.png").read_bytes()[:4] == b"\x89PNG"
    assert "RA+ST" in labels and "Full annotation" in labels
    assert not any("2D" in label for label in labels)  # per-plane models stay in the tables
    labels = report.plot_budget_curve(_rows(), tmp_path / "all.png", models=("meta", "xy"))
    assert any("2D (xy)" in label for label in labels)


def test_paired_difference_matches_hand_computation():
    rows = []
    diffs = [0.1, 0.2, 0.0, 0.3]
    for case, d in enumerate(diffs):
        rows.append({"strategy": "ra", "budget": 10, "seed": 0, "case": case, "dice": 0.5 + d})
        rows.append({"strategy": "eia", "budget": 10, "seed": 0, "case": case, "dice": 0.5})
    out = report.paired_difference(rows, "dice", {"strategy": "ra"}, {"strategy": "eia"})
    assert out["n"] == 4
    assert out["mean"] == pytest.approx(0.15)
    sd = math.sqrt(sum((d - 0.15) ** 2 for d in diffs) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert out["ci_low"] == pytest.approx(0.15 - half, rel=1e-6)
    assert out["a_better"] == 0.75


def test_paired_difference_averages_seeds_within_a_case():
    # Two seeds per case are not independent: the interval is over the 3 case means.
    rows = []
    per_case = {0: (0.1, 0.3), 1: (0.0, 0.0), 2: (0.2, 0.4)}
    for case, seed_diffs in per_case.items():
        for seed, d in enumerate(seed_diffs):
            common = {"budget": 10, "seed": seed, "case": case}
            rows.append({"strategy": "ra", "dice": 0.5 + d, **common})
            rows.append({"strategy": "eia", "dice": 0.5, **common})
    out = report.paired_difference(rows, "dice", {"strategy": "ra"}, {"strategy": "eia"})
    assert (out["n"], out["unit"], out["pairs"]) == (3, "case", 6)
    means = [0.2, 0.0, 0.3]
    sd = math.sqrt(sum((m - 0.5 / 3) ** 2 for m in means) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2)
    assert out["mean"] == pytest.approx(0.5 / 3)
    assert out["ci_high"] == pytest.approx(0.5 / 3 + half, rel=1e-6)
    assert out["a_better"] == pytest.approx(2 / 3)


def test_paired_difference_uses_seeds_when_there_is_one_case():
    rows = []
    for seed, d in enumerate([0.1, 0.2, 0.3]):
        common = {"budget": 5, "seed": seed, "case": "em"}
        rows.append({"strategy": "ra", "rand_f": 0.2 + d, **common})
        rows.append({"strategy": "eia", "rand_f": 0.2, **common})
    out = report.paired_difference(rows, "rand_f", {"strategy": "ra"}, {"strategy": "eia"})
    assert (out["n"], out["unit"]) == (3, "seed")
    assert out["mean"] == pytest.approx(0.2)


def test_tiny_values_keep_significant_digits():
    rows = _rows()
    for r in rows:
        r["adb_mm"] = 3.5e-6 + r["seed"] * 1e-7  # EM distances in mm
    table = report.summary_table(rows)
    assert "3.55e-06 ± 7.07e-08" in table and "0.000 ± 0.000" not in table
