"""The probe figure tells every estimator of the zoo apart (the zoo has more estimators than tab10 colours)."""

from __future__ import annotations

from matplotlib.colors import to_rgba

from krpo_bench.probe.report import figure_png, line_styles

ZOO = ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "krpo", "krpo_prior", "krpo_persistent", "opo", "gpg",
       "grpo_passk", "maxrl", "js_shrinkage", "rae", "running_norm", "ebpo", "remax", "rae_per_prompt"]


def test_no_two_estimators_share_a_line_style() -> None:
    styles = line_styles(ZOO)
    looks = {(to_rgba(s["color"]), s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(looks) == len(ZOO)
    # the first ten differ by colour alone; an eleventh reusing a colour differs in marker and line style too
    assert styles["grpo"]["color"] == styles["maxrl"]["color"]
    assert styles["grpo"]["marker"] != styles["maxrl"]["marker"]
    assert styles["grpo"]["linestyle"] != styles["maxrl"]["linestyle"]


def test_figure_of_a_fifteen_estimator_probe_renders() -> None:
    rows = [{"estimator": name, "group_size": g, "cos_mean": 0.2, "cos_ci_low": 0.1, "cos_ci_high": 0.3,
             "cos_of_mean": 0.5} for name in ZOO[:15] for g in (2, 4, 8, 16)]
    png = figure_png(rows)
    assert png.startswith(b"\x89PNG")
