"""Where krpo-bench keeps its data, and every other setting the project reads.

One :class:`Settings` object collects them all: each comes from its environment variable, else from
the optional config file named by ``KRPO_BENCH_CONFIG`` (TOML or YAML, keys are the field names
below), else from a default that makes the embedded mode (one machine, SQLite, local MLflow) work
untouched. ``krpo-bench config`` prints the effective values with their sources.

The plain functions (:func:`data_home`, :func:`cache_dir`, :func:`default_db_url`,
:func:`default_mlflow_uri`, :func:`default_artifact_root`) are the stable entry points the rest of the
package uses; they read :func:`get_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

CONFIG_ENV = "KRPO_BENCH_CONFIG"
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_MAX_TRIALS = 1_000
DEFAULT_MAX_MODEL_PARAMS = 8_000_000_000
DEFAULT_MAX_STORED_BYTES = 8_000_000
DEFAULT_LIST_CACHE_S = 1.0
DEFAULT_MLFLOW_RETRY_S = 300.0
DEFAULT_TIMEOUT_S = 24 * 3600
DEFAULT_MAX_ACTIVE_TRIALS_PER_TOKEN = 10_000
DEFAULT_MAX_TRIAL_HOURS_PER_TOKEN = DEFAULT_MAX_ACTIVE_TRIALS_PER_TOKEN * DEFAULT_TIMEOUT_S // 3600


class SettingsError(ValueError):
    """A setting whose value cannot be used; the message names the variable or file key."""


@dataclass(frozen=True)
class Var:
    """One setting: its field name (also its key in the config file), environment variable, kind,
    default as documented, and what it means."""

    key: str
    env: str
    kind: str  # path | str | int | float | bool | paths
    default: str
    help: str
    secret: bool = False


VARS: tuple[Var, ...] = (
    Var(
        "home",
        "KRPO_BENCH_HOME",
        "path",
        "~/.krpo-bench",
        "data home: SQLite files, MLflow store and artifacts, trial run folders, model cache, reports",
    ),
    Var(
        "db",
        "KRPO_BENCH_DB",
        "str",
        "sqlite:///<home>/krpo-bench.db",
        "job database (postgresql://... for scale-out; Optuna's storage lives beside it)",
    ),
    Var(
        "mlflow_tracking_uri",
        "MLFLOW_TRACKING_URI",
        "str",
        "sqlite:///<home>/mlflow.db",
        "MLflow tracking store (http://host:5000 for an mlflow server)",
    ),
    Var("cpu_threads", "KRPO_BENCH_CPU_THREADS", "int", "cores / CPU slots", "torch threads per CPU trial"),
    Var(
        "mlflow_retry_s",
        "KRPO_BENCH_MLFLOW_RETRY_S",
        "float",
        str(DEFAULT_MLFLOW_RETRY_S),
        "seconds a trial keeps retrying an unreachable MLflow server before it fails",
    ),
    Var(
        "api_url",
        "KRPO_BENCH_API",
        "str",
        "unset",
        "CLI: talk to this krpo-bench server (submit --api) instead of the database",
    ),
    Var(
        "api_token", "KRPO_BENCH_API_TOKEN", "str", "unset", "CLI/client: bearer token sent to the server", secret=True
    ),
    Var(
        "api_tokens_file",
        "KRPO_BENCH_API_TOKENS_FILE",
        "path",
        "<home>/api-tokens.json",
        "server: hashed API tokens ('krpo-bench token create')",
    ),
    Var(
        "data_roots",
        "KRPO_BENCH_DATA_ROOTS",
        "paths",
        "<home>/data",
        "server and workers: folders specs may read local files from, checked at submission and again where "
        "a worker opens them (os.pathsep-separated; a list in the file)",
    ),
    Var(
        "allow_remote_code",
        "KRPO_BENCH_ALLOW_REMOTE_CODE",
        "bool",
        "false",
        "server: accept model.trust_remote_code: true",
    ),
    Var(
        "max_body_bytes",
        "KRPO_BENCH_MAX_BODY_BYTES",
        "int",
        str(DEFAULT_MAX_BODY_BYTES),
        "server: request body cap (413 above)",
    ),
    Var(
        "max_trials",
        "KRPO_BENCH_MAX_TRIALS",
        "int",
        str(DEFAULT_MAX_TRIALS),
        "server: most trials one submitted study may hold",
    ),
    Var(
        "max_model_params",
        "KRPO_BENCH_MAX_MODEL_PARAMS",
        "int",
        str(DEFAULT_MAX_MODEL_PARAMS),
        "server: largest model (parameters) a submitted trial may build or load, where its size is known",
    ),
    Var(
        "max_stored_bytes",
        "KRPO_BENCH_MAX_STORED_BYTES",
        "int",
        str(DEFAULT_MAX_STORED_BYTES),
        "server: most bytes of trial configs one submitted study may store (its trials' configs together)",
    ),
    Var(
        "mlflow_ui_url",
        "KRPO_BENCH_MLFLOW_UI_URL",
        "str",
        "the tracking URI when it is http(s)",
        "server: base URL of the MLflow UI for run links",
    ),
    Var(
        "list_cache_s",
        "KRPO_BENCH_LIST_CACHE_S",
        "float",
        str(DEFAULT_LIST_CACHE_S),
        "server: seconds a study-list page is reused (0: never)",
    ),
    Var(
        "default_timeout_s",
        "KRPO_BENCH_DEFAULT_TIMEOUT_S",
        "int",
        str(DEFAULT_TIMEOUT_S),
        "server: wall-clock limit of a submitted trial or probe whose spec sets no resources.timeout_s",
    ),
    Var(
        "max_active_trials_per_token",
        "KRPO_BENCH_MAX_ACTIVE_TRIALS_PER_TOKEN",
        "int",
        str(DEFAULT_MAX_ACTIVE_TRIALS_PER_TOKEN),
        "server: most queued + running trials the studies of one submit token may hold",
    ),
    Var(
        "max_trial_hours_per_token",
        "KRPO_BENCH_MAX_TRIAL_HOURS_PER_TOKEN",
        "int",
        str(DEFAULT_MAX_TRIAL_HOURS_PER_TOKEN),
        "server: most trial-hours (queued + running trials x their timeout) one submit token may hold",
    ),
)
VARS_BY_KEY = {v.key: v for v in VARS}
ENV_VARS: tuple[str, ...] = (CONFIG_ENV, *(v.env for v in VARS))
"""Every environment variable the project reads for its own settings."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    """The effective settings, one field per row of :data:`VARS` (same name, in the same order);
    ``sources[key]`` says where each value came from (``env KRPO_BENCH_DB``, ``file
    /etc/krpo-bench.toml``, ``default``). Server components take views of it by field name
    (:func:`settings_view`)."""

    home: Path
    db: str
    mlflow_tracking_uri: str
    cpu_threads: int | None = None
    mlflow_retry_s: float = DEFAULT_MLFLOW_RETRY_S
    api_url: str | None = None
    api_token: str | None = None
    api_tokens_file: Path = Path("api-tokens.json")
    data_roots: tuple[Path, ...] = ()
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
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``) over the ``KRPO_BENCH_CONFIG`` file over
        the defaults. Empty variables count as unset. Raises SettingsError naming what is wrong."""
        env = os.environ if environ is None else environ
        config_file = Path(env[CONFIG_ENV]).expanduser() if env.get(CONFIG_ENV, "").strip() else None
        from_file = read_config_file(config_file) if config_file else {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for var in VARS:
            raw = env.get(var.env, "")
            if raw.strip():
                values[var.key] = _parse(var, raw, f"environment variable {var.env}", from_env=True)
                sources[var.key] = f"env {var.env}"
            elif var.key in from_file:
                base = config_file.parent if config_file else Path.cwd()
                values[var.key] = _parse(var, from_file[var.key], f"{config_file}: key {var.key!r}", base=base)
                sources[var.key] = f"file {config_file}"
            else:
                sources[var.key] = "default"
        home = values.get("home") or Path.home() / ".krpo-bench"
        tracking = values.get("mlflow_tracking_uri") or f"sqlite:///{home / 'mlflow.db'}"
        ui = values.get("mlflow_ui_url") or (tracking if tracking.startswith(("http://", "https://")) else None)
        from_home = {
            "home": home,
            "db": values.get("db") or f"sqlite:///{home / 'krpo-bench.db'}",
            "mlflow_tracking_uri": tracking,
            "api_tokens_file": values.get("api_tokens_file") or home / "api-tokens.json",
            "data_roots": values.get("data_roots") or (home / "data",),
            "mlflow_ui_url": ui.rstrip("/") if ui else None,
        }
        return cls(**{**values, **from_home}, config_file=config_file, sources=sources)

    def describe(self) -> list[dict[str, str]]:
        """One row per setting: key, env var, shown value (secrets and URL passwords masked), source."""
        rows = [
            {
                "key": "config_file",
                "env": CONFIG_ENV,
                "value": str(self.config_file or "none"),
                "source": f"env {CONFIG_ENV}" if self.config_file else "default",
            }
        ]
        for var in VARS:
            rows.append(
                {
                    "key": var.key,
                    "env": var.env,
                    "value": _shown(var, getattr(self, var.key)),
                    "source": self.sources.get(var.key, "default"),
                }
            )
        return rows


View = TypeVar("View")


def settings_view(cls: type[View], settings: Any, **overrides: Any) -> View:
    """A ``cls`` (a dataclass whose fields are settings of the same names, such as the server's
    ``ApiSettings`` or ``Policy``) holding those fields of ``settings`` (a :class:`Settings` or another
    view), with ``overrides`` on top."""
    return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)} | overrides)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a ``.toml`` / ``.yaml`` / ``.yml`` config file; unknown keys are errors."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{CONFIG_ENV}={path}: cannot read the config file: {exc.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(raw.decode("utf-8"))
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw.decode("utf-8"))
        else:
            raise SettingsError(f"{CONFIG_ENV}={path}: the config file must end in .toml, .yaml or .yml")
    except SettingsError:
        raise
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise SettingsError(f"{path}: cannot parse the config file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the config file must hold a mapping of settings, not a {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in VARS_BY_KEY)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(VARS_BY_KEY)}")
    return data


