"""What ``create_app`` needs: a view of the process's :class:`krpo_bench.settings.Settings`, each
field the setting of the same name, with the same default."""

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
    Settings,
    get_settings,
    settings_view,
)


@dataclass(frozen=True)
class ApiSettings:
    """The server's share of the settings (tests build one directly; the server uses
    :meth:`from_settings`). Every field is the :class:`~krpo_bench.settings.Settings` field of the
    same name (``tests/test_settings.py`` checks names, types and defaults)."""

    db: str
    mlflow_tracking_uri: str
    api_tokens_file: Path
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
    def from_settings(
        cls, settings: Settings | None = None, *, db: str | None = None, mlflow_tracking_uri: str | None = None
    ) -> ApiSettings:
        """The server's view of ``settings`` (default: this process's, read once); ``db`` and
        ``mlflow_tracking_uri`` (command-line options) override theirs, and an http(s)
        ``mlflow_tracking_uri`` is then the default base of run links, as the setting's is. The data
        home is created when a store lives there by default."""
        s = settings or get_settings()
        overrides: dict[str, str | None] = {}
        if db:
            overrides["db"] = db
        if mlflow_tracking_uri:
            overrides["mlflow_tracking_uri"] = mlflow_tracking_uri
            if s.sources.get("mlflow_ui_url") == "default":
                is_http = mlflow_tracking_uri.startswith(("http://", "https://"))
                overrides["mlflow_ui_url"] = mlflow_tracking_uri.rstrip("/") if is_http else None
        if any(key not in overrides and s.sources.get(key) == "default" for key in ("db", "mlflow_tracking_uri")):
            s.home.mkdir(parents=True, exist_ok=True)
        return settings_view(cls, s, **overrides)
