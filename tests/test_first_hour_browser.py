"""A new user's first hour in a real browser (issue 25): the server's home page lists a finished study
with its state, progress, verdict and links; its MLflow link opens a real ``mlflow ui`` on the
study's training runs (not the GenAI overview), where grouping by ``krpo.variant`` draws
``final/accuracy`` as one bar per variant; ``/docs`` renders with nothing fetched from outside the
servers.

The study is stored by the product's own code without training (its trials' runs are written with
``krpo_bench.tracking``, as a worker writes them, with the quickstart's final accuracies), so the
test spends its time in the servers and the browser. Screenshots go to ``/tmp/screens/``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from krpo_bench.service.studies import StudyService
from krpo_bench.tracking import RunTracker, log_final_metrics
from tests.api.test_api_server import free_port
from tests.api.test_api_server import start as start_server
from tests.api.test_api_server import stop as stop_server
from tests.dashboards.test_dashboard_browser import launch_chromium
from tests.trial_specs import TINY_TASK

SCREENS = Path("/tmp/screens")
FINAL = {"grpo": (0.760, 0.775, 0.785), "krpo": (0.760, 0.775, 0.760)}
"""The quickstart's final accuracies per seed (README)."""
NAME = "first-hour"


def quickstart_like() -> dict:
    base = {"model": {"name": "tiny-arith"}, "task": dict(TINY_TASK), "training": {"max_steps": 150, "eval_every": 50}}
    return {
        "name": NAME,
        "kind": "ablation",
        "seeds": 3,
        "base": base,
        "variants": {
            "grpo": {"estimator": {"name": "grpo"}},
            "krpo": {"estimator": {"name": "krpo", "Q": 1e-5, "R": 1e-2}},
        },
    }


def finish_without_training(service: StudyService, study_id: str) -> None:
    """Run every job of the study as a worker would record it, without training: its MLflow run
    (tags from the job, an eval curve, the final metrics) and its result."""
    while (job := service.queue.claim("first-hour-worker", 60)) is not None:
        variant, seed = job.config["variant"], job.config["seed"]
        final = FINAL[variant][seed]
        tracker = RunTracker(service.mlflow_uri)
        tracker.start(job.config["trial"]["experiment"], f"{variant} seed={seed}", tags=job.config["tags"])
        for step in (0, 50, 100, 150):
            tracker.log_metrics({"eval/accuracy": 0.48 + (final - 0.48) * step / 150}, step=step)
        log_final_metrics(tracker, {"final/accuracy": final, "final/initial_accuracy": 0.48})
        tracker.finish()
        assert service.queue.complete(job.id, job.attempt, {"final_accuracy": final, "initial_accuracy": 0.48})
        service.job_finished(job.id)


def start_mlflow_ui(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]  # one process: 4 by default
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail(f"mlflow ui did not start:\n{proc.communicate()[0]}")


@pytest.fixture()
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(krpo-bench server URL, mlflow ui URL, study id) over a finished study's stores."""
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    study_id = service.submit(quickstart_like()).id
    service.ensure_mlflow(study_id)  # creates the MLflow store, which the UI then opens while the runs are written
    mlflow_proc, mlflow_url = start_mlflow_ui(tmp_path)
    finish_without_training(service, study_id)
    assert service.get(study_id).status == "succeeded"
    service.engine.dispose()
    monkeypatch.setenv("KRPO_BENCH_MLFLOW_UI_URL", mlflow_url)
    server, url = start_server(tmp_path)
    try:
        wait_ready(mlflow_proc, mlflow_url)
        yield url, mlflow_url, study_id
    finally:
        output = stop_server(server)
        os.killpg(mlflow_proc.pid, signal.SIGTERM)  # mlflow ui and the uvicorn server it started
        mlflow_proc.communicate(timeout=30)
    assert "Traceback" not in output, output


def test_home_page_mlflow_runs_and_offline_docs_in_a_browser(servers: tuple[str, str, str]) -> None:
    from playwright.sync_api import sync_playwright

    url, mlflow_url, study_id = servers
    SCREENS.mkdir(exist_ok=True)
    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route(
                re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
                lambda route: (outside.append(route.request.url), route.abort()),
            )

            page.goto(url + "/", wait_until="load")
            row = page.locator("#studies tbody tr", has_text=study_id)
            assert row.locator("td.state").inner_text() == "succeeded"
            assert "6/6" in row.inner_text()
            verdict = row.locator("td.verdict").inner_text()
            assert "between krpo and grpo" in verdict and "-0.8 points" in verdict, (
                verdict
            )  # the quickstart's difference
            assert row.get_by_role("link", name="dashboard").get_attribute("href") == f"/studies/{study_id}/dashboard"
            nav = [a.inner_text() for a in page.locator("nav a").all()]
            assert {"API docs (Swagger UI)", "Optuna dashboard", "MLflow UI"} <= set(nav), nav
            page.screenshot(path=str(SCREENS / "home.png"), full_page=True)

            row.get_by_role("link", name="MLflow runs").click()
            page.get_by_text("grpo seed=0").first.wait_for(timeout=90_000)  # the runs table, not the GenAI overview
            assert page.get_by_text(f"{NAME} ({study_id[:13]})").count() >= 1, "the experiment is named by the study"
            page.screenshot(path=str(SCREENS / "mlflow_runs.png"))

            assistant = page.get_by_role("button", name="Close")  # MLflow's assistant panel, if it opened
            if assistant.count():
                assistant.first.click()
            page.get_by_role("button", name="Group by").click()
            page.get_by_text("krpo.variant", exact=True).click()
            page.keyboard.press("Escape")
            page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
            chart = page.locator("[data-testid=experiment-view-compare-runs-card]", has_text="final/accuracy").first
            bars = chart.locator("g.barlayer g.point path")
            bars.nth(1).wait_for(timeout=60_000)
            chart.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENS / "mlflow_final_accuracy.png"))
            assert bars.count() == 2, "one bar per variant: the mean of its seeds"
            legend = chart.inner_text()
            assert "grpo" in legend and "krpo" in legend, legend

            page.goto(url + "/docs", wait_until="load")
            page.locator(".opblock-summary-path", has_text="/api/v1/studies").first.wait_for(timeout=60_000)
            page.screenshot(path=str(SCREENS / "docs.png"))
        finally:
            browser.close()
    assert not outside, f"requests outside the servers: {outside}"
