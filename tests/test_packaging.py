"""The wheel installs one top-level package: api/ and dashboards/ ship as krpo_bench.api and krpo_bench.dashboards."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_only_the_krpo_bench_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("krpo_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"krpo_bench"}
    assert "krpo_bench/api/app.py" in names and "krpo_bench/api/routers/studies.py" in names
    assert "krpo_bench/dashboards/report.py" in names
    assert "krpo_bench/service/migrations/versions/0001_initial_schema.py" in names
    assert {
        "krpo_bench/models/artefacts/tiny-arith-4b89e355976c59e0.safetensors",
        "krpo_bench/models/artefacts/tiny-arith-4b89e355976c59e0.json",
    } <= set(names)
