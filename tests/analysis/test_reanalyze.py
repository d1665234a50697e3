"""Re-reading a published summary.json: records from either schema, analysed with today's verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from krpo_bench.dashboards.report import summarize
from krpo_bench.dashboards.source import RunData, StudyData
from statsmodels.stats.multitest import multipletests

from krpo_bench import tags
from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.records import records_from_summary, summary_order_pairs, summary_settings

ROOT = Path(__file__).resolve().parents[2]
GRPO = {"2": [0.60, 0.62, 0.64, 0.66, 0.68], "4": [0.70, 0.71, 0.74, 0.72, 0.75]}
OTHERS = {
    ("krpo", "2"): [0.601, 0.619, 0.642, 0.660, 0.678],  # within 0.2 points of grpo on every seed
    ("rloo", "2"): [0.65, 0.69, 0.68, 0.72, 0.73],
    ("krpo", "4"): [0.68, 0.75, 0.70, 0.76, 0.71],
    ("rloo", "4"): [0.65, 0.69, 0.70, 0.66, 0.71],
}


def old_summary() -> dict[str, Any]:
    """An older release's summary.json: display labels as ``variant``, the seeds and values of each (fresh lists:
    tests mutate it)."""
    values = {("grpo", g): v for g, v in GRPO.items()} | OTHERS
    return {
        "study": {"study_id": "s-1", "study_name": "groups", "experiment_ids": ["1"], "status_counts": {}},
        "metric": "final/accuracy",
        "reference": "grpo",
        "confidence": 0.95,
        "target_effect": 0.02,
        "n_bootstrap": 200,
        "bootstrap_seed": 0,
        "variants": [
            {"variant": f"{variant} group_size={g}", "n_seeds": 5, "seeds": [0, 1, 2, 3, 4], "values": list(v)}
            for (variant, g), v in values.items()
        ],
        "order_sensitivity": [],
    }


def reanalysed(data: dict[str, Any], **overrides: Any) -> Any:
    settings = AnalysisSettings(**(summary_settings(data) | overrides))
    return analyze(records_from_summary(data), settings, summary_order_pairs(data))


def test_old_schema_compares_each_grid_point_with_grpo_and_holm_adjusts_over_the_family() -> None:
    records = records_from_summary(old_summary())
    assert len(records) == 30
    assert {(r.variant, r.grid_point, r.label) for r in records if r.seed == 0} == {
        (v, (("group_size", g),), f"{v} group_size={g}") for v in ("grpo", "krpo", "rloo") for g in ("2", "4")
    }
    analysis = reanalysed(old_summary(), equivalence_margin=0.02)
    pairs = [(c.variant, c.grid_point, c.reference, c.reference_grid_point) for c in analysis.comparisons]
    assert sorted(pairs) == sorted(
        (v, (("group_size", g),), "grpo", (("group_size", g),)) for v in ("krpo", "rloo") for g in ("2", "4")
    )
    assert {c.family_size for c in analysis.comparisons} == {4}
    raw = [c.p_value for c in analysis.comparisons]
    rloo = next(i for i, c in enumerate(analysis.comparisons) if c.label == "rloo group_size=2")
    assert analysis.comparisons[rloo].p_holm == pytest.approx(multipletests(raw, method="holm")[1][rloo])
    assert analysis.comparisons[rloo].p_holm > analysis.comparisons[rloo].p_value
    assert analysis.comparison("rloo group_size=2").verdict == "better"
    assert analysis.comparison("krpo group_size=2").analysis == "paired"


def test_equivalence_decides_at_a_margin_the_pair_fits_within_and_not_at_a_narrower_one() -> None:
    wide = reanalysed(old_summary(), equivalence_margin=0.02).comparison("krpo group_size=2")
    narrow = reanalysed(old_summary(), equivalence_margin=0.001).comparison("krpo group_size=2")
    assert wide.verdict == "equivalent" and wide.tost_p_holm < 0.05
    assert narrow.verdict == "undecided" and narrow.margin == 0.001


def test_the_file_settings_are_the_defaults_and_the_margin_defaults_to_the_target_effect() -> None:
    analysis = reanalysed(old_summary())
    assert (analysis.metric, analysis.reference, analysis.confidence) == ("final/accuracy", "grpo", 0.95)
    assert analysis.margin == analysis.target_effect == 0.02
    assert (analysis.n_bootstrap, analysis.bootstrap_seed) == (200, 0)
    assert reanalysed(old_summary(), target_effect=0.05).margin == 0.05


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("metric"), "summary has no 'metric'"),
        (lambda d: d.pop("variants"), "summary has no 'variants'"),
        (lambda d: d["variants"][2].pop("seeds"), "variants[2] has no 'seeds'"),
        (lambda d: d["variants"][1].pop("variant"), "variants[1] has no 'variant'"),
        (lambda d: d["variants"][0]["values"].pop(), "variants[0]: 5 seeds but 4 values"),
    ],
)
def test_a_summary_missing_a_key_is_refused_naming_it(change: Any, message: str) -> None:
    data = old_summary()
    change(data)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        records_from_summary(data)


def test_settings_refuse_a_summary_without_its_target_effect() -> None:
    data = old_summary()
    del data["target_effect"]
    with pytest.raises(ValueError, match="summary has no 'target_effect'"):
        summary_settings(data)


def _run(label: str, variant: str, grid: list[list[Any]], seed: int, value: float) -> RunData:
    tagged = {tags.VARIANT_NAME: variant, tags.GRID_POINT: json.dumps(grid)}
    return RunData(f"{label}-{seed}", label, seed, "FINISHED", {}, tagged, {"final/accuracy": value})


def test_todays_summary_json_reads_back_to_the_same_analysis() -> None:
    """A summary.json as the report writes it today (grid point values kept as data: None, a dict)
    re-reads to the analysis the report made."""
    noisy = [["training.group_size", 2], ["training.reward_noise", {"flip": 0.2}]]
    clean = [["training.group_size", 2], ["training.reward_noise", None]]
    values = {
        ("grpo", "clean"): [0.60, 0.62, 0.64],
        ("krpo", "clean"): [0.63, 0.66, 0.66],
        ("grpo", "noisy"): [0.40, 0.45, 0.41],
        ("krpo", "noisy"): [0.42, 0.44, 0.47],
    }
    runs = [
        _run(f"{variant} {point}", variant, clean if point == "clean" else noisy, seed, value)
        for (variant, point), seeds in values.items()
        for seed, value in enumerate(seeds)
    ]
    settings = AnalysisSettings(equivalence_margin=0.03, n_resamples=200, secondary_metrics=())
    written = summarize(StudyData("s-2", "today", ["1"], runs, {"FINISHED": 12}), settings).to_json()
    data = json.loads(json.dumps(written, allow_nan=False))
    records = records_from_summary(data)
    assert records[0].grid_point == tuple(map(tuple, clean)) and records[-1].grid_point == tuple(map(tuple, noisy))
    again = reanalysed(data)
    assert again.margin == 0.03 and len(again.comparisons) == 2
    assert again.to_json() == {k: v for k, v in data.items() if k not in ("study", "cost")}


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "results").glob("*_summary.json")), ids=lambda p: p.stem)
def test_every_published_summary_reads_back_its_per_seed_values(path: Path) -> None:
    data = json.loads(path.read_text())
    analysis = reanalysed(data, n_resamples=20)
    assert sorted((v.label, v.seeds, v.values) for v in analysis.variants) == sorted(
        (v["variant"], v["seeds"], v["values"]) for v in data["variants"]
    )
