"""Open report.html in headless Chromium: every image loads, no error, and a screenshot is taken."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"

# Injected into a copy of the report (the report itself has no script): records resource load
# failures, uncaught errors and console errors, then checks every <img> once the page has loaded
# and writes the verdict into the title, which --dump-dom prints.
PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    var t = e.target || {};
    errors.push(t.tagName ? ('load failed: ' + t.tagName + ' ' + String(t.src || t.href).slice(0, 60))
                          : ('error: ' + e.message));
  }, true);
  var origError = console.error;
  console.error = function () { errors.push('console.error: ' + Array.from(arguments).join(' ')); origError.apply(console, arguments); };
  window.addEventListener('load', function () {
    var imgs = Array.from(document.images);
    var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
    document.title = 'VER' + 'DICT' + JSON.stringify({images: imgs.length, broken: bad, errors: errors});
  });
})();
</script>"""


def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        try:
            subprocess.run(install, capture_output=True, timeout=600, env=env)
            if not Path(CHROMIUM).exists():  # package lists missing or stale on a new machine
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
                subprocess.run(install, capture_output=True, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            pass
        if Path(CHROMIUM).exists():
            return CHROMIUM
    pytest.skip("headless Chromium not available (/usr/bin/chromium missing; install it with "
                "`apt-get install -y chromium`, which needs root)")


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(built_report, tmp_path):
    html = built_report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    res = _run(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r"<title>VERDICT(.*?)</title>", res.stdout, re.S)
    assert m, f"no probe verdict in the DOM; chromium said: {res.stderr[-2000:]}"
    verdict = json.loads(unescape(m.group(1)))
    assert verdict["images"] >= 7
    assert verdict["broken"] == 0, verdict
    assert verdict["errors"] == [], verdict
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and "error" in ln.lower()]
    assert not console, console

    shot = tmp_path / "report.png"
    res = _run(["--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}", built_report.as_uri()],
               tmp_path)
    assert shot.exists(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a rendered page, not a blank one
