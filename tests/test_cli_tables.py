"""The per-variant results table that `krpo-bench run` / `status` print stays readable in a log."""

from __future__ import annotations

import pytest

from krpo_bench import cli
from krpo_bench.analysis.model import ComparisonResult, Estimate, StudyAnalysis, VariantResult


def _variant(label: str, values: list[float], mean: tuple[float, float, float]) -> VariantResult:
    interval = Estimate(estimate=mean[0], low=mean[1], high=mean[2])
    return VariantResult(
        variant=label,
        label=label,
        n=len(values),
        seeds=list(range(len(values))),
        values=values,
        mean=interval,
        iqm=interval,
        initial_mean=0.48,
    )


def _analysis(variants: list[VariantResult], comparisons: list[ComparisonResult]) -> StudyAnalysis:
    return StudyAnalysis(
        metric="final/accuracy",
        reference="grpo",
        confidence=0.95,
        power=0.8,
        target_effect=0.02,
        margin=0.02,
        n_bootstrap=2000,
        bootstrap_seed=0,
        variants=variants,
        comparisons=comparisons,
    )


class _Service:
    def results(self, study_id: str) -> StudyAnalysis:
        undefined = Estimate(estimate=float("nan"), low=float("nan"), high=float("nan"))
        comparison = ComparisonResult(
            variant="grpo_noise3",
            label="grpo_noise3",
            reference="grpo",
            reference_label="grpo",
            metric="final/accuracy",
            analysis="paired",
            n_variant=5,
            n_reference=5,
            difference=Estimate(estimate=-0.322, low=-0.506, high=-0.138),
            difference_bootstrap=undefined,
            prob_improvement=undefined,
            p_value=0.01,
            rank_p_value=0.06,
            welch_difference=undefined,
            welch_p=0.01,
            mde=0.249,
            target_effect=0.02,
            seeds_needed=434,
            confidence=0.95,
            margin=0.02,
            tost_p=0.99,
            tost_interval=Estimate(estimate=-0.322, low=-0.47, high=-0.17),
            exploratory=False,
            family_size=1,
            p_holm=0.01,
            tost_p_holm=0.99,
            look=None,
            difference_level=0.05,
            tost_level=0.05,
            verdict="worse",
            seeds_to_decide=None,
            item_difference=undefined,
            item_share=float("nan"),
            spread_ratio=undefined,
            stability="undecided",
            sentence="grpo_noise3 trails grpo",
        )
        return _analysis(
            [
                _variant("grpo", [0.760, 0.775, 0.785, 0.815, 0.810], (0.789, 0.760, 0.818)),
                _variant("grpo_noise3", [0.510, 0.535, 0.615, 0.395, 0.280], (0.467, 0.304, 0.630)),
            ],
            [comparison],
        )


