"""The MLflow UI, end to end: a real `mlflow server` on 127.0.0.1 and headless Chromium reading its pages.

The UI keeps its table columns in the browser. `python src/compare.py` saves a view for the sweep as the
experiment tag `mlflow.sharedViewState.<key>`; the page `...#/experiments/<id>/runs?viewStateShareKey=<key>`
opens it. These tests check that the pinned MLflow really shows the jobs and the contract's metric columns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import free_ports
from loaderlab.report import Report, make_report, ui_url
from test_report import LOADERS, add_sweep, finished

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(  # never skipped in CI, which installs it (.ci/run)
        CHROMIUM is None and not os.environ.get("CI"),
        reason="needs headless Chromium: apt-get update && apt-get install -y chromium",
    ),
]
SWEEP_ID = "2026-02-03_04-05-06"
PEAKS = {"inmemory": 1234.5, "generator": 812.25, "sequence": 845.75, "tfdata": 830.5}


class Cells(HTMLParser):
    """The text of every element carrying a col-id (table headers and cells), and all text of the page."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []  # (role, col-id, text)
        self.text: list[str] = []
        self._open: list[list] = []  # [role, col-id, depth, text parts]
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        self._depth += 1
        found = dict(attrs)
        if found.get("col-id") and found.get("role") in ("columnheader", "gridcell"):
            self._open.append([found["role"], found["col-id"], self._depth, []])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if self._open and self._open[-1][2] == self._depth:
            role, col_id, _, parts = self._open.pop()
            self.cells.append((role, col_id, " ".join("".join(parts).split())))
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for cell in self._open:
            cell[3].append(data)


def dump_dom(url: str, profile: Path, until: str, timeout_s: float = 120) -> Cells:
    """Chromium's DOM of the page after its scripts ran; retried with more time until `until` shows."""
    dom = ""
    for budget_ms in (15_000, 40_000, 90_000):
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={profile}", "--window-size=1800,1000",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", url,
        ]  # fmt: skip
        dom = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s).stdout
        if until in dom:
            break
    parsed = Cells()
    parsed.feed(dom)
    parsed.dom = dom
    return parsed


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Report]:
    """A store with one four-loader sweep, compared once (which saves its UI view)."""
    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("loaderlab", artifact_location=(root / "artifacts").as_uri())
    jobs = [finished(name, PEAKS[name], 400.0 + 100 * i) for i, name in enumerate(LOADERS)]
    add_sweep(client, "loaderlab", SWEEP_ID, jobs)
    return uri, make_report(uri, "loaderlab", out=root / "reports")


@pytest.fixture(scope="module")
def mlflow_server(sweep_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1, stopped (with its workers) after the module's tests."""
    uri, _ = sweep_store
    workdir = tmp_path_factory.mktemp("ui-server")
    [port] = free_ports(1)
    log = (workdir / "server.log").open("w")
    quiet = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env = {**os.environ, **quiet}  # no telemetry, and no background job workers (GenAI jobs) to start
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", uri, "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {server.returncode}:\n{(workdir / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 90 s:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and all it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # whatever did not stop (e.g. orphaned workers)
        server.wait(timeout=15)
        log.close()


def test_saved_view_shows_the_jobs_and_their_metric_columns(sweep_store, mlflow_server, tmp_path) -> None:
    uri, report = sweep_store
    url = ui_url(mlflow_server, report.sweep.experiment_id, report.ui_view)
    page = dump_dom(url, tmp_path / "profile", until="tfdata-small_cnn")
    text = " ".join(" ".join(page.text).split())
    for name in LOADERS:
        assert f"{name}-small_cnn" in text, f"child run {name}-small_cnn missing from {url}"
    assert f"sweep {SWEEP_ID}" in text  # the parent, in the same group
    headers = {col_id for role, col_id, _ in page.cells if role == "columnheader"}
    assert {"metrics.`peak_rss_mb`", "metrics.`images_per_sec`", "tags.`loader`"} <= headers
    peaks = {cell for role, col_id, cell in page.cells if col_id == "metrics.`peak_rss_mb`"}
    assert {"1234.5", "812.25", "845.75", "830.5"} <= peaks
    loaders = [cell for role, col_id, cell in page.cells if role == "gridcell" and col_id == "tags.`loader`"]
    assert set(LOADERS) <= set(loaders)


def test_saved_view_has_the_comparison_charts(sweep_store, mlflow_server, tmp_path) -> None:
    uri, report = sweep_store
    url = ui_url(mlflow_server, report.sweep.experiment_id, report.ui_view, charts=True)
    page = dump_dom(url, tmp_path / "profile", until="what each loader costs")
    text = " ".join(" ".join(page.text).split())
    # The section of the view's own charts, with its five cards: four bars and val_loss per epoch.
    assert "loaderlab: what each loader costs (5)" in text
