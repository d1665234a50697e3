"""A small typed client of the krpo-bench REST API (``krpo-bench serve``).

client = Client("http://127.0.0.1:8000", token="kb_...")   # defaults: the api_url and api_token settings
study = client.submit(spec_dict_or_yaml_text, idempotency_key="my-run-1")
client.get_study(study["id"])["counts"]
"""

from __future__ import annotations

from typing import Any

import httpx

from krpo_bench.settings import get_settings

JSON = dict[str, Any]


class ApiError(RuntimeError):
    """An error answer of the API: HTTP status, error code, message and the per-field errors."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"error": "http_error", "message": str(body)}
        self.code: str = self.body.get("error", "http_error")
        self.errors: list[JSON] = self.body.get("errors") or []
        lines = [f"{e.get('path') or '<root>'}: {e.get('message')} (got {e.get('value')!r})" for e in self.errors]
        super().__init__("\n  ".join([f"HTTP {status} {self.code}: {self.body.get('message', '')}", *lines]))


class Client:
    """Calls of the API's v1 routes; every method returns the decoded JSON answer or raises ApiError."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``base_url`` and ``token`` default to the ``api_url`` and ``api_token`` settings
        (``KRPO_BENCH_API``, ``KRPO_BENCH_API_TOKEN`` or the ``KRPO_BENCH_CONFIG`` file)."""
        settings = get_settings()
        base_url = base_url or settings.api_url
        if http is None and not base_url:
            raise ValueError("no API URL: pass base_url or set api_url (KRPO_BENCH_API or the KRPO_BENCH_CONFIG file)")
        token = token or settings.api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.http.headers.update(headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = self.http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return body

    def submit(self, spec: JSON | str, *, idempotency_key: str | None = None) -> JSON:
        """Submit a study spec (a mapping, or YAML text); the study as stored."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(spec, str):
            return self._call(
                "POST",
                "/api/v1/studies",
                content=spec.encode(),
                headers={**headers, "Content-Type": "application/yaml"},
            )
        return self._call("POST", "/api/v1/studies", json=spec, headers=headers)

    def list_studies(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> JSON:
        """One page: ``{"items", "limit", "offset", "next_offset"}``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._call("GET", "/api/v1/studies", params=params)

    def get_study(self, study_id: str) -> JSON:
        return self._call("GET", f"/api/v1/studies/{study_id}")

    def jobs(self, study_id: str, *, status: str | None = None, limit: int = 100, offset: int = 0) -> JSON:
        params: dict[str, Any] = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._call("GET", f"/api/v1/studies/{study_id}/jobs", params=params)

    def job(self, job_id: str) -> JSON:
        return self._call("GET", f"/api/v1/jobs/{job_id}")

    def results(self, study_id: str) -> JSON:
        return self._call("GET", f"/api/v1/studies/{study_id}/results")

    def cancel(self, study_id: str) -> JSON:
        return self._call("POST", f"/api/v1/studies/{study_id}/cancel")

    def resume(self, study_id: str) -> JSON:
        return self._call("POST", f"/api/v1/studies/{study_id}/resume")

    def extend(self, study_id: str, n_trials: int) -> JSON:
        return self._call("POST", f"/api/v1/studies/{study_id}/extend", json={"n_trials": n_trials})

    def workers(self) -> JSON:
        return self._call("GET", "/api/v1/workers")

    def ready(self) -> JSON:
        return self._call("GET", "/readyz")