def test_results_table_is_not_truncated_on_an_80_column_log(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    cli._results_table(_Service(), "study")
    out = capsys.readouterr().out
    for whole in (
        "variant",
        "analysis",
        "detectable",
        "grpo_noise3",
        "[0.304, 0.630]",
        "-32.2 [-50.6, -13.8]",
        "0.510 0.535 0.615 0.395 0.280",
        "reference",
        "24.9",
        "434",
        "seeds for 2 pts",
        "worse",
        "TOST ±2.0 p Holm",
    ):
        assert whole in out, whole
    assert "…" not in out


LONG_LABEL = "krpo_persistent group_size=16 reward_noise=0.2 lr=0.0001 q=3"  # 60 characters, as a grid writes it


class _LabelledService:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def results(self, study_id: str) -> StudyAnalysis:
        return _analysis([_variant(label, [0.45, 0.55], (0.5, 0.4, 0.6)) for label in self.labels], [])


def _lines_holding(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


def test_long_and_markup_variant_labels_are_whole_on_one_line_of_a_log(
    capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    assert len(LONG_LABEL) == 60
    monkeypatch.setenv("COLUMNS", "80")
    labels = [LONG_LABEL, "[/]", "[link=https://evil.example]x[/link]", "grpo \x1b[2K"]
    cli._results_table(_LabelledService(labels), "study")
    out = capsys.readouterr().out
    for label in labels[:3]:
        assert _lines_holding(out, label), label
    assert _lines_holding(out, "grpo \\x1b[2K") and "\x1b" not in out, "a stored control character is shown escaped"
    assert "…" not in out


def _probe_row(estimator: str, group_size: int) -> dict:
    return {
        "estimator": estimator,
        "versus": "grpo",
        "group_size": group_size,
        "cos_mean": 0.5,
        "cos_ci_low": 0.4,
        "cos_ci_high": 0.6,
        "cos_diff": 0.01,
        "cos_diff_ci_low": -0.02,
        "cos_diff_ci_high": 0.04,
        "cos_of_mean": 0.7,
        "cos_expected": 0.8,
        "var_trace": 1.5e-3,
        "snr": 2.5,
        "adv_rms": 0.9,
        "zero_grad_frac": 0.25,
    }


def test_probe_table_estimator_names_are_whole_in_a_log(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from types import SimpleNamespace

    monkeypatch.setenv("COLUMNS", "80")
    names = ["reinforce_pp", "krpo_persistent", "grpo"]
    result = SimpleNamespace(
        rows=[_probe_row(n, g) for n in names for g in (2, 16)],
        reference_split_cosine=0.93,
        length_normalisation="per sequence",
        wall_time_s=1.0,
        mlflow_run_id="r",
        report_dir="/tmp/r",
    )
    cli._probe_table(SimpleNamespace(loss_type="grpo"), result)
    out = capsys.readouterr().out
    for name in names:
        assert len(_lines_holding(out, f" {name} ")) == 2, name
    assert "…" not in out


def test_the_quickstart_table_reads_as_the_readme_shows_it(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """The README's quickstart seeds, through `analyze` and the CLI table: the same figures to the last digit."""
    from krpo_bench.analysis.analyze import AnalysisSettings, analyze
    from krpo_bench.analysis.records import TrialRecord

    finals = {"grpo": [0.760, 0.775, 0.785], "krpo": [0.760, 0.775, 0.760]}
    records = [
        TrialRecord(variant, (), variant, seed, {"final/accuracy": value, "final/initial_accuracy": 0.48})
        for variant, values in finals.items()
        for seed, value in enumerate(values)
    ]
    analysis = analyze(records, AnalysisSettings())

    class _Quickstart:
        def results(self, study_id: str) -> StudyAnalysis:
            return analysis

    monkeypatch.setenv("COLUMNS", "200")
    cli._results_table(_Quickstart(), "study")
    out = capsys.readouterr().out
    grpo, krpo = _lines_holding(out, " grpo "), _lines_holding(out, " krpo ")
    assert [c.strip() for c in grpo[0].split("│")[1:-1]] == [
        "grpo",
        "3",
        "0.480",
        "0.773 [0.742, 0.805]",
        "0.760 0.775 0.785",
        "reference",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    assert [c.strip() for c in krpo[0].split("│")[1:-1]] == [
        "krpo",
        "3",
        "0.480",
        "0.765 [0.743, 0.787]",
        "0.760 0.775 0.760",
        "-0.8 [-4.4, +2.8]",
        "paired",
        "undecided",
        "0.423",
        "0.148",
        "4.7",
        "7",
        "8",
    ]
    assert "seeds for 2 pts" in out and "TOST ±2.0 p Holm" in out
    assert (
        "undecided between krpo and grpo: -0.8 points, 95 % CI [-4.4, +2.8] (paired by seed, 3 seeds); neither a "
        "difference nor equivalence within ±2.0 points (p 0.423, TOST p 0.148, Holm over 1 comparison); these seeds "
        "detect differences above 4.7 points; about 8 seeds would decide it"
    ) in " ".join(out.split())
