"""The report rendered by real headless Chromium: the page loads, every figure decodes, and each
leaderboard has one row per optimizer with final runs."""

from __future__ import annotations

import pytest

from optbench.report import write_report
from tests.report import browser
from tests.required import missing
from tests.report.synthetic import power_law_bench



@pytest.fixture(autouse=True)
def chromium():
    if browser.chromium() is None:
        missing("chromium is not installed (Debian: apt-get install chromium)")


def test_report_renders_in_chromium(tmp_path):
    paths = write_report(power_law_bench(tmp_path / "out"))
    shot = tmp_path / "screenshot.png"
    verdict = browser.check(paths["html"], screenshot=shot)
    assert verdict["loaded"] is True
    assert verdict["images"] and all(img["ok"] and img["width"] > 100 for img in verdict["images"])
    assert sum(img["alt"].startswith("s: ") for img in verdict["images"]) >= 1
    assert verdict["leaderboards"] == {"s": 3}
    # 3 optimizers with final runs (target test), 3 pairs, 4 with tuning runs, 2 tuned keys each
    # and the loss at k steps of 3 optimizers, the stability of 4 (sgd's tuning run counts)
    assert verdict["statistics"] == {"s": {"stats-target": 3, "stats-pairs": 3, "stats-burden": 4,
                                           "stats-neighbours": 8, "loss-at-steps": 3, "stability": 4}}
    assert verdict["screenshot"] == str(shot.resolve())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
