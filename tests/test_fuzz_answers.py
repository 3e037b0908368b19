"""Fuzz (issue 15, "Done means"): random CivitAI and Hub JSON answers from a loopback server, and random
crawl-state rows. Whatever the answer, the scan ends with an exit code in {0, 2, 3} and no traceback, in
bounded time, writing nothing outside its temp and cache folders; whatever the row, the report is
written or the state refused with one clear error."""

import json
import sqlite3
import tempfile
import time
from contextlib import contextmanager

import huggingface_hub.constants
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sources_helpers import LoopbackServer, Reply, civitai_file, civitai_version, lora_bytes

from scanner.crawl.state import CrawlState
from scanner.crawl.table import COLUMNS, ReportStats, report_rows
from scanner.errors import StateError
from scanner.scan import scan_all

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DATA = lora_bytes(seed=5)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["\ud800", "[/x]", "\x00", "../../x", "file:///etc/passwd", "a" * 300]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutated(base: dict, paths: list[tuple[str, ...]]):
    """``base`` with some of the fields at ``paths`` replaced by random JSON (or removed)."""

    @st.composite
    def build(draw):
        data = json.loads(json.dumps(base))
        for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
            holder = data
            for key in path[:-1]:
                holder = holder[key] if isinstance(holder, dict) and key in holder else None
                if holder is None:
                    break
            if isinstance(holder, dict):
                if draw(st.booleans()):
                    holder[path[-1]] = draw(json_value)
                else:
                    holder.pop(path[-1], None)
        return data

    return build()


@contextmanager
def sandbox(tmp_path_factory, monkeypatch):
    """A fresh temp folder and working folder per example; yields a check that nothing is left."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tmp").mkdir()
    (root / "cwd").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root / "tmp"))
    monkeypatch.chdir(root / "cwd")
    yield root
    assert list((root / "cwd").iterdir()) == []
    assert [p for p in (root / "tmp").iterdir() if p.name.startswith("lora-scan")] == []


def scan_exit(target: str) -> int:
    started = time.monotonic()
    reports = scan_all(target, progress=False)
    assert time.monotonic() - started < 30
    return max(r.exit_code for r in reports)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as srv:
        yield srv


CIVITAI_PATHS = [
    ("id",),
    ("modelId",),
    ("files",),
    ("model",),
    ("model", "type"),
    ("downloadUrl",),
    ("baseModel",),
    ("trainedWords",),
    ("files", "0"),
]
FILE_PATHS = [("sizeKB",), ("hashes",), ("name",), ("metadata",), ("type",), ("primary",), ("downloadUrl",)]


@FUZZ
@given(data=st.data())
def test_any_civitai_version_answer_ends_in_0_2_or_3(server, tmp_path_factory, monkeypatch, data):
    monkeypatch.setenv("CIVITAI_ENDPOINT", server.url)
    version = civitai_version(server, 2, 1, [civitai_file(server, "a.safetensors", DATA)])
    version["files"][0] = (
        data.draw(mutated(version["files"][0], FILE_PATHS))
        if data.draw(st.booleans())
        else version["files"][0]
    )
    answer = data.draw(mutated(version, CIVITAI_PATHS))
    server.route(
        "/api/v1/model-versions/2",
        Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}),
    )
    server.route("/api/download/files/1", Reply(200, DATA))
    with sandbox(tmp_path_factory, monkeypatch):
        assert scan_exit("civitai:1@2") in (0, 2, 3)


HUB_PATHS = [("sha",), ("siblings",), ("tags",), ("cardData",), ("id",), ("siblings", "0"), ("siblings", "1")]


@FUZZ
@given(data=st.data())
def test_any_hub_model_info_answer_ends_in_0_2_or_3(server, tmp_path_factory, monkeypatch, data):
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    commit = "d" * 40
    info = {
        "id": "user/repo",
        "sha": commit,
        "tags": ["lora"],
        "cardData": {"base_model": "x"},
        "siblings": [
            {"rfilename": "a.safetensors", "size": len(DATA)},
            {"rfilename": "README.md", "size": 3},
        ],
    }
    answer = data.draw(mutated(info, HUB_PATHS))
    for path in ("/api/models/user/repo", "/api/models/user/repo/revision/main"):
        server.route(path, Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}))
    server.route(
        f"/user/repo/resolve/{commit}/a.safetensors",
        Reply(200, DATA, {"X-Repo-Commit": commit, "ETag": '"e"'}),
    )
    with sandbox(tmp_path_factory, monkeypatch) as root:
        monkeypatch.setenv("HF_HUB_CACHE", str(root / "tmp" / "hub"))
        assert scan_exit("user/repo") in (0, 2, 3)


column = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    json_value.map(json.dumps),
    st.binary(max_size=8),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(*[column] * 8), min_size=1, max_size=4))
def test_any_hand_edited_state_row_gives_report_rows_or_one_clear_error(tmp_path_factory, values):
    """The rows and statistics every report file is made of (the files themselves: test_crawl_hostile)."""
    root = tmp_path_factory.mktemp("state")
    state = root / "s.db"
    with CrawlState(state):
        pass
    db = sqlite3.connect(state)
    for n, (status, attempts, error, listing, header, result, nbytes, updated) in enumerate(values):
        # NOT NULL columns keep SQLite's own guard (a hand edit cannot put NULL, or NaN, there either)
        status, attempts, nbytes, updated = (
            v if v is not None and v == v else 0 for v in (status, attempts, nbytes, updated)
        )
        db.execute(
            "INSERT INTO targets (target, source, status, attempts, error, listing, header, result, bytes, "
            "next_try, seq, updated) VALUES (?, 'list', ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (f"t{n}", status, attempts, error, listing, header, result, nbytes, n, updated),
        )
    db.commit()
    db.close()
    stats = ReportStats([str(state)])
    try:
        rows = list(report_rows([state]))
    except StateError:
        return
    for row in rows:
        stats.add(row)
    pa.Table.from_pylist(rows, schema=pa.schema(list(COLUMNS.items())))  # what the parquet file takes
    json.dumps(stats.summary(), allow_nan=False)  # summary.json: strict JSON
    assert stats.reports == len(rows) >= len(values)
