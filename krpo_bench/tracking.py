"""A thin MLflow adapter for one trial run: create or continue it, log params, metrics, files.

Outages of the tracking server never silently lose data. Metric and param writes go through an
in-memory buffer: each log call sends what is pending (one ``log_batch`` per 1000 metrics / 100
params); when the server is unreachable the writes stay buffered and are retried with exponential
backoff on later log calls, and ``finish`` waits for them. Other calls (creating
or continuing the run, artifacts, ending the run) are retried with backoff in place. If the server
stays unreachable for longer than ``retry_s`` (setting ``mlflow_retry_s``, default 300 s) a
:class:`TrackingUnavailableError` is raised, so the trial attempt fails and its job is retried; the
writes still pending are spooled to ``<data home>/tracking-spool/<run id>.jsonl`` and replayed
when the run is continued (on this machine).

Retries are safe: every metric keeps the timestamp it was logged with, and MLflow stores an
identical (key, step, timestamp, value) only once; params are logged once per key. Only
"unreachable" errors are retried (connection refused or reset, timeouts, HTTP 408/429/5xx, a store
that reports itself temporarily unavailable); anything else (a rejected value, an unknown run) is
raised at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from krpo_bench import tags as krpo_tags
from krpo_bench.settings import data_home, default_artifact_root, default_mlflow_uri, get_settings

MAX_BATCH = 1000  # MLflow's log_batch limit on metrics (and on all entries together)
MAX_PARAMS = 100  # ... on params per batch
RETRY_ENV = "KRPO_BENCH_MLFLOW_RETRY_S"
REQUEST_TIMEOUT_S = 30  # one HTTP request; our own retry loop replaces MLflow's (minutes-long) one
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0
SPOOL_DIR = "tracking-spool"

T = TypeVar("T")
log = logging.getLogger(__name__)
# A new SQLite tracking store creates its tables (alembic migrations) on first use and says so at
# INFO level; quiet in this process only (other MLflow logging is left as it is).
for _migration_logger in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_migration_logger).setLevel(logging.WARNING)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The tag the MLflow 3 UI reads to open an experiment on its training runs rather than on the
GenAI overview (value ``custom_model_development``)."""

FINAL_STEP = 0
"""The step a trial's final metrics (``final/*``, ``pruned/*``, ``cost/*``) are logged at. The MLflow
UI draws a metric whose latest step is 0 as a bar chart (one value per run, averaged per group when
runs are grouped, e.g. by ``krpo.variant``) and a later step as a line chart: a final accuracy is a
value per run, not a curve."""


def log_final_metrics(tracker: RunTracker | NullTracker, metrics: Mapping[str, float]) -> None:
    """Log a trial's final metrics at :data:`FINAL_STEP`, so MLflow's own views compare them per run
    and per variant (bar charts, the grouped runs table)."""
    tracker.log_metrics(metrics, step=FINAL_STEP)


