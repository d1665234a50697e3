"""Settings of the API server, read from the environment (``ApiSettings.from_env``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from krpo_bench.settings import data_home, default_db_url, default_mlflow_uri

DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_TRIALS = 1_000


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ApiSettings:
    """Everything ``create_app`` needs.

    Environment: ``KRPO_BENCH_DB``, ``MLFLOW_TRACKING_URI``, ``KRPO_BENCH_API_TOKENS_FILE`` (default
    ``<data home>/api-tokens.json``), ``KRPO_BENCH_DATA_ROOTS`` (``os.pathsep``-separated folders spec
    files may read from; default the data home), ``KRPO_BENCH_ALLOW_REMOTE_CODE``,
    ``KRPO_BENCH_MAX_BODY_BYTES``, ``KRPO_BENCH_MAX_TRIALS``, ``KRPO_BENCH_MLFLOW_UI_URL`` (base URL
    of the MLflow UI for run links; default the tracking URI when it is http(s)) and
    ``KRPO_BENCH_LIST_CACHE_S`` (seconds a study-list page is reused; 0: never).
    """

    db_url: str
    mlflow_uri: str
    tokens_file: Path
    data_roots: tuple[Path, ...]
    allow_remote_code: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_trials: int = DEFAULT_MAX_TRIALS
    mlflow_ui_url: str | None = None
    list_cache_s: float = 1.0

    @classmethod
    def from_env(cls, db_url: str | None = None, mlflow_uri: str | None = None) -> ApiSettings:
        """Settings from the environment; ``db_url``/``mlflow_uri`` override theirs."""
        env = os.environ
        mlflow = mlflow_uri or default_mlflow_uri()
        roots = [Path(p).expanduser() for p in env.get("KRPO_BENCH_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
        ui = env.get("KRPO_BENCH_MLFLOW_UI_URL") or (mlflow if mlflow.startswith(("http://", "https://")) else None)
        return cls(
            db_url=db_url or default_db_url(),
            mlflow_uri=mlflow,
            tokens_file=Path(env.get("KRPO_BENCH_API_TOKENS_FILE") or data_home() / "api-tokens.json").expanduser(),
            data_roots=tuple(roots) or (data_home(),),
            allow_remote_code=_flag(env.get("KRPO_BENCH_ALLOW_REMOTE_CODE")),
            max_body_bytes=int(env.get("KRPO_BENCH_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES),
            max_trials=int(env.get("KRPO_BENCH_MAX_TRIALS") or DEFAULT_MAX_TRIALS),
            mlflow_ui_url=ui.rstrip("/") if ui else None,
            list_cache_s=float(env.get("KRPO_BENCH_LIST_CACHE_S") or 1.0),
        )
