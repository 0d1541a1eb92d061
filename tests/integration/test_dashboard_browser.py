"""The dashboard in a real browser: waitress on loopback, Debian's chromium via Playwright.

Fails (never skips) when chromium or playwright is missing, because CI installs both:
`apt-get install chromium` and the `test` extra. Set FEDGE_UPDATE_SCREENSHOT=1 to
rewrite docs/dashboard.png from this run.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aggregator.lifecycle import Command
from aggregator.store import Store
from aggregator.web import DashboardServer, create_app, serve_dashboard
from fedge.broker import free_port
from tests.unit.test_web_api import DEVICES, READ, STAGES, fill_store, local_accuracy

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-quic"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
DEMO_DEVICES = ("device-0", "device-1", "device-2")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DashboardServer]:
    filled = fill_store(tmp_path / "agg.sqlite3")
    running = serve_dashboard(create_app(filled.path, READ, "admin-x"), "127.0.0.1", 0)
    yield running
    running.stop()


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright; no browser download."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright (the Python package) is missing: pip install -e '.[test]'; "
                    "do not run `playwright install`, this test uses Debian's chromium")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _watch(page, base: str) -> list[str]:
    """Collect console and page errors, failed responses, requests off the gateway."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
    host = urlsplit(base).netloc
    page.on("request", lambda r: urlsplit(r.url).netloc != host
            and problems.append(f"request off the gateway: {r.url}"))
    return problems


def _assert_charts(page) -> None:
    for chart in ("accuracy", "loss"):
        for series in (chart, "device"):  # the test set's line, the devices' own data's
            d = page.get_attribute(f"#chart-{chart} path.series.{series}", "d")
            assert d and d.startswith("M") and d.count("L") == 9, (chart, series, d)
            assert page.locator(f"#chart-{chart} circle.dot.{series}").count() == 10
        legend = page.locator(f"#chart-{chart} text.legend").all_text_contents()
        assert legend == ["test set", "on devices' data"], (chart, legend)
        # the devices' line is drawn one version earlier: v0 .. v9 against v1 .. v10
        first = page.locator(f"#chart-{chart} circle.dot.device title").first.text_content()
        assert first.startswith("v0 on devices' data"), first
    for chart in ("bytes", "updates"):
        bars = page.locator(f"#chart-{chart} rect.bar")
        assert bars.count() == 10
        heights = [float(bars.nth(i).get_attribute("height")) for i in range(10)]
        assert all(h > 0 for h in heights), (chart, heights)
    for chart in ("accuracy", "loss", "bytes", "updates"):
        box = page.locator(f"#chart-{chart}").bounding_box()
        assert box and box["width"] > 200 and box["height"] > 80, (chart, box)


def _column(page, header: str) -> list[str]:
    """The device table's cells under a header, top to bottom."""
    headers = page.locator("#devices thead th").all_text_contents()
    index = headers.index(header) + 1
    return page.locator(f"#devices tbody tr td:nth-child({index})").all_text_contents()


