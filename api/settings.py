"""What ``create_app`` needs, as a view of the process's :class:`krpo_bench.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from krpo_bench.settings import (
    DEFAULT_LIST_CACHE_S,
    DEFAULT_MAX_ACTIVE_TRIALS_PER_TOKEN,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_MODEL_PARAMS,
    DEFAULT_MAX_STORED_BYTES,
    DEFAULT_MAX_TRIAL_HOURS_PER_TOKEN,
    DEFAULT_MAX_TRIALS,
    DEFAULT_TIMEOUT_S,
    default_db_url,
    default_mlflow_uri,
    get_settings,
)


@dataclass(frozen=True)
class ApiSettings:
    """The server's share of the settings (tests build one directly; the server uses
    :meth:`from_settings`). Each field is the :class:`~krpo_bench.settings.Settings` field of the
    same meaning: ``db_url`` = ``db``, ``mlflow_uri`` = ``mlflow_tracking_uri``, ``tokens_file`` =
    ``api_tokens_file``; the rest have the same names."""

    db_url: str
    mlflow_uri: str
    tokens_file: Path
    data_roots: tuple[Path, ...]
    allow_remote_code: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_trials: int = DEFAULT_MAX_TRIALS
    max_model_params: int = DEFAULT_MAX_MODEL_PARAMS
    max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES
    mlflow_ui_url: str | None = None
    list_cache_s: float = DEFAULT_LIST_CACHE_S
    default_timeout_s: int = DEFAULT_TIMEOUT_S
    max_active_trials_per_token: int = DEFAULT_MAX_ACTIVE_TRIALS_PER_TOKEN
    max_trial_hours_per_token: int = DEFAULT_MAX_TRIAL_HOURS_PER_TOKEN

    @classmethod
    def from_settings(cls, db_url: str | None = None, mlflow_uri: str | None = None) -> ApiSettings:
        """The server's view of this process's settings (environment over the ``KRPO_BENCH_CONFIG``
        file over the defaults); ``db_url``/``mlflow_uri`` (command-line options) override theirs,
        and an http(s) ``mlflow_uri`` is then the default base of run links, as the setting's is."""
        s = get_settings()
        ui = s.mlflow_ui_url
        if mlflow_uri and s.sources.get("mlflow_ui_url") == "default":
            ui = mlflow_uri.rstrip("/") if mlflow_uri.startswith(("http://", "https://")) else None
        return cls(
            db_url=db_url or default_db_url(),
            mlflow_uri=mlflow_uri or default_mlflow_uri(),
            tokens_file=s.api_tokens_file,
            data_roots=s.data_roots,
            allow_remote_code=s.allow_remote_code,
            max_body_bytes=s.max_body_bytes,
            max_trials=s.max_trials,
            max_model_params=s.max_model_params,
            max_stored_bytes=s.max_stored_bytes,
            mlflow_ui_url=ui,
            list_cache_s=s.list_cache_s,
            default_timeout_s=s.default_timeout_s,
            max_active_trials_per_token=s.max_active_trials_per_token,
            max_trial_hours_per_token=s.max_trial_hours_per_token,
        )
