"""The probe figure tells every estimator of the zoo apart (the zoo has more estimators than tab10 colours)."""

from __future__ import annotations

from matplotlib.colors import to_rgba

from krpo_bench.probe.report import figure_png, line_styles

ZOO = [
    "grpo",
    "dr_grpo",
    "rloo",
    "reinforce_pp_baseline",
    "krpo",
    "krpo_prior",
    "krpo_persistent",
    "opo",
    "gpg",
    "grpo_passk",
    "maxrl",
    "js_shrinkage",
    "rae",
    "running_norm",
    "ebpo",
    "remax",
    "rae_per_prompt",
]


def test_no_two_estimators_share_a_line_style() -> None:
    styles = line_styles(ZOO)
    looks = {(to_rgba(s["color"]), s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == len(ZOO)
    # the first ten differ by colour alone; an eleventh reusing a colour differs in marker and line style too
    assert styles["grpo"]["color"] == styles["maxrl"]["color"]
    assert styles["grpo"]["marker"] != styles["maxrl"]["marker"]
    assert styles["grpo"]["linestyle"] != styles["maxrl"]["linestyle"]


def test_figure_of_a_fifteen_estimator_probe_renders() -> None:
    rows = [
        {
            "estimator": name,
            "group_size": g,
            "versus": "grpo",
            "cos_mean": 0.2,
            "cos_ci_low": 0.1,
            "cos_ci_high": 0.3,
            "cos_diff": 0.02,
            "cos_diff_ci_low": 0.01,
            "cos_diff_ci_high": 0.03,
            "cos_diff_p_holm": 0.01 if g == 8 else 0.3,
            "cos_of_mean": 0.5,
        }
        for name in ZOO[:15]
        for g in (2, 4, 8, 16)
    ]
    png = figure_png(rows)
    assert png.startswith(b"\x89PNG")


def test_a_row_stored_before_the_reference_noise_reads_its_intervals_as_batches_only() -> None:
    """A stored result of an older release: its intervals held the reference fixed; they move to the
    batches-only keys, the table shows the intervals over batches and reference as n/a, and it still draws."""
    from krpo_bench.probe.report import interval_note, table_cells
    from krpo_bench.probe.result import ProbeResult

    old = {
        "estimator": "krpo",
        "versus": "grpo",
        "group_size": 4,
        "cos_mean": 0.5,
        "cos_ci_low": 0.4,
        "cos_ci_high": 0.6,
        "cos_diff": 0.01,
        "cos_diff_ci_low": -0.02,
        "cos_diff_ci_high": 0.04,
        "cos_of_mean": 0.7,
        "cos_expected": None,
        "var_trace": 1.5e-3,
        "snr": 2.5,
        "adv_rms": 0.9,
        "zero_grad_frac": 0.25,
    }
    stored = {
        "probe_id": "p",
        "rows": [old],
        "reference_split_cosine": 0.6,
        "reference_reward_mean": 0.3,
        "wall_time_s": 1.0,
        "mlflow_run_id": "r",
        "report_dir": "/tmp/r",
        "length_normalisation": "x",
    }
    result = ProbeResult.from_json(stored)
    [row] = result.rows
    assert (row["cos_batch_ci_low"], row["cos_diff_batch_ci_high"], result.reference_blocks) == (0.4, 0.04, 0)
    cells = table_cells(row)
    assert cells[3] == "n/a" and cells[4] == "+0.010 n/a" and cells[5] == cells[6] == "n/a"
    assert "older release" in interval_note(result)
    assert figure_png(result.rows).startswith(b"\x89PNG")
