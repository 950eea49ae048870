"""The HTML report of a run folder: content, escaping, paging, and a real browser."""
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from inputiba.cli import main
from inputiba.io import save_npz
from inputiba.report import write_report


@pytest.fixture
def run_folder(tmp_path):
    """Three maps (one with a name to escape), a metrics table, a curve figure, an explain.py JSON."""
    for i, name in enumerate(["a/img0", "a/img1", "b/odd <&> name"]):
        save_npz(tmp_path / f"{name}.npz", target=i, mask=np.zeros((4, 4), np.float32))
        Image.fromarray(np.full((20, 30, 3), 40 * i + 60, np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "results.csv").write_text(
        "method,deletion_mean,deletion_se,deletion_n\n<b>iba</b>,0.15,0.02,32\nrandom,0.43,0.04,32\n")
    (tmp_path / "figures").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "figures" / "curves.png")
    (tmp_path / "texts.json").write_text(json.dumps(
        [{"tokens": ["<script>", "fine"], "scores": [0.01, 0.9], "label": "fresh", "probability": 0.9}]))
    return tmp_path


def test_report_shows_every_map_table_and_text_escaped_and_paged(run_folder):
    pages = write_report(run_folder, page_size=2)
    assert [p.name for p in pages] == ["report.html", "report-2.html"]
    first, second = (p.read_text() for p in pages)
    assert first.count("<figure>") == 2 + 1 and second.count("<figure>") == 1  # maps, plus the curve figure
    assert 'src="a/img0.png"' in first and 'loading="lazy"' in first
    assert "b/odd%20%3C%26%3E%20name.png" in second and "odd &lt;&amp;&gt; name" in second
    assert "<b>iba</b>" not in first and "&lt;b&gt;iba&lt;/b&gt;" in first and "0.150 ± 0.020 (32)" in first
    assert "&lt;script&gt;" in first and "<script>fine" not in first and "colour scale 0 (white) to 1" in first
    assert 'href="report-2.html"' in first and "target 2" in second
    assert "torch" in first and "http" not in first.replace("https://", "")  # nothing from the network


def test_report_refuses_an_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="holds no maps"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")
    assert main(["report", str(tmp_path / "missing")]) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here: `apt-get install chromium` (make test does)")
def test_report_loads_in_a_real_browser(run_folder, tmp_path):
    page = write_report(run_folder, page_size=10)[0]
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1000,1200", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="1"' in dom.stdout  # the page's script ran to its end
    assert dom.stdout.count("<img") == 4 and "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    done = subprocess.run(base + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    low, high = Image.open(shot).convert("L").getextrema()
    assert high - low > 100  # not blank: dark text on a light page


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here: `apt-get install chromium` (make test does)")
def test_token_page_loads_in_a_real_browser(tmp_path):
    from inputiba.text import TokenScores, render_html

    items = [TokenScores(["<script>alert(1)</script>", "dull"], [0.01, 0.95], "rotten", 0.9),
             TokenScores(["fine"], [0.5], "fresh", 0.7)]
    page = tmp_path / "tokens.html"
    page.write_text(render_html(items, "tokens", scale=(0.0, 1.0), unit="mask"))
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Uncaught" not in dom.stderr
    assert dom.stdout.count('title="') == 3 and "<script>alert" not in dom.stdout  # escaped, not run
    assert "colour scale 0 (white) to 1 (red), mask" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(base + ["--window-size=800,400", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    low, high = Image.open(shot).convert("L").getextrema()
    assert high - low > 100
