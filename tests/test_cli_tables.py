"""The per-variant results table that `krpo-bench run` / `status` print stays readable in a log."""

from __future__ import annotations

import pytest

from krpo_bench import cli


class _Service:
    def results(self, study_id: str) -> dict:
        comparison = {"reference": "grpo", "analysis": "paired", "diff": -0.322, "diff_ci_low": -0.506,
                      "diff_ci_high": -0.138, "mde": 0.249, "seeds_needed": 434, "target_effect": 0.02,
                      "sentence": "grpo_noise3 trails grpo"}
        return {
            "grpo": {"n": 5, "mean": 0.789, "ci_low": 0.760, "ci_high": 0.818, "initial_mean": 0.48,
                     "values": [0.760, 0.775, 0.785, 0.815, 0.810]},
            "grpo_noise3": {"n": 5, "mean": 0.467, "ci_low": 0.304, "ci_high": 0.630, "initial_mean": 0.48,
                            "values": [0.510, 0.535, 0.615, 0.395, 0.280], "comparison": comparison},
        }


def test_results_table_is_not_truncated_on_an_80_column_log(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    cli._results_table(_Service(), "study")
    out = capsys.readouterr().out
    for whole in ("variant", "analysis", "detectable", "grpo_noise3", "[0.304, 0.630]", "-32.2 [-50.6, -13.8]",
                  "0.510 0.535 0.615 0.395 0.280"):
        assert whole in out, whole
    assert "…" not in out


LONG_LABEL = "krpo_persistent group_size=16 reward_noise=0.2 lr=0.0001 q=3"  # 60 characters, as a grid writes it


class _LabelledService:
    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def results(self, study_id: str) -> dict:
        return {label: {"n": 2, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "initial_mean": 0.3, "values": [0.45, 0.55]}
                for label in self.labels}


def _lines_holding(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


def test_long_and_markup_variant_labels_are_whole_on_one_line_of_a_log(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
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
    return {"estimator": estimator, "versus": "grpo", "group_size": group_size, "cos_mean": 0.5, "cos_ci_low": 0.4,
            "cos_ci_high": 0.6, "cos_diff": 0.01, "cos_diff_ci_low": -0.02, "cos_diff_ci_high": 0.04, "cos_of_mean": 0.7,
            "cos_expected": 0.8, "var_trace": 1.5e-3, "snr": 2.5, "adv_rms": 0.9, "zero_grad_frac": 0.25}


def test_probe_table_estimator_names_are_whole_in_a_log(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from types import SimpleNamespace

    monkeypatch.setenv("COLUMNS", "80")
    names = ["reinforce_pp", "krpo_persistent", "grpo"]
    result = SimpleNamespace(rows=[_probe_row(n, g) for n in names for g in (2, 16)], reference_split_cosine=0.93,
                             length_normalisation="per sequence", wall_time_s=1.0, mlflow_run_id="r", report_dir="/tmp/r")
    cli._probe_table(SimpleNamespace(loss_type="grpo"), result)
    out = capsys.readouterr().out
    for name in names:
        assert len(_lines_holding(out, f" {name} ")) == 2, name
    assert "…" not in out
