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
