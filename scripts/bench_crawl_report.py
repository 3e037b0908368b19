"""Peak memory of ``lora-scan report`` on a big crawl state: streamed vs all rows in memory.

Writes (once) a crawl state of ``--rows`` finished targets, each holding the real ``ScanReport`` of
the bundled example (what a crawl of CivitAI stores per LoRA, about 2 KB of JSON), under distinct
target names and base models. Then runs, each in a fresh subprocess so that peak RSS is its own:

- ``streamed``: ``write_report`` as shipped (rows stream into parquet in batches, CSV from parquet);
- ``in-memory``: the same four files (same plots) from all rows held in memory, the way the first
  version did it: ``list(report_rows(...))`` and one ``pa.Table.from_pylist`` (the named alternative).

Prints both peaks (above the resident size once the imports are done), wall times and the ratio.

    .venv/bin/python scripts/bench_crawl_report.py [--rows 100000] [--work /tmp/lora-wise-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from scanner.crawl import report as rp
from scanner.crawl.table import COLUMNS, ReportStats, report_rows

state, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
base = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])  # kB, now
t0 = time.perf_counter()
if mode == "streamed":
    rp.write_report([state], out)
else:
    rows = list(report_rows([state]))
    stats = ReportStats([str(state)])
    for r in rows:
        stats.add(r)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(list(COLUMNS.items()))),
                   out / "reports.parquet")
    rp._write_csv(out / "reports.parquet", out / "reports.csv")
    (out / "report.html").write_text(rp.render_html(rows[: rp.DEFAULT_HTML_ROWS], stats.summary(), stats))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": (peak - base) / 1024}))
"""


def build_state(path: Path, rows: int) -> None:
    """A state of ``rows`` finished targets, each with the bundled example's real scan report."""
    from scanner.crawl.state import Candidate, CrawlState
    from scanner.example import scan_example

    result = scan_example().to_dict()
    bases = ("SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D")
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with CrawlState(tmp) as st:
        st.add(Candidate(f"civitai:{i}@{i + 10**6}", "civitai",
                         {"modelName": f"lora {i}", "baseModel": bases[i % 5]})
               for i in range(rows))  # fmt: skip
        with st.transaction() as db:  # one transaction: finish() per row would take minutes at 10^5 rows
            db.executemany(
                "UPDATE targets SET status = 'ok', attempts = 1, result = ?, bytes = 150000000 "
                "WHERE target = ?",
                ((json.dumps([{**result, "target": f"civitai:{i}@{i + 10**6}"}]), f"civitai:{i}@{i + 10**6}")
                 for i in range(rows)),
            )  # fmt: skip
    tmp.replace(path)


def measure(state: Path, out: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(state), str(out), mode], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{mode} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lora-wise-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    state = args.work / f"crawl-{args.rows}.db"
    if not state.exists():
        t0 = time.perf_counter()
        build_state(state, args.rows)
        print(f"built {state} ({state.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    results = {mode: measure(state, args.work / f"report-{mode}", mode) for mode in ("streamed", "in-memory")}
    for mode, r in results.items():
        print(f"{mode:>9}: peak +{r['peak_mb']:.0f} MB over the imports, {r['seconds']:.1f} s")
    ratio = results["in-memory"]["peak_mb"] / max(results["streamed"]["peak_mb"], 1.0)
    print(f"{args.rows} rows: streamed report uses {ratio:.1f}x less memory than all rows in memory")


if __name__ == "__main__":
    main()
