"""The server's pages for people in a browser: the home page (the studies, with links to each
dashboard, the MLflow UI, the Optuna dashboard and the API docs) and the API docs (Swagger UI) with
its script and styles served from the installed ``fastapi-offline`` package, never a CDN. ReDoc is
not offered: its page loads its logo from its CDN whatever it is given."""

from __future__ import annotations

import html
from importlib.util import find_spec
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from krpo_bench.api.auth import require
from krpo_bench.api.routers import AUTH_ERRORS
from krpo_bench.api.routers.studies import Service

from krpo_bench.service.kinds import handler
from krpo_bench.service.studies import StudyInfo, StudyService
from krpo_bench.service.study_state import START_A_WORKER, WAITING_FOR_WORKER, display_state, live_workers_of

DOCS_ASSETS_URL = "/docs-assets"
DOCS_PACKAGE = "fastapi_offline"
"""The package whose ``static`` folder holds Swagger UI 5 (``swagger-ui-bundle.js``, ``swagger-ui.css``)
and a favicon (the ``api`` extra installs it)."""
HOME_STUDIES = 50
"""Studies the home page lists (newest first); the API pages through all of them."""
MLFLOW_RUNS_VIEW = "runs?workflowType=machine_learning"
"""Where an experiment link opens in the MLflow 3 UI: its training runs (the UI's default workflow
is GenAI, whose overview shows no runs)."""

router = APIRouter(tags=["pages"])


def docs_assets_folder() -> Path | None:
    """The folder of the docs page's script and styles; None when their package is not installed."""
    spec = find_spec(DOCS_PACKAGE)
    return Path(spec.origin).parent / "static" if spec is not None and spec.origin else None


def docs_assets() -> StaticFiles:
    """The docs page's script and styles, to mount at ``DOCS_ASSETS_URL`` (nothing without their package)."""
    folder = docs_assets_folder()
    return StaticFiles(directory=str(folder) if folder else None, check_dir=False)


def mlflow_runs_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's training runs."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/{MLFLOW_RUNS_VIEW}"


def _verdict(service: StudyService, info: StudyInfo) -> str:
    """The comparisons' sentences of a finished ablation, else empty."""
    if not handler(info.kind).analysed or info.done == 0:
        return ""
    return " ".join(c.sentence for c in service.results(info.id).comparisons)


def _row(service: StudyService, info: StudyInfo, workers: int, mlflow_ui: str | None) -> str:
    e = html.escape
    links = [f'<a href="/studies/{e(info.id)}/dashboard">dashboard</a>']
    if mlflow_ui and info.mlflow_experiment_id:
        links.append(f'<a href="{e(mlflow_runs_url(mlflow_ui, info.mlflow_experiment_id))}">MLflow runs</a>')
    if handler(info.kind).scheduled:
        links.append('<a href="/optuna/">Optuna</a>')
    state = display_state(info.status, info.counts, workers)
    return (
        f'<tr><td class="name">{e(info.name)}<br><code>{e(info.id)}</code></td><td>{e(info.kind)}</td>'
        f'<td class="state">{e(state)}</td><td>{info.done}/{info.total}</td>'
        f'<td class="verdict">{e(_verdict(service, info))}</td><td>{" · ".join(links)}</td></tr>'
    )


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}
td.verdict{max-width:40em}code{font-size:.8em;color:#555}nav a{margin-right:1.2em}.hint{background:#fff4d6;padding:.5em}"""


def home_html(service: StudyService, mlflow_ui: str | None) -> str:
    """The home page: navigation, and the newest studies with state, progress, verdict and links."""
    workers = live_workers_of(service)
    studies = service.list(limit=HOME_STUDIES)
    rows = "".join(_row(service, info, workers, mlflow_ui) for info in studies)
    waiting = any(display_state(i.status, i.counts, workers) == WAITING_FOR_WORKER for i in studies)
    hint = f'<p class="hint">{html.escape(START_A_WORKER)}</p>' if waiting else ""
    mlflow = f'<a href="{html.escape(mlflow_ui)}">MLflow UI</a>' if mlflow_ui else ""
    body = (
        f'<table id="studies"><thead><tr><th>study</th><th>kind</th><th>state</th><th>progress</th><th>verdict</th>'
        f"<th>links</th></tr></thead><tbody>{rows}</tbody></table>"
        if studies
        else "<p>No studies yet: <code>krpo-bench submit STUDY.yaml</code> or <code>POST /api/v1/studies</code>.</p>"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>krpo-bench</title><style>{STYLE}</style>'
        f'</head><body><h1>krpo-bench</h1><nav><a href="/docs">API docs (Swagger UI)</a>'
        f'<a href="/optuna/">Optuna dashboard</a>{mlflow}<a href="/api/v1/studies">studies (JSON)</a></nav>'
        f"<h2>Studies</h2>{hint}{body}</body></html>"
    )


@router.get(
    "/",
    response_class=HTMLResponse,
    include_in_schema=False,
    dependencies=[Depends(require("read"))],
    responses=AUTH_ERRORS,
)
def home(request: Request, service: Service) -> HTMLResponse:
    # a plain `def`: FastAPI runs it in its thread pool (database reads)
    return HTMLResponse(home_html(service, request.app.state.settings.mlflow_ui_url))


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    if docs_assets_folder() is None:
        raise HTTPException(
            503,
            f'the API docs need the {DOCS_PACKAGE.replace("_", "-")} package: pip install -e ".[api]"; '
            "the schema is at /openapi.json",
        )
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
        swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
    )


@router.get("/docs/oauth2-redirect", response_class=HTMLResponse, include_in_schema=False)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()
