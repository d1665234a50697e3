"""Trials that start at once: the shipped tiny-arith build, and trial processes forked from a preloaded server."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from krpo_bench.models import arith_pairs, greedy_accuracy, load_model, tiny_arith_report
from krpo_bench.models.config import ModelSpec, TinyArithOptions
from krpo_bench.models.hf import MARKER_FILE
from krpo_bench.models import tiny_arith
from krpo_bench.models.tiny_arith import SHIPPED_BUILDS, build_tiny_arith, shipped_artefact, tiny_arith_cache_key

DEFAULT_KEY = tiny_arith_cache_key(TinyArithOptions())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_default_build_is_shipped_and_pinned() -> None:
    assert DEFAULT_KEY in SHIPPED_BUILDS
    weights, report_file = shipped_artefact(TinyArithOptions())
    assert sha256(weights) == SHIPPED_BUILDS[DEFAULT_KEY]
    assert json.loads(report_file.read_text())["options"] == TinyArithOptions().model_dump()
    assert weights.stat().st_size < 4_000_000
    assert shipped_artefact(TinyArithOptions(seed=1)) is None


def test_a_fresh_home_installs_the_shipped_build_in_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    started = time.perf_counter()
    folder = build_tiny_arith()
    assert time.perf_counter() - started < 20  # the warm-up alone takes 60-100 s on one core
    assert (folder / MARKER_FILE).exists() and folder.name == DEFAULT_KEY
    assert sha256(folder / "model.safetensors") == SHIPPED_BUILDS[DEFAULT_KEY]
    report = tiny_arith_report(folder)
    assert report["installed_from"] == f"{DEFAULT_KEY}.safetensors"
    loaded = load_model(ModelSpec(name="tiny-arith"))
    assert greedy_accuracy(loaded.model, loaded.tokenizer, arith_pairs(heldout=True)) == report["heldout_greedy_accuracy"]


def test_a_damaged_or_foreign_artefact_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, report_file = shipped_artefact(TinyArithOptions())
    copy = tmp_path / "artefacts"
    copy.mkdir()
    shutil.copy(weights, copy / weights.name)
    shutil.copy(report_file, copy / report_file.name)
    monkeypatch.setattr(tiny_arith, "ARTEFACTS", copy)
    assert shipped_artefact(TinyArithOptions()) is not None
    report = json.loads(report_file.read_text())
    (copy / report_file.name).write_text(json.dumps({**report, "build_version": report["build_version"] - 1}))
    assert shipped_artefact(TinyArithOptions()) is None
    shutil.copy(report_file, copy / report_file.name)
    data = bytearray((copy / weights.name).read_bytes())
    data[-1] ^= 1
    (copy / weights.name).write_bytes(bytes(data))
    assert shipped_artefact(TinyArithOptions()) is None


@pytest.mark.slow
def test_the_builder_reproduces_the_shipped_weights_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe runs on one CPU thread from a fixed seed; on x86-64 CPU builds of torch the bytes match
    (a different BLAS could change the last bits: then refresh the artefact and its pinned SHA-256)."""
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    folder = build_tiny_arith(use_shipped=False)
    assert "installed_from" not in tiny_arith_report(folder)
    assert sha256(folder / "model.safetensors") == SHIPPED_BUILDS[DEFAULT_KEY]
