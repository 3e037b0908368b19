"""Kill a crawl with SIGKILL in the middle, run the same command again: every target ends with exactly
one final row, none downloaded again once done, and no row is half written."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from crawl_helpers import full_downloads, rows
from sources_helpers import LoopbackServer, Reply, lora_bytes

from scanner.crawl.state import FINAL, STATUSES

LORA_SCAN = str(Path(sys.executable).with_name("lora-scan"))
FILES = 10


def slow_file(data: bytes, seconds: float):
    """Header reads answer at once; a full download takes ``seconds`` (the crawl is caught mid-way)."""

    def answer(seen):
        if seen.headers.get("range", "bytes=0-") == "bytes=0-":
            time.sleep(seconds)
        return Reply(200, data)

    return answer


def snapshot(state: Path) -> dict[str, str]:
    """Statuses by target, read-only (no second writer beside the crawl)."""
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT target, status FROM targets").fetchall())
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return {}


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_midway_then_rerun_completes_without_rescanning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "CIVITAI_ENDPOINT")}
    with LoopbackServer() as server:
        for i in range(FILES):
            server.route(f"/f{i}.safetensors", slow_file(lora_bytes(seed=i), 0.3))
        listed = tmp_path / "targets.txt"
        listed.write_text("".join(f"{server.url}/f{i}.safetensors\n" for i in range(FILES)))
        state = tmp_path / "crawl.db"
        command = [
            LORA_SCAN,
            "crawl",
            "list",
            str(listed),
            "--state",
            str(state),
            "--jobs",
            "2",
            "--quiet",
            "--no-report",
        ]

        first = subprocess.Popen(command, env=env, cwd=tmp_path)
        try:
            wait_for(lambda: sum(s in FINAL for s in snapshot(state).values()) >= 3, timeout=45)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        at_kill = snapshot(state)
        done_before = {t for t, s in at_kill.items() if s in FINAL}
        assert 3 <= len(done_before) < FILES, at_kill  # killed in the middle
        assert set(at_kill.values()) <= set(STATUSES)
        downloads_before = {i: full_downloads(server, f"/f{i}.safetensors") for i in range(FILES)}

        second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr

    final = rows(state)
    assert len(final) == FILES and {r["status"] for r in final.values()} == {"ok"}
    for target, row in final.items():
        assert (
            row["attempts"] == 1 and len(row["result"]) == 1
        )  # one finished try, one report: none scanned twice
        assert json.loads(json.dumps(row["result"]))[0]["status"] == "ok"
        i = int(target.rsplit("/f", 1)[1].split(".")[0])
        downloads = full_downloads(server, f"/f{i}.safetensors")
        if target in done_before:
            assert downloads == downloads_before[i] == 1, target  # done before the kill: never fetched again
        else:
            assert 1 <= downloads <= downloads_before[i] + 1, target
    db = sqlite3.connect(state)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_ctrl_c_stops_at_once_and_hands_the_targets_in_flight_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "CIVITAI_ENDPOINT")}
    with LoopbackServer() as server:
        for i in range(4):
            server.route(f"/f{i}.safetensors", slow_file(lora_bytes(seed=i), 6.0))
        listed = tmp_path / "targets.txt"
        listed.write_text("".join(f"{server.url}/f{i}.safetensors\n" for i in range(4)))
        state = tmp_path / "crawl.db"
        command = [LORA_SCAN, "crawl", "list", str(listed), "--state", str(state), "--jobs", "2", "--quiet"]
        crawl = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "running" in snapshot(state).values(), timeout=45)
        interrupted = time.monotonic()
        crawl.send_signal(signal.SIGINT)
        _, stderr = crawl.communicate(timeout=30)
    assert crawl.returncode == 130 and time.monotonic() - interrupted < 5  # not waiting for the download
    assert "interrupted: the targets in flight are pending again" in stderr and "Traceback" not in stderr
    assert "running" not in snapshot(state).values()
