"""Open a report in real headless Chromium and say whether it rendered.

    python -m tests.report.browser PATH/report.html [--screenshot PNG]

A copy of the page gets a script that, once everything has loaded, writes a JSON verdict into
<pre id="browser-check">: for every <img> whether it decoded (complete and naturalWidth > 0), and the
number of body rows of each table.leaderboard and of each table in a scenario's Statistics block. Chromium's --dump-dom prints the DOM after the page's
scripts ran, so the verdict is read back from there. The screenshot is of the unmodified report.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHECK_SCRIPT = """
<pre id="browser-check"></pre>
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth};
  });
  var leaderboards = {};
  document.querySelectorAll("table.leaderboard").forEach(function (table) {
    leaderboards[table.dataset.scenario] = table.querySelectorAll("tbody > tr").length;
  });
  var statistics = {};
  document.querySelectorAll(".statistics table").forEach(function (table) {
    var scenario = statistics[table.dataset.scenario] = statistics[table.dataset.scenario] || {};
    scenario[table.className] = table.querySelectorAll("tbody > tr").length;
  });
  document.getElementById("browser-check").textContent =
    JSON.stringify({loaded: true, images: images, leaderboards: leaderboards, statistics: statistics});
});
</script>
"""
VERDICT = re.compile(r'<pre id="browser-check">(.*?)</pre>', re.DOTALL)
TIMEOUT_S = 120


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A private profile folder per call: parallel Chromiums sharing one would refuse to start.
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def check(report: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """The verdict of loading `report` in Chromium; with `screenshot`, also a PNG of the page."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH")
    report = Path(report).resolve()
    page = report.read_text()
    if "</body>" not in page:
        raise ValueError(f"{report} has no </body> to inject the check before")
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>", 1))
        result = _run(browser, Path(tmp) / "profile", "--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
        found = VERDICT.search(result.stdout)
        if found is None or not found.group(1).strip():
            raise RuntimeError(f"chromium gave no verdict (exit {result.returncode}): {result.stderr[-2000:]}")
        verdict = json.loads(html.unescape(found.group(1)))
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            _run(browser, Path(tmp) / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,4000",
                 report.as_uri())
            verdict["screenshot"] = str(screenshot) if screenshot.is_file() else None
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args(argv)
    verdict = check(args.report, args.screenshot)
    print(json.dumps(verdict, indent=2))
    ok = verdict["loaded"] and all(img["ok"] for img in verdict["images"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