_TRANSIENT_REQUEST_ERRORS = (
    requests.exceptions.ConnectionError,  # refused, reset, DNS; also urllib3 protocol errors
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,  # HTTP 408/429/5xx (MLflow's retry codes) with retries spent
    requests.exceptions.ChunkedEncodingError,
)


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server stayed unreachable past the retry deadline."""


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


_SAFE_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def artifact_folder(experiment: str) -> str:
    """The folder (one path component) of an experiment's local artifacts: the name itself when it
    is a plain identifier (``krpo-study-<uuid>``), else a hash of it. A name is never a path."""
    if _SAFE_FOLDER.match(experiment) and ".." not in experiment:
        return experiment
    return "experiment-" + hashlib.sha256(experiment.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``; local stores keep artifacts under the data home, in a folder
    named by :func:`artifact_folder`."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:") or "://" not in tracking_uri:
        location = f"{default_artifact_root()}/{artifact_folder(name)}"
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: "custom_model_development"}
        )
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an error it wraps) means the tracking store could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_REQUEST_ERRORS):
            return True
        if isinstance(current, MlflowException) and current.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        current = current.__cause__ or current.__context__
    return False


class _OneHttpTry:
    """MLflow's HTTP client without its own retries (ours take over) and with a bounded timeout.

    MLflow reads these settings from the process environment on every request, and trackers run in
    several threads at once (the API's outbox, a worker's pools). So the variables are set while any
    thread is inside the block: the first thread to enter saves and sets them, the last to leave
    restores them, both under one lock; no thread's request runs with another's restored values."""

    MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved: dict[str, str | None] = {}

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._saved = {key: os.environ.get(key) for key in (self.MAX_RETRIES, self.TIMEOUT)}
                os.environ[self.MAX_RETRIES] = "0"
                timeout = self._saved[self.TIMEOUT]
                if not timeout or not timeout.isdigit() or int(timeout) > REQUEST_TIMEOUT_S:
                    os.environ[self.TIMEOUT] = str(REQUEST_TIMEOUT_S)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    for key, value in self._saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value


_one_http_try = _OneHttpTry()


class RunTracker:
    """One MLflow run, created fresh or continued by id (see the module docstring on outages)."""

    def __init__(self, tracking_uri: str | None = None, *, retry_s: float | None = None) -> None:
        self.tracking_uri = tracking_uri or default_mlflow_uri()
        self.client = MlflowClient(self.tracking_uri)
        self.run_id: str | None = None
        self.retry_s = get_settings().mlflow_retry_s if retry_s is None else retry_s
        self._metrics: list[Metric] = []
        self._params: dict[str, str] = {}
        self._logged_params: dict[str, str] = {}
        self._logged_steps: set[tuple[str, int]] = set()  # (key, step) already in a continued run
        self._down_since: float | None = None  # monotonic start of the current outage
        self._next_try = 0.0
        self._failures = 0
        self._last_error: BaseException | None = None
        self._gave_up = False
        self._spool_loaded = False

    # -- public API -------------------------------------------------------------------------

    def start(
        self,
        experiment: str,
        run_name: str,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Continue ``run_id`` when given, else create a run (child of ``parent_run_id``)."""
        if run_id:
            running = RunStatus.to_string(RunStatus.RUNNING)
            self._call(lambda: self.client.update_run(run_id, status=running), "continue the run")
            run = self._call(lambda: self.client.get_run(run_id), "read the run")
            self.run_id = run_id
            self._logged_params = dict(run.data.params)
            self._logged_steps = {
                (key, m.step)
                for key in run.data.metrics
                for m in self._call(lambda key=key: self.client.get_metric_history(run_id, key), f"read {key}")
            }
            self._load_spool()
            return run_id
        all_tags = {MLFLOW_RUN_NAME: run_name, **(tags or {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id

        def create() -> str:
            experiment_id = get_or_create_experiment(self.client, experiment, self.tracking_uri)
            return self.client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id

        self.run_id = self._call(create, "create the run")
        self._logged_params = {}
        self._logged_steps = set()
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params not logged yet (a continued run keeps its original values)."""
        new = {k: str(v) for k, v in params.items() if k not in self._logged_params}
        self._logged_params.update(new)
        self._params.update(new)
        self._send()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log step metrics; a (key, step) the run already holds is not logged again (an attempt
        that resumes from a checkpoint re-runs the steps its crashed predecessor logged after it)."""
        stamp = int(time.time() * 1000)
        new = [(k, v) for k, v in metrics.items() if (k, step) not in self._logged_steps]
        self._logged_steps.update((k, step) for k, _ in new)
        self._metrics.extend(Metric(k, float(v), stamp, step) for k, v in new)
        self._send()

    def log_dict(self, obj: Any, path: str) -> None:
        self._flush_blocking()
        self._call(lambda: self.client.log_dict(self.run_id, obj, path), f"upload {path}")

    def finish(self, status: str = "FINISHED") -> None:
        """Flush buffered writes and end the run with ``status``. After the tracker already gave
        up (the attempt is failing anyway), a failed run is ended best-effort without waiting."""
        if self._gave_up and status != "FINISHED":
            try:
                with _one_http_try():
                    self._flush_once()
                    self.client.set_terminated(self.run_id, status=status)
            except Exception as err:  # never mask the error that is failing the attempt
                if is_unreachable(err):
                    self._spool()
                log.warning("could not end MLflow run %s as %s: %s", self.run_id, status, _short(err))
            return
        self._flush_blocking()
        self._call(lambda: self.client.set_terminated(self.run_id, status=status), "end the run")

    @property
    def pending(self) -> int:
        """Writes buffered and not yet acknowledged by the server."""
        return len(self._metrics) + len(self._params)

    # -- buffering and retries --------------------------------------------------------------

    def _flush_once(self) -> None:
        """Send all pending writes, one batch at a time; what was sent leaves the buffer."""
        while self.pending:
            metrics = self._metrics[:MAX_BATCH]
            params = list(self._params.items())[: min(MAX_PARAMS, MAX_BATCH - len(metrics))]
            self.client.log_batch(self.run_id, metrics=metrics, params=[Param(k, v) for k, v in params])
            del self._metrics[: len(metrics)]
            for key, _ in params:
                del self._params[key]
        if self._spool_loaded:
            path = self._spool_path()
            if path is not None:
                path.unlink(missing_ok=True)
            self._spool_loaded = False

    def _send(self) -> None:
        """Try to send pending writes unless backing off; raise once past the deadline."""
        if not self.pending:
            return
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try and now < self._deadline():
            return
        try:
            with _one_http_try():
                self._flush_once()
        except Exception as err:
            if not is_unreachable(err):
                raise
            self._failed(err)
            if time.monotonic() >= self._deadline():
                raise self._give_up("send buffered metrics") from err
            return
        self._recovered()

    def _flush_blocking(self) -> None:
        if self.pending:
            self._call(self._flush_once, "send buffered metrics")

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried with backoff while the server is unreachable, up to the deadline."""
        while True:
            try:
                with _one_http_try():
                    result = fn()
            except Exception as err:
                if not is_unreachable(err):
                    raise
                self._failed(err)
                now = time.monotonic()
                if now >= self._deadline():
                    raise self._give_up(what) from err
                time.sleep(max(0.0, min(self._next_try, self._deadline()) - now))
                continue
            self._recovered()
            return result

    def _deadline(self) -> float:
        return float("inf") if self._down_since is None else self._down_since + self.retry_s

    def _failed(self, err: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._failures = 0
            log.warning(
                "MLflow tracking store %s unreachable (%s); buffering writes and retrying for up to %.0f s",
                self.tracking_uri,
                _short(err),
                self.retry_s,
            )
        self._failures += 1
        self._last_error = err
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1))
        self._next_try = now + backoff * random.uniform(0.75, 1.0)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "MLflow tracking store %s reachable again after %.1f s",
                self.tracking_uri,
                time.monotonic() - self._down_since,
            )
        self._down_since = None
        self._failures = 0
        self._last_error = None

    def _give_up(self, what: str) -> TrackingUnavailableError:
        self._gave_up = True
        spool = self._spool()
        down = time.monotonic() - (self._down_since or time.monotonic())
        kept = f"; {spool[1]} unsent writes kept in {spool[0]} (replayed when the run is continued)" if spool else ""
        run = f" of run {self.run_id}" if self.run_id else ""
        return TrackingUnavailableError(
            f"MLflow tracking server {self.tracking_uri} unreachable for {down:.0f} s "
            f"(deadline {self.retry_s:g} s, set by {RETRY_ENV}); could not {what}{run}{kept}; "
            f"last error: {_short(self._last_error)}"
        )

    # -- spooling across attempts -----------------------------------------------------------

    def _spool_path(self) -> Path | None:
        return data_home() / SPOOL_DIR / f"{self.run_id}.jsonl" if self.run_id else None

    def _spool(self) -> tuple[Path, int] | None:
        """Write every pending write to the run's spool file (best effort) and clear the buffer.
        The file is replaced, not appended to: the buffer already holds what was loaded from it."""
        path = self._spool_path()
        if path is None or not self.pending:
            return None
        records = [{"metric": [m.key, m.value, m.timestamp, m.step]} for m in self._metrics]
        records += [{"param": [k, v]} for k, v in self._params.items()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(partial, path)
        except OSError as err:
            log.warning("could not spool %d MLflow writes to %s: %s", len(records), path, err)
            return None
        self._metrics.clear()
        self._params.clear()
        self._spool_loaded = False
        return path, len(records)

    def _load_spool(self) -> None:
        """Queue the writes a previous attempt spooled for this run (sent with the next write)."""
        path = self._spool_path()
        if path is None or not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if "metric" in record:
                key, value, stamp, step = record["metric"]
                if (key, int(step)) not in self._logged_steps:
                    self._logged_steps.add((key, int(step)))
                    self._metrics.append(Metric(key, float(value), int(stamp), int(step)))
            elif "param" in record:
                key, value = record["param"]
                if key not in self._logged_params:
                    self._logged_params[key] = self._params[key] = value
        self._spool_loaded = True  # the file goes once these writes reached the server


def _short(err: BaseException | None, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}" if err is not None else "unknown"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NullTracker:
    """A tracker for the non-main processes of a multi-process trial: writes nothing anywhere."""

    run_id: str | None = None
    pending = 0

    def start(self, experiment: str, run_name: str, **kwargs: Any) -> str:
        return ""

    def log_params(self, params: Mapping[str, str]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_dict(self, obj: Any, path: str) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


"""A trial's per-test-item outcomes, one entry per evaluation ("final", "initial")."""


def log_item_outcomes(tracker: RunTracker | NullTracker, evaluations: Mapping[str, Mapping[str, Any]]) -> None:
    """Upload the per-item records of a trial's evaluations (``EvalResult.item_record()``, keyed
    by evaluation) to ``eval/item_outcomes.json``."""
    tracker.log_dict(dict(evaluations), krpo_tags.ITEM_OUTCOMES_ARTIFACT)