def _parse(var: Var, raw: Any, where: str, *, from_env: bool = False, base: Path | None = None) -> Any:
    """``raw`` (an environment string or a config-file value) as ``var``'s type."""
    try:
        if var.kind == "path":
            return _path(_text(raw), base)
        if var.kind == "paths":
            items = raw.split(os.pathsep) if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise ValueError("expected a list of folders")
            return tuple(_path(p, base) for p in items if p.strip())
        if var.kind == "str":
            return _text(raw)
        if var.kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = _text(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE[:-1])}")
        if var.kind == "int":
            value = int(_text(raw).strip()) if from_env or isinstance(raw, str) else raw
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("expected a positive integer")
            return value
        if var.kind == "float":
            value = float(_text(raw).strip()) if from_env or isinstance(raw, str) else raw
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError("expected a non-negative number")
            return float(value)
    except ValueError as exc:
        raise SettingsError(f"{where}: {raw!r} is not a valid {var.kind}: {exc}") from None
    raise AssertionError(var.kind)


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected text, got {type(raw).__name__}")
    return raw


def _path(text: str, base: Path | None) -> Path:
    path = Path(text).expanduser()
    return base / path if base is not None and not path.is_absolute() else path


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)")


def _shown(var: Var, value: Any) -> str:
    if value is None:
        return "unset"
    if var.secret:
        return "****"
    if isinstance(value, tuple):
        return os.pathsep.join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return _URL_PASSWORD.sub(r"\1****\3", str(value))


