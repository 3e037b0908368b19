"""``lora-scan report``: parquet, CSV and summary.json content, shards merged, and the HTML page, checked
for escaping and opened in headless Chromium (no console errors, every target in the table)."""

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
from crawl_helpers import lora_list

from lora_wise.cli.tools import run
from lora_wise.estimation.bank import Estimate
from scanner.cli import cli
from scanner.crawl import CrawlOptions, crawl
from scanner.crawl.html import render_html
from scanner.crawl.listing import TargetsFile
from scanner.crawl.report import write_report
from scanner.crawl.state import Candidate, CrawlState
from scanner.crawl.table import COLUMNS
from scanner.report import ScanReport

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>$\\frac{'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def scanned(target, estimate, declared, base="SD 1.5", fmt="kohya", file="lora.safetensors"):
    est = None
    if estimate is not None:
        est = Estimate(
            size=int(estimate),
            estimate=estimate,
            low=estimate / 2,
            high=estimate * 2,
            coverage=0.9,
            votes={10: 3, 20: 1},
            applicability=0.5,
            step=1200,
            step_source="declared",
            missing_fraction=0.0,
            bank="sd15-r32",
            references=40,
        )
    report = ScanReport(
        target=target,
        format=fmt,
        backbone="sd15",
        rank=8,
        layers=128,
        dtype="float16",
        components={"unet": 128},
        declared={"unique_images": declared} if declared else None,
        estimate=est,
        bank={"name": "sd15-r32", "self_check": {"dsire_accuracy": 61.5}} if est else None,
        source={"kind": "civitai", "file": file, "size": 1000, "info": {"baseModel": base}},
    )
    return report.to_dict()


@pytest.fixture
def state(tmp_path):
    """A crawl state with every kind of row: estimates with and without declarations, a repo with two
    files, targets left out by filters, a failed one, a hostile model name."""
    path = tmp_path / "crawl.db"
    with CrawlState(path) as st:
        st.add(
            [
                Candidate("civitai:1@11", "civitai", {"modelName": HOSTILE, "baseModel": "SD 1.5"}),
                Candidate(
                    "civitai:2@12", "civitai", {"modelName": '=HYPERLINK("http://x")', "baseModel": "SD 1.5"}
                ),
                Candidate("civitai:3@13", "civitai", {"modelName": "three", "baseModel": "SDXL 1.0"}),
                Candidate("user/two-files", "hf", {"repo_id": "user/two-files"}),
                Candidate("civitai:5@15", "civitai", {"baseModel": "SD 1.5"}),
                Candidate("https://example.org/big.safetensors", "list"),
                Candidate(
                    "civitai:7@17",
                    "civitai",
                    {"baseModel": "Pony"},
                    status="unsafe",
                    error="only pickle files",
                ),
            ]
        )
        results = {
            "civitai:1@11": [scanned("civitai:1@11", 10.0, 14)],
            "civitai:2@12": [scanned("civitai:2@12", 30.0, 20)],
            "civitai:3@13": [scanned("civitai:3@13", 100.0, None, base="SDXL 1.0")],
            "user/two-files": [
                scanned("user/two-files", 5.0, 8, file="a.safetensors"),
                scanned("user/two-files", None, None, file="b.safetensors"),
            ],
        }
        for target, result in results.items():
            st.claim()
            st.finish(target, "ok", error=None, header=None, result=result, nbytes=1000)
        st.claim()
        st.retry_later("civitai:5@15", error="rate limited (HTTP 429)", wait=0, nbytes=0, max_attempts=1)
        st.claim()
        st.finish(
            "https://example.org/big.safetensors",
            "skipped",
            error="3.0 GB, over the 2.0 GB cap",
            header=[{"file": "big.safetensors", "size": 3 * 1024**3, "declared": {"unique_images": 50}}],
            result=None,
            nbytes=0,
        )
    return path


def test_report_files_hold_every_row_and_the_summary(state, tmp_path):
    out = tmp_path / "report"
    assert run(cli, ["report", str(state), "--out", str(out)]) == 0
    table = pq.read_table(out / "reports.parquet")
    assert table.column_names == list(COLUMNS) and table.num_rows == 8  # 7 targets, one with two files
    data = table.to_pylist()
    by = {(r["target"], r["file"]): r for r in data}
    first = by[("civitai:1@11", "lora.safetensors")]
    assert first["name"] == HOSTILE and first["estimate"] == 10.0 and first["declared_images"] == 14
    assert (
        first["base_model"] == "SD 1.5" and first["link"] == "https://civitai.com/models/1?modelVersionId=11"
    )
    assert first["bank"] == "sd15-r32" and first["bank_accuracy"] == 61.5
    assert by[("user/two-files", "b.safetensors")]["link"] == "https://huggingface.co/user/two-files"
    big = by[("https://example.org/big.safetensors", "big.safetensors")]
    assert (
        big["status"] == "skipped"
        and big["size_bytes"] == 3 * 1024**3
        and big["link"].startswith("https://example.org")
    )
    assert by[("civitai:5@15", None)]["status"] == "failed" and "429" in by[("civitai:5@15", None)]["error"]

    with open(out / "reports.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 8 and list(lines[0]) == list(COLUMNS)
    assert [r["name"] for r in lines if r["target"] == "civitai:2@12"] == [
        '\'=HYPERLINK("http://x")'
    ]  # no formula

    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets"] == 7 and summary["reports"] == 8 and summary["downloaded_bytes"] == 4000
    assert summary["by_status"] == {"ok": 5, "failed": 1, "skipped": 1, "unsafe": 1}
    assert summary["by_base_model"]["SD 1.5"] == 5 and summary["by_format"] == {"kohya": 5}
    cmp = summary["estimate_vs_declared"]
    assert cmp["n"] == 3 and cmp["mae"] == pytest.approx((4 + 10 + 3) / 3)  # |10-14|, |30-20|, |5-8|
    assert cmp["within_interval"] == pytest.approx(1.0)


def test_shards_merge_into_one_report(tmp_path):
    listed = lora_list(tmp_path, 4)
    states = []
    for i in range(2):
        states.append(tmp_path / f"shard{i}.db")
        crawl(states[-1], TargetsFile(listed), CrawlOptions(jobs=1, progress=False, shard=(i, 2)))
    summary = write_report(states, tmp_path / "merged")
    assert summary["targets"] == 4 and summary["by_status"] == {"ok": 4}
    names = {r["crawl_state"] for r in pq.read_table(tmp_path / "merged" / "reports.parquet").to_pylist()}
    assert names == {"shard0.db", "shard1.db"}


def test_the_html_escapes_what_the_crawl_found(state, tmp_path):
    summary = write_report([state], tmp_path / "r")
    html = (tmp_path / "r" / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "onerror=alert(1)>" not in html
    assert html.count("<script") == 1  # ours, allowed by its hash in the Content-Security-Policy
    assert summary["files"]["report.html"].endswith("report.html")
    assert html.count("data:image/png;base64,") == 2  # both plots drawn despite a $mathtext$ name
    assert not re.search(r'src="(?!data:)', html) and "<link" not in html  # nothing loaded from elsewhere


class TableRows(HTMLParser):
    """The target of each row of table#reports in a DOM dump (the first cell's text before its <br>)."""

    def __init__(self):
        super().__init__()
        self.depth, self.rows, self.cell, self.in_first = 0, [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "br" and self.in_first:  # the model name follows the target in the same cell
            self.rows.append("".join(self.cell).strip())
            self.cell, self.in_first = [], False
        elif tag == "table" and ("id", "reports") in attrs:
            self.depth = 1
        elif self.depth and tag == "tr":
            self.cells = 0
        elif self.depth and tag == "td":
            self.cells += 1
            self.in_first = self.cells == 1

    def handle_endtag(self, tag):
        if self.depth and tag == "td" and self.in_first:
            self.rows.append("".join(self.cell).strip())
            self.cell, self.in_first = [], False
        elif tag == "table":
            self.depth = 0

    def handle_data(self, data):
        if self.in_first:
            self.cell.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_the_html_loads_in_chromium_without_console_errors_and_lists_every_target(state, tmp_path):
    write_report([state], tmp_path / "r")
    page = tmp_path / "r" / "report.html"
    done = _chromium(tmp_path, page, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no script error, no CSP violation, no blocked load
    parser = TableRows()
    parser.feed(done.stdout)
    targets = [
        "civitai:1@11",
        "civitai:2@12",
        "civitai:3@13",
        "user/two-files",
        "user/two-files",
        "civitai:5@15",
        "https://example.org/big.safetensors",
        "civitai:7@17",
    ]
    assert sorted(parser.rows) == sorted(targets)


def test_render_html_caps_the_table_and_says_so(state):
    from scanner.crawl.table import ReportStats, report_rows

    stats = ReportStats(["crawl.db"])
    rows = list(report_rows([state]))
    for row in rows:
        stats.add(row)
    html = render_html(rows[:3], stats.summary(), stats, hidden=len(rows) - 3)
    parser = TableRows()
    parser.feed(html)
    assert len(parser.rows) == 3
    assert "5 more are in reports.parquet" in html


def test_rows_stream_in_batches_into_the_same_files(state, tmp_path, monkeypatch):
    """With batches of 3 rows the 8 rows take three row groups; files and summary match one batch."""
    import scanner.crawl.report as report

    whole = write_report([state], tmp_path / "whole")
    monkeypatch.setattr(report, "BATCH_ROWS", 3)
    batched = write_report([state], tmp_path / "batched", html_rows=5)
    assert pq.ParquetFile(tmp_path / "batched" / "reports.parquet").num_row_groups == 3
    assert pq.read_table(tmp_path / "batched" / "reports.parquet").equals(
        pq.read_table(tmp_path / "whole" / "reports.parquet")
    )
    assert (tmp_path / "batched" / "reports.csv").read_bytes() == (
        tmp_path / "whole" / "reports.csv"
    ).read_bytes()
    assert {k: v for k, v in batched.items() if k not in ("generated", "files")} == {
        k: v for k, v in whole.items() if k not in ("generated", "files")
    }
    assert "3 more are in reports.parquet" in (tmp_path / "batched" / "report.html").read_text()


def test_an_empty_crawl_still_writes_every_file_with_the_schema(tmp_path):
    with CrawlState(tmp_path / "empty.db"):
        pass
    summary = write_report([tmp_path / "empty.db"], tmp_path / "r")
    assert summary["targets"] == 0 and summary["estimate_vs_declared"]["n"] == 0
    assert pq.read_table(tmp_path / "r" / "reports.parquet").column_names == list(COLUMNS)
    assert (tmp_path / "r" / "reports.csv").read_text().startswith("target,file,status")


def test_plots_draw_a_bounded_sample_but_the_statistics_use_every_row(state, tmp_path, monkeypatch):
    import numpy as np

    import scanner.crawl.html as html
    from scanner.crawl.table import compare_declared

    values = np.arange(10.0)
    assert html.shown(values, 4).tolist() == [0.0, 3.0, 6.0, 9.0] and html.shown(values, 20) is values
    monkeypatch.setattr(html, "MAX_POINTS", 2)  # 3 declared-and-estimated rows: 2 drawn
    summary = write_report([state], tmp_path / "r")
    assert summary["estimate_vs_declared"]["n"] == 3
    assert (tmp_path / "r" / "report.html").read_text().count("data:image/png;base64,") == 2
    # an interval with a missing end never counts as holding the declared size
    cmp = compare_declared(np.array([[10.0, 12.0, 8.0, np.nan], [10.0, 9.0, 5.0, 20.0]]))
    assert cmp == {"n": 2, "mae": 1.5, "median_abs_error": 1.5, "within_interval": 0.5}


LAYOUT_PROBE = """<script>
window.addEventListener("load", function () {
  var heads = Array.prototype.map.call(document.querySelectorAll("#reports th"), function (th) {
    return [th.textContent.trim(), th.getBoundingClientRect().right];
  });
  var colours = {};
  Array.prototype.forEach.call(document.querySelectorAll("#reports td.status"), function (td) {
    var style = getComputedStyle(td);
    colours[td.textContent.trim()] = style.backgroundColor + " / " + style.color;
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({viewport: window.innerWidth, page: document.documentElement.scrollWidth,
                                    heads: heads, colours: colours});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp_path, page, *extra):
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1366,900",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_the_page_fits_a_1366_px_screen_with_a_colour_per_status(state, tmp_path):
    """Headless Chromium at 1366x900: a screenshot, and the layout measured in the page itself (a copy
    of the report with a probe script; the report's own CSP would rightly block it)."""
    with CrawlState(state) as st:
        st.add(
            [
                Candidate(
                    "civitai:8@18", "civitai", {"modelName": "n" * 300}, status="error", error="e" * 500
                ),
                Candidate(
                    "civitai:9@19", "civitai", status="no-lora", error="a Checkpoint model, not a LoRA"
                ),
            ]
        )
    write_report([state], tmp_path / "r")
    page = tmp_path / "r" / "report.html"
    shot = _chromium(tmp_path, page, f"--screenshot={tmp_path / 'shot.png'}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    png = (tmp_path / "shot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1366
    probed = tmp_path / "r" / "probed.html"
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text())
    probed.write_text(html.replace("</body>", LAYOUT_PROBE + "</body>"))
    done = _chromium(tmp_path, probed, "--virtual-time-budget=5000", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(
        re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S).group(1).replace("&amp;", "&")
    )
    assert found["viewport"] == 1366 and found["page"] <= 1366  # nothing off-screen: no horizontal scroll
    heads = dict(found["heads"])
    assert {"bank accuracy", "warnings", "sha256", "reason", "status"} <= set(heads)
    assert max(heads.values()) <= 1366
    colours = found["colours"]
    assert {"ok", "error", "unsafe", "failed", "skipped", "no-lora"} <= set(colours)
    assert len(set(colours.values())) == len(colours)  # unsafe != error != failed, and so on
