"""Where krpo-bench keeps its data, and the default database and MLflow locations."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``KRPO_BENCH_HOME``, by default ``~/.krpo-bench``; created on first use."""
    home = Path(os.environ.get("KRPO_BENCH_HOME") or Path.home() / ".krpo-bench").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    """A folder under ``<data home>/cache`` (models built or converted once, reused after)."""
    path = data_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url() -> str:
    """``KRPO_BENCH_DB``, else a SQLite file in the data home."""
    return os.environ.get("KRPO_BENCH_DB") or f"sqlite:///{data_home() / 'krpo-bench.db'}"


def default_mlflow_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite backend store in the data home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    """Local artifact folder used for experiments created against the embedded store."""
    path = data_home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()
