"""The study dashboard in a real browser: a real tiny study (GRPO vs KRPO, 2 seeds) trained by real
worker processes, served by a real ``krpo-bench serve`` process, opened in headless Chromium.

Chromium is Debian's (``/usr/bin/chromium``; ``.ci/run`` installs it), driven by playwright without
its downloaded browsers. A browser that cannot start fails this test: it is never skipped."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from krpo_bench.service.studies import StudyService
from tests.api.test_api_server import start as start_server
from tests.api.test_api_server import stop as stop_server
from tests.service.test_workers import start_worker, wait_for
from tests.service.test_workers import stop as stop_worker
from tests.trial_specs import TINY_TASK, tiny_trial

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAVICON = "/favicon.ico"
"""Chromium asks every site for its icon; the page itself loads nothing (plotly.js is inlined)."""
VARIANTS = ("grpo", "krpo")
SEEDS = 2
STEPS = 4
EVAL_EVERY = 2


def tiny_study() -> dict:
    base = {k: v for k, v in tiny_trial(steps=STEPS, eval_every=EVAL_EVERY).items() if k != "name"}
    base["task"] = {**TINY_TASK, "train_size": 128, "test_size": 24}
    return {
        "name": "dashboard-browser",
        "kind": "ablation",
        "base": base,
        "variants": {v: {"estimator": {"name": v}} for v in VARIANTS},
        "seeds": SEEDS,
    }


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyService, str, Path]:
    """A real study run to success by two real CPU workers; its stores lie in the returned folder."""
    home = tmp_path_factory.mktemp("dashboard")
    service = StudyService(f"sqlite:///{home / 'jobs.db'}", f"sqlite:///{home / 'mlflow.db'}")
    info = service.submit(tiny_study())
    workers = [start_worker(service) for _ in range(2)]
    try:
        wait_for(
            lambda: service.get(info.id).status in ("succeeded", "failed", "cancelled"), 240, "the study to finish"
        )
    finally:
        for worker in workers:
            stop_worker(worker)
    done = service.get(info.id)
    assert done.status == "succeeded", (done.status, done.counts, [j.last_error for j in service.jobs(info.id)])
    return service, info.id, home


@pytest.fixture(scope="module")
def server(finished_study: tuple[StudyService, str, Path]) -> Iterator[str]:
    """``krpo-bench serve`` on loopback over the study's job database and MLflow store."""
    _, _, home = finished_study
    proc, url = start_server(home)
    yield url
    output = stop_server(proc)
    assert "Traceback" not in output, output


def launch_chromium(playwright):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)", pytrace=False)
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
    except Exception as exc:  # noqa: BLE001 - any launch failure is this test's failure, with the reason
        version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
        pytest.fail(
            f"headless Chromium ({CHROMIUM}, {version or 'version unknown'}) did not start: {exc}", pytrace=False
        )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_dashboard_of_a_finished_study_renders_in_a_browser(
    finished_study: tuple[StudyService, str, Path], server: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    _, study_id, _ = finished_study
    url = f"{server}/studies/{study_id}/dashboard"
    head = httpx.get(url, timeout=120)
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html"), head.text[:500]
    assert 'http-equiv="refresh"' not in head.text, "a finished study's page must not reload itself"
    assert httpx.get(f"{server}/studies/no-such-study/dashboard").status_code == 404

    console: list[tuple[str, str, str]] = []
    page_errors: list[str] = []
    bad_responses: list[str] = []
    shot = tmp_path / "dashboard.png"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: console.append((msg.type, msg.text, msg.location.get("url") or "")))
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            page.on("response", lambda r: r.status >= 400 and bad_responses.append(f"{r.status} {r.url}"))
            page.on("requestfailed", lambda r: bad_responses.append(f"{r.failure} {r.url}"))
            started = time.monotonic()
            response = page.goto(url, wait_until="load", timeout=120_000)
            assert response is not None and response.status == 200
            page.wait_for_selector("#curves .js-plotly-plot .main-svg", timeout=60_000)
            loaded = time.monotonic() - started

            curves = page.locator("#curves .js-plotly-plot")
            titles = [t.strip() for t in page.locator("#curves .js-plotly-plot .gtitle").all_text_contents()]
            assert curves.count() >= 2, titles
            assert "eval/accuracy" in titles and "train/reward" in titles, titles
            # each curve plot draws one legend entry per variant
            legend = page.locator("#curves .js-plotly-plot").first.locator(".legend .legendtext").all_text_contents()
            assert sorted(legend) == sorted(VARIANTS), legend
            assert page.locator("#final .js-plotly-plot").count() == 1

            table = page.locator("#final table").first
            headers = [h.strip() for h in table.locator("thead th").all_text_contents()]
            assert headers[:2] == ["variant", "seeds"], headers
            rows = {
                cells[0].strip(): [c.strip() for c in cells[1:]]
                for cells in (row.locator("td").all_text_contents() for row in table.locator("tbody tr").all())
            }
            assert set(rows) == set(VARIANTS), rows
            assert all(cells[0] == str(SEEDS) for cells in rows.values()), rows
            assert rows["grpo"][-1] == "reference" and "krpo" in rows["krpo"][-1], rows
            assert "paired by seed" in rows["krpo"] and "these seeds detect differences above" in rows["krpo"][-1], rows
            assert rows["krpo"][headers.index("verdict") - 1] in ("better", "worse", "equivalent", "undecided"), rows

            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    errors = [f"{text} ({where})" for kind, text, where in console if kind == "error" and not where.endswith(FAVICON)]
    assert not errors, f"console errors: {errors}"
    assert not page_errors, f"page errors: {page_errors}"
    assert not [r for r in bad_responses if not r.endswith(FAVICON)], bad_responses
    width, height = png_size(shot)
    assert width >= 1280 and height > 2000, (width, height)
    assert shot.stat().st_size > 50_000, f"screenshot only {shot.stat().st_size} bytes"
    assert loaded < 60, f"the page took {loaded:.1f} s to draw its plots"