def _config_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=16)
def _cached(env: tuple[tuple[str, str], ...], stamp: tuple[int, int] | None) -> Settings:
    return Settings.load(dict(env))


def get_settings() -> Settings:
    """The effective settings of this process (re-read when a variable or the config file changes)."""
    env = tuple((name, os.environ.get(name, "")) for name in ENV_VARS)
    config = os.environ.get(CONFIG_ENV, "").strip()
    return _cached(env, _config_stamp(config) if config else None)


def data_home() -> Path:
    """``KRPO_BENCH_HOME``, by default ``~/.krpo-bench``; created on first use."""
    home = get_settings().home
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    """A folder under ``<data home>/cache`` (models built or converted once, reused after)."""
    path = data_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def trial_folder(trial_id: str) -> Path:
    """A trial's run folder (checkpoints, result): ``<data home>/trials/<trial id>``."""
    return data_home() / "trials" / trial_id


def default_db_url() -> str:
    """``KRPO_BENCH_DB``, else a SQLite file in the data home."""
    settings = get_settings()
    if settings.sources.get("db") == "default":
        data_home()
    return settings.db


def default_mlflow_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite backend store in the data home."""
    settings = get_settings()
    if settings.sources.get("mlflow_tracking_uri") == "default":
        data_home()
    return settings.mlflow_tracking_uri


def default_artifact_root() -> str:
    """Local artifact folder used for experiments created against the embedded store."""
    path = data_home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "Settings",
    "SettingsError",
    "VARS",
    "Var",
    "cache_dir",
    "data_home",
    "default_artifact_root",
    "default_db_url",
    "default_mlflow_uri",
    "get_settings",
    "read_config_file",
    "settings_view",
    "trial_folder",
]
