"""`krpo-bench reanalyze`: a published summary.json re-read with today's analysis, printed as `run` prints
a study's results, and written as a report's summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from krpo_bench.cli import app
from tests.analysis.test_reanalyze import old_summary

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "docs" / "results" / "calibration_summary.json"


def reanalyze(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["reanalyze", *args])
    return result.exit_code, result.output


def test_the_calibration_reads_as_docs_results_says_and_its_dump_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "calibration.json"
    code, output = reanalyze(str(CALIBRATION), "--margin", "0.02", "--json", str(out))
    assert code == 0, output
    row = next(line for line in output.splitlines() if line.startswith("│ grpo_noise1 "))
    assert "-2.2 [-3.9, -0.5]" in row and "paired" in row and "worse" in row
    assert "grpo_noise1 trails grpo by 2.2 points" in output and "Holm over 2 comparisons" in output
    dumped = json.loads(out.read_text())
    assert dumped["study"]["study_name"] == "calibration-ladder" and dumped["margin"] == 0.02
    assert dumped["cost"] == json.loads(CALIBRATION.read_text())["cost"]
    noise1 = next(c for c in dumped["comparisons"] if c["label"] == "grpo_noise1")
    assert [round(100 * noise1["difference"][k], 1) for k in ("estimate", "low", "high")] == [-2.2, -3.9, -0.5]
    again = tmp_path / "again.json"
    code, reread = reanalyze(str(out), "--json", str(again))
    assert code == 0 and json.loads(again.read_text()) == dumped
    assert reread.splitlines()[1:-1] == output.splitlines()[1:-1]


def test_the_margin_option_decides_equivalence(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(old_summary()))
    _, wide = reanalyze(str(path), "--margin", "0.02")
    _, narrow = reanalyze(str(path), "--margin", "0.001")
    assert "krpo group_size=2 is equivalent to grpo group_size=2 within ±2.0 points" in wide
    assert "Holm over 4 comparisons" in wide
    assert "undecided between krpo group_size=2 and grpo group_size=2" in narrow
    path.write_text(json.dumps(old_summary() | {"looks": [{"look": 1, "seeds": 5, "decisions": []}]}))
    _, sequential = reanalyze(str(path))
    assert "note: the study added seeds look by look (1 taken); this reads all its seeds at once" in sequential
    _, other = reanalyze(str(path), "--reference", "rloo")
    assert "reference rloo" in other and "grpo group_size=2 trails rloo group_size=2 by 5.4 points" in other


def refused(*args: str) -> tuple[int, str]:
    """The exit code and the error as one line (stderr wraps at 80 columns)."""
    code, output = reanalyze(*args)
    return code, " ".join(output.split())


def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path: Path) -> None:
    data = old_summary()
    del data["variants"][3]["values"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    code, output = refused(str(path))
    assert code == 1 and f"{path}: variants[3] has no 'values'" in output
    code, output = refused(str(tmp_path / "absent.json"))
    assert code == 1 and "absent.json: cannot read file" in output
    path.write_text("not json")
    code, output = refused(str(path))
    assert code == 1 and f"{path}: not a JSON file" in output
    code, output = refused(str(CALIBRATION), "--margin", "-0.02")
    assert code == 2 and "--margin must be above 0" in output