def test_dashboard_with_token_in_the_url(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = _watch(page, server.url)
    page.goto(f"{server.url}?token={READ}")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    assert "token" not in page.url  # moved to sessionStorage, out of the address bar
    assert page.text_content("#ov-version") == "v10"
    assert page.text_content("#ov-accuracy") == "0.955"
    assert page.text_content("#ov-devices") == "4 / 5"
    _assert_charts(page)
    ids = page.locator("#devices tbody tr td.id").all_text_contents()
    assert ids == sorted([*DEVICES, "intruder"])
    local = _column(page, "Own-data accuracy")
    assert local[:5] == [f"{local_accuracy(b, d):.3f}" for b, d in
                         ((10, "dev-0"), (10, "dev-1"), (9, "dev-2"), (9, "dev-3"))] + ["–"]
    assert page.locator("#versions tbody tr").count() == 11
    # Each version's stage (docs/lifecycle.md), newest first.
    stages = dict(zip(page.locator("#versions tbody tr td:nth-child(1)").all_text_contents(),
                      page.locator("#versions tbody tr td:nth-child(2)").all_text_contents(),
                      strict=True))
    assert stages == {f"v{v}": STAGES.get(v, "retired").replace("_", " ")
                      for v in range(11)}, stages
    assert "stage-canary" in (page.get_attribute("#versions tbody tr td:nth-child(2)",
                                                 "class") or "")
    fairness = page.locator("#fairness tbody tr")
    assert fairness.count() == 10  # every version but v0, newest first
    newest = fairness.first.locator("td").all_text_contents()
    assert newest[:3] == ["v10", "5", f"{local_accuracy(9, 'dev-2'):.3f}"], newest
    assert "dev-0 " in newest[6] and newest[6].count("%") == 5, newest
    assert page.is_hidden("#login")
    shot = SCREENSHOT if os.environ.get("FEDGE_UPDATE_SCREENSHOT") else tmp_path / "shot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert problems == []


def test_an_operator_rejects_a_canary_from_the_dashboard(server, browser, tmp_path):
    """The stage actions: a canary can be promoted or rejected; with the read token the
    page says the admin token is needed; with it, the command is queued for the service."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{server.url}?token={READ}")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    newest = page.locator("#versions tbody tr").first
    assert newest.locator("button.stage-action").all_text_contents() == ["promote", "reject"]
    production = page.locator("#versions tbody tr").nth(2)  # v8
    assert production.locator("button.stage-action").count() == 0
    newest.locator("button.stage-action", has_text="reject").click()
    page.wait_for_selector("#status:has-text('needs the admin token')", timeout=10_000)
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{server.url}?token=admin-x")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    page.locator("#versions tbody tr").first.locator("button.stage-action",
                                                     has_text="reject").click()
    page.wait_for_selector("#status:has-text('Requested rollback 8')", timeout=10_000)
    store = Store(tmp_path / "agg.sqlite3")
    try:
        [request] = store.waiting_stage_requests()
    finally:
        store.close()
    assert (request.command, request.version) == (Command.ROLLBACK, 8)
    assert request.actor.startswith("api:")


def test_dashboard_asks_for_the_token(server, browser):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#login:not([hidden])", timeout=10_000)
    page.fill("#token", "wrong")
    page.click("#login button[type=submit]")
    # A selector wait, not wait_for_function: the page's CSP forbids eval, which
    # Playwright's polling of a string predicate needs when it is not true at once.
    page.wait_for_selector("#login-error:not(:empty)", timeout=10_000)
    assert "token" in page.text_content("#login-error")
    page.fill("#token", READ)
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
    assert page.locator("#devices tbody tr").count() == len(DEVICES) + 1
    assert page.is_visible("#forget")


# ---------------------------------------------------------------- during a live demo
def _start_demo(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """`fedge demo --dashboard`: 60 rounds of 3 devices run ~20 s, well past the page checks."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedge.cli", "demo", "--devices", "3", "--rounds", "60",
         "--dashboard", str(port), "--json", "--workdir", str(workdir)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_url(demo: subprocess.Popen[bytes], timeout_s: float = 20.0) -> tuple[str, bytes]:
    """The address the demo prints on stderr, read raw (the progress bar writes no newline,
    so readline could block); returns it and what stderr said before it."""
    deadline, said = time.monotonic() + timeout_s, b""
    while time.monotonic() < deadline:
        found = re.search(rb"dashboard: (http://\S+)\n", said)
        if found:
            return found.group(1).decode(), said[:found.start()]
        ready, _, _ = select.select([demo.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(demo.stderr.fileno(), 4096)  # type: ignore[union-attr]
            if not chunk:
                break
            said += chunk
    pytest.fail(f"the demo printed no dashboard address; stderr: {said[-2000:]!r}")


def _wait_for_contributions(url: str, timeout_s: float = 15.0) -> None:
    """Until every device has an update in a version, so that one page load shows it all
    (the page itself only refreshes every 5 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "api/devices", timeout=5) as response:
            rows = {d["device_id"]: d for d in json.load(response)["devices"]}
        if all(rows.get(d, {}).get("contributions", 0) > 0 for d in DEMO_DEVICES):
            return
        time.sleep(0.2)
    pytest.fail(f"the devices made no version within {timeout_s} s")


def _assert_live_page(page) -> None:
    """Charts drawn from the versions so far, and every demo device with contributions."""
    for chart in ("accuracy", "loss"):
        d = page.get_attribute(f"#chart-{chart} path.series.{chart}", "d")
        assert d and d.startswith("M"), (chart, d)
        assert page.locator(f"#chart-{chart} circle.dot").count() >= 2  # test set + devices
    for chart in ("bytes", "updates"):
        bars = page.locator(f"#chart-{chart} rect.bar")
        assert bars.count() >= 1, chart
        assert all(float(h) > 0 for h in
                   bars.evaluate_all("rs => rs.map(r => r.getAttribute('height'))")), chart
    assert page.locator("#devices tbody tr td.id").all_text_contents() == list(DEMO_DEVICES)
    contributions = [int(c) for c in _column(page, "Contributions")]
    assert all(c > 0 for c in contributions), contributions
    assert all(float(a) > 0 for a in _column(page, "Own-data accuracy"))
    # Fairness: the newest version's devices reported their own-data accuracy.
    newest = page.locator("#fairness tbody tr").first.locator("td").all_text_contents()
    assert newest[0].startswith("v") and int(newest[1]) >= 1, newest
    assert 0 < float(newest[2]) <= 1 and "%" in newest[6], newest
    # The version history: each version's download cost, and the model itself.
    downlinks = page.locator("#versions tbody tr td:nth-child(7)").all_text_contents()
    # Every version has a stage: with [rollout] off each one is production when made.
    stages = page.locator("#versions tbody tr td:nth-child(2)").all_text_contents()
    assert stages[0] == "production" and set(stages) <= {"production", "retired"}, stages
    assert downlinks and all(d.endswith("B") for d in downlinks), downlinks
    with page.expect_download() as info:
        page.locator("#versions tbody tr button.link").first.click()
    assert info.value.suggested_filename.startswith("fedge-model-v")


def test_dashboard_during_a_live_demo(browser, tmp_path):
    port = free_port()
    demo = _start_demo(port, tmp_path / "demo")
    try:
        url, said = _wait_for_url(demo)
        assert url == f"http://127.0.0.1:{port}/"
        assert b"[" not in said  # the address comes before the progress bar
        _wait_for_contributions(url)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = _watch(page, url)
        page.goto(url)  # no token: the demo's dashboard is for this machine only
        page.wait_for_selector("body[data-loaded=true]", timeout=10_000)
        assert demo.poll() is None, "the federation ended before the page loaded"
        _assert_live_page(page)
        assert problems == []
        page.close()  # before the demo ends: its refreshes would then fail
        out, err = demo.communicate(timeout=240)  # slow on a loaded machine
    finally:
        if demo.poll() is None:  # SIGTERM: the demo stops the mosquitto it started
            demo.terminate()
            try:
                demo.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.communicate()
    assert demo.returncode == 0, err[-3000:].decode(errors="replace")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["dashboard_url"] == url and summary["model_versions"] == 60
