"""The HTML report opened in real headless Chromium: the plots render (non-blank, with their titles)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from report_fixtures import hang_then_recover

from ops.cmd_report import write_report
from ops.plots import TITLES

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (CI: .ci/system-deps)")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *extra, url],
                          capture_output=True, text=True, timeout=180)


def screenshot(html: Path, out: Path, tmp: Path, size: str = "1200,2600") -> np.ndarray:
    p = chromium(html.resolve().as_uri(), tmp, f"--screenshot={out}", f"--window-size={size}")
    assert out.is_file(), p.stderr[-2000:]
    return mpimg.imread(out)[..., :3]


def has_colour(img: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.03, min_pixels: int = 30) -> bool:
    target = np.array(rgb, dtype=float) / 255.0
    return int((np.abs(img - target) < tol).all(axis=-1).sum()) >= min_pixels


def test_plots_render_in_headless_chromium(tmp_path):
    root = hang_then_recover(tmp_path / "results" / "exp")
    _, html_path, _ = write_report(root)
    html = html_path.read_text()

    # Every embedded PNG decodes to a non-blank image.
    embedded = dict(re.findall(r'id="plot-(\w+)" alt="[^"]*" src="data:image/png;base64,([^"]+)"', html))
    assert set(embedded) == set(TITLES)
    for name, b64 in embedded.items():
        img = mpimg.imread(io.BytesIO(base64.b64decode(b64)))
        assert img.shape[0] > 100 and img.shape[1] > 300, name
        assert float(img[..., :3].std()) > 0.05, f"{name} plot is blank"

    # The browser's DOM holds the titles; the rendered page shows the plots' line colours.
    dom = chromium(html_path.resolve().as_uri(), tmp_path, "--dump-dom").stdout
    for title in TITLES.values():
        assert f"<figcaption>{title}</figcaption>" in dom
    assert "SUCCEEDED: 12/12 steps" in dom and "stack dump" in dom

    shot = screenshot(html_path, tmp_path / "report.png", tmp_path)
    assert shot.shape[:2] == (2600, 1200)
    assert has_colour(shot, (31, 119, 180)), "attempt 1's line (matplotlib C0) is not on the page"
    assert has_colour(shot, (255, 127, 14)), "attempt 2's line (matplotlib C1) is not on the page"
    assert has_colour(shot, (44, 160, 44)), "the goodput bar (productive, green) is not on the page"
    assert float((shot < 0.9).any(axis=-1).mean()) > 0.05        # the page is not mostly blank


def test_broken_image_would_be_caught(tmp_path):
    """The colour check can fail: a page whose images are broken shows none of the plot colours."""
    root = hang_then_recover(tmp_path / "results" / "exp")
    _, html_path, _ = write_report(root)
    broken = html_path.with_name("broken.html")
    broken.write_text(re.sub(r"base64,[^\"]+", "base64,AAAA", html_path.read_text()))
    shot = screenshot(broken, tmp_path / "broken.png", tmp_path, size="1200,1400")
    assert not has_colour(shot, (255, 127, 14))
