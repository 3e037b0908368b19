"""Benchmark: ``scanner.download.download`` against the obvious alternatives, over loopback HTTP.

Serves one file of ``--mb`` MB from a 127.0.0.1 server and fetches it three ways, each in a fresh
process so that peak RSS is its own:
  1. scanner.download.download (streamed, capped, SHA-256 checked)
  2. httpx2.get(url).content written to disk (the whole body in memory)
  3. huggingface_hub's http_get into a file (streamed, no cap, no hash)
Prints wall time and peak RSS above the process's post-import peak for each, and the ratios of (1)
against (2) and (3). Targets: memory flat (≤ 64 MB above baseline whatever the size), time within 1.5×.

Run: .venv/bin/python scripts/bench_download.py [--mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
way, url, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
import httpx2, huggingface_hub.file_download as fd
from scanner.download import download
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if way == "scanner":
    download(url, out.parent, filename=out.name, progress=False)
elif way == "httpx-get":
    out.write_bytes(httpx2.get(url, timeout=60).content)
else:
    with open(out, "wb") as f:
        fd.http_get(url, f)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_mb": (peak - base) / 1024}))
"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def measure(way: str, url: str, out: Path) -> dict[str, float]:
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="0")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, way, url, str(out)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    out.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "serve").mkdir()
        with open(root / "serve" / "lora.safetensors", "wb") as f:
            f.write(os.urandom(args.mb * 1024 * 1024))
        handler = partial(_QuietHandler, directory=str(root / "serve"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/lora.safetensors"
        results = {
            way: measure(way, url, root / f"{way}.safetensors")
            for way in ("scanner", "httpx-get", "hf-http_get")
        }
        server.shutdown()
    print(f"file: {args.mb} MB over loopback")
    for way, r in results.items():
        print(
            f"  {way:12s} {r['seconds']:6.2f} s  {args.mb / r['seconds']:7.0f} MB/s  "
            f"peak RSS +{r['rss_mb']:6.0f} MB"
        )
    ours = results["scanner"]
    for other in ("httpx-get", "hf-http_get"):
        r = results[other]
        print(
            f"  scanner vs {other}: time ×{ours['seconds'] / r['seconds']:.2f}, "
            f"memory ×{ours['rss_mb'] / max(r['rss_mb'], 1):.2f}"
        )


if __name__ == "__main__":
    main()
