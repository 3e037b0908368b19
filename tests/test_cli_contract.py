"""The command-line contract of ``lora-scan`` and ``lora-wise``, as a user and a script meet it.

Exit codes 0/1/2/3/4, ``-h`` everywhere, ONE JSON envelope (validated against the published
schema for every output these tests produce), ``-o FILE``, one-line errors even when piped,
``inspect --raw``, the installed docs. Real files written by safetensors, real subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import click
import pytest
from contract_helpers import SCHEMA, VALIDATOR, valid_envelope
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from sources_helpers import hub_cache_repo, lora_bytes, lora_tensors, write_lora

from lora_wise.cli.app import cli as lora_wise_cli
from lora_wise.cli.tools import run
from scanner.cli import _json_error
from scanner.cli import cli as lora_scan_cli

ROOT = Path(__file__).resolve().parents[1]


def lora_scan(capsys, *args: str) -> tuple[int, str, str]:
    """``lora-scan ARGS`` as its entry point runs it (with the JSON report of usage errors)."""
    code = run(lora_scan_cli, list(args), prog_name="lora-scan", on_error=_json_error)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def envelope(capsys, *args: str) -> tuple[int, dict]:
    """``lora-scan ARGS --json``: one object on stdout, valid against the schema, whose
    exit_code is the process's."""
    code, out, _ = lora_scan(capsys, *args, "--json")
    data = valid_envelope(out)  # exactly one JSON document, nothing else on stdout
    assert data["exit_code"] == code
    return code, data


@pytest.fixture
def no_banks(tmp_path):
    """An empty bank folder: scans report "no reference bank" at once instead of loading one."""
    folder = tmp_path / "banks"
    folder.mkdir()
    return str(folder)


def _pickle(path: Path) -> Path:
    path.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n")
    return path


def _no_lora(path: Path) -> Path:
    save_file({"model.embed.weight": next(iter(lora_tensors().values()))}, str(path))
    return path


# ---------------------------------------------------------------- exit codes and the envelope


def test_one_envelope_for_a_file_a_folder_a_repo_and_every_outcome(tmp_path, capsys, no_banks, monkeypatch):
    good = write_lora(tmp_path / "good.safetensors")
    code, data = envelope(capsys, str(good), "--bank-dir", no_banks)
    assert code == 0 and data["command"] == "scan" and data["target"] == str(good) and data["errors"] == []
    (report,) = data["reports"]
    assert report["status"] == "ok" and report["format"] == "diffusers" and report["estimate"] is None

    folder = tmp_path / "folder"
    write_lora(folder / "a.safetensors", seed=1)
    write_lora(folder / "b.safetensors", style="kohya", seed=2)
    code, data = envelope(capsys, str(folder), "--bank-dir", no_banks)
    assert code == 0 and sorted(r["source"]["file"] for r in data["reports"]) == [
        "a.safetensors",
        "b.safetensors",
    ]

    cache = tmp_path / "hub"
    hub_cache_repo(cache, "someone/style", {"pytorch_lora_weights.safetensors": lora_bytes("kohya")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    code, data = envelope(capsys, "someone/style", "--bank-dir", no_banks)
    assert code == 0 and data["reports"][0]["source"]["kind"] == "hub"

    outcomes = {
        _pickle(tmp_path / "model.ckpt"): (1, "unsafe"),  # a finding, never loaded
        tmp_path / "garbage.safetensors": (2, "error"),
        _no_lora(tmp_path / "embedding.safetensors"): (3, "no-lora"),
    }
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    for path, (want_code, status) in outcomes.items():
        code, data = envelope(capsys, str(path), "--bank-dir", no_banks)
        assert (code, data["reports"][0]["status"]) == (want_code, status), data


def test_errors_before_any_report_are_the_same_envelope(tmp_path, capsys):
    code, data = envelope(capsys, "no[/x]such")  # rich markup in the target: no traceback, a usage error
    assert code == 4 and data["reports"] == [] and data["target"] == "no[/x]such"
    assert "no[/x]such" in data["errors"][0]["error"]

    code, data = envelope(capsys, "scan", "--max-sise", "2G")  # click refuses the option itself
    assert code == 4 and data["target"] is None and "--max-sise" in data["errors"][0]["error"]

    code, out, _ = lora_scan(capsys, "crawl", "list", str(tmp_path / "missing.txt"), "--json")
    assert code == 4 and out == ""  # the crawl's --json is its own summary, never this envelope

    code, data = envelope(capsys, "inspect", str(tmp_path / "missing.safetensors"))
    assert code == 4 and data["command"] == "inspect" and data["errors"][0]["exit_code"] == 4

    code, data = envelope(capsys, "inspect", str(_pickle(tmp_path / "x.pt")))
    assert code == 1 and data["command"] == "inspect" and data["target"].endswith("x.pt")


def test_a_finding_turns_a_clean_exit_into_1():
    from scanner.report import ScanReport
    from scanner.status import Status, exit_code

    assert ScanReport("t").exit_code == 0
    assert ScanReport("t", findings=["declares sd_1.5, the weights are Flux's"]).exit_code == 1
    assert exit_code(Status.ERROR, findings=True) == 2 and exit_code("no-lora") == 3
    assert exit_code("written by a future version") == 2


def test_status_values_are_the_strings_old_states_hold():
    from lora_wise.errors import InvalidLoraFile, NoLoraWeightsError, UnsafeFormatError
    from scanner.errors import NotFound, TooLarge
    from scanner.status import Status, status_of

    assert [s.value for s in Status][:5] == ["ok", "unsafe", "error", "no-lora", "skipped"]
    assert Status("no-lora") is Status.NO_LORA and f"{Status.NO_LORA}" == "no-lora"
    assert {"ok": 1}[Status.OK] == 1 and {Status.OK: 1}["ok"] == 1  # a state's str and the member are one key
    assert json.dumps({"status": Status.UNSAFE}) == '{"status": "unsafe"}'
    cases = {UnsafeFormatError("x"): "unsafe", NoLoraWeightsError("x"): "no-lora", TooLarge("x"): "skipped",
             InvalidLoraFile("x"): "error", NotFound("x"): "error", RuntimeError("x"): "error"}  # fmt: skip
    assert {type(e).__name__: status_of(e) for e in cases} == {type(e).__name__: s for e, s in cases.items()}


# ---------------------------------------------------------------- -h, --help, docs


SCAN_COMMANDS = [["scan"], ["inspect"], ["crawl"], ["crawl", "hf"], ["crawl", "civitai"], ["crawl", "list"]]
SCAN_COMMANDS += [[], ["report"], ["docs"]]


@pytest.mark.parametrize("command", SCAN_COMMANDS, ids=lambda c: " ".join(c) or "lora-scan")
def test_dash_h_is_help_on_every_lora_scan_command(command, capsys):
    code, out, err = lora_scan(capsys, *command, "-h")
    assert code == 0 and err == "" and out.startswith("Usage: lora-scan")
    assert "Exit codes:" in out and ("1  findings" in out or command[:1] == ["crawl"])


def test_dash_h_is_help_on_every_lora_wise_command(capsys):
    names = [[], *([name] for name in lora_wise_cli.commands)]
    for command in names:
        assert run(lora_wise_cli, [*command, "-h"], prog_name="lora-wise") == 0, command
        out = capsys.readouterr().out
        assert out.startswith("Usage: lora-wise") and "Exit codes:" in out, command
    assert "`docs` command" in lora_wise_cli.epilog
    assert run(lora_wise_cli, ["docs", "estimators"], prog_name="lora-wise") == 0
    assert "DSiRe" in capsys.readouterr().out


def test_the_docs_the_help_points_to_are_installed(capsys):
    code, out, _ = lora_scan(capsys, "docs")
    assert code == 0 and "scan-json" in out and "scan.schema.json" in out and "crawl" in out
    code, out, _ = lora_scan(capsys, "docs", "scan.schema.json")
    assert code == 0 and json.loads(out) == SCHEMA
    code, out, _ = lora_scan(capsys, "docs", "scan-json")
    assert code == 0 and "exit_code" in out
    code, _, err = lora_scan(capsys, "docs", "nothing-like-it")
    assert code == 4 and err.count("\n") == 1


# ---------------------------------------------------------------- -o FILE


def test_output_file_holds_what_stdout_would(tmp_path, capsys, no_banks):
    lora = write_lora(tmp_path / "l.safetensors")
    out = tmp_path / "scan.json"
    code, stdout, _ = lora_scan(capsys, str(lora), "--bank-dir", no_banks, "--json", "-o", str(out))
    assert code == 0 and stdout == ""
    VALIDATOR.validate(json.loads(out.read_text()))

    text = tmp_path / "inspect.txt"
    code, stdout, _ = lora_scan(capsys, "inspect", str(lora), "--output", str(text))
    assert code == 0 and stdout == "" and "diffusers" in text.read_text()

    failed = tmp_path / "failed.json"
    code, _, _ = lora_scan(capsys, "inspect", str(tmp_path / "missing"), "--json", "-o", str(failed))
    assert code == 4 and json.loads(failed.read_text())["errors"][0]["exit_code"] == 4

    spectra = tmp_path / "spectra.json"
    assert run(lora_wise_cli, ["spectra", str(lora), "--json", "-o", str(spectra)]) == 0
    assert capsys.readouterr().out == ""
    layers = json.loads(spectra.read_text())
    assert len(layers) == 8 and all(len(layer["ba"]) >= 4 for layer in layers)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temp file left behind


def test_evaluate_writes_its_table_or_json_to_the_output_file(tmp_path, capsys):
    from estimator_helpers import write_factory_folder

    factory = tmp_path / "factory"
    write_factory_folder(factory, concepts=4, sizes=(1, 10, 20), steps=(100,), rank=4)
    args = ["evaluate", str(factory), "--repeats", "2", "--methods", "frobenius-nn"]
    assert run(lora_wise_cli, [*args, "--json", "-o", str(tmp_path / "e.json")]) == 0
    assert run(lora_wise_cli, [*args, "--markdown", "-o", str(tmp_path / "e.md")]) == 0
    assert capsys.readouterr().out == ""
    (result,) = json.loads((tmp_path / "e.json").read_text())
    assert result["method"] == "frobenius-nn" and len(result["accuracy"]) == 2
    assert (tmp_path / "e.md").read_text().startswith("| Method | Config |")


# ---------------------------------------------------------------- hostile strings, one-line errors


HOSTILE = (
    "[bold red]FAKE OK[/bold red] [/x] \x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
    " \x1b[2J\x1b[31mred\x07 \u202eevil\u202c :warning: " + "very-long-name-" * 12
)


def _hostile_lora(path: Path) -> Path:
    tensors = lora_tensors("diffusers")
    tensors[f"unet.{HOSTILE}.token_embedding"] = tensors[
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    ]
    metadata = {
        "modelspec.title": HOSTILE,
        "modelspec.architecture": "stable-diffusion-v1",
        "ss_output_name": HOSTILE,
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def _assert_inert(text: str) -> None:
    """No escape sequence, bell or bidi override reached the output, and the markup is shown as text."""
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "[bold red]FAKE OK[/bold red]" in text.replace("\\[", "[") or "FAKE OK" not in text


def test_hostile_names_and_metadata_are_shown_not_obeyed(tmp_path, capsys, no_banks):
    lora = _hostile_lora(tmp_path / "hostile.safetensors")
    for args in (
        ["inspect", str(lora)],
        ["inspect", str(lora), "--raw"],
        [str(lora), "--bank-dir", no_banks],
    ):
        code, out, err = lora_scan(capsys, *args)
        assert code == 0, err
        _assert_inert(out + err)
        assert "FAKE OK" in out and "\\x1b" in out  # the strings are there, spelled out
    code, out, _ = lora_scan(capsys, "inspect", str(lora), "--raw")
    assert "modelspec.title" in out and "ss_output_name" in out
    code, data = envelope(capsys, "inspect", str(lora), "--raw")
    assert (
        data["reports"][0]["metadata"]["modelspec.title"] == HOSTILE
    )  # as-is in JSON (escaped by json itself)


def test_shown_spells_out_every_control_and_invisible_character():
    from lora_wise._text import shown

    assert shown("a\x1b[31mb\nc\td\x9b\u202e\ud800\u061c\U000e0041") == (
        "a\\x1b[31mb\\x0ac\\x09d\\x9b\\u202e\\ud800\\u061c\\U000e0041"
    )
    assert shown("日本語\u3000タイトル 🙂") == "日本語\u3000タイトル 🙂"  # printable text is left alone
    assert shown("no[/x]such") == "no\\[/x]such" and shown("no[/x]such", markup=False) == "no[/x]such"
    console = __import__("rich.console").console.Console(file=__import__("io").StringIO(), soft_wrap=True)
    console.print(shown("[/x] [red]" + "\x1b]8;;u\x1b\\"))  # would raise MarkupError unescaped
    assert console.file.getvalue().startswith("[/x] [red]\\x1b]8;;u")


def _cli_subprocess(*args: str, module: str = "scanner.cli", **env: str) -> subprocess.CompletedProcess:
    """The real entry point in a child process with pipes, as a script or CI log meets it (80 columns)."""
    code = f"from {module} import main; main()"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "80", **env}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_errors_are_one_line_on_a_pipe_even_long_and_hostile(tmp_path):
    long_name = tmp_path / ("x" * 150 + "[red]\x1b]8;;u\x07.safetensors")  # no "/" in a file name
    long_name.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    done = _cli_subprocess("inspect", str(long_name))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and len(done.stderr) > 160
    assert "Traceback" not in done.stderr and "\x1b" not in done.stderr
    usage = _cli_subprocess("scan", "--no-such-option")
    assert usage.returncode == 4 and usage.stderr.count("\n") == 1 and "--no-such-option" in usage.stderr


def test_click_usage_errors_are_one_line(capsys):
    @click.command()
    @click.option("--n", type=int)
    def command(n):
        pass

    assert run(command, ["--n", "many"], prog_name="tool") == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'many'" in err and "tool --help" in err


def test_publish_without_a_reachable_hub_is_one_line_at_once(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "README.md").write_text("---\n---\n")
    # A host name that cannot resolve (a 64-character label), refused before any packet is sent.
    endpoint = f"https://{'a' * 64}.example"
    done = _cli_subprocess("publish", str(folder), "--repo-id", "someone/x", module="lora_wise.cli.app",
                           HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: cannot reach the Hub") and "Retrying" not in done.stderr


def test_the_crawl_progress_keeps_its_bar_and_counts_at_80_columns(tmp_path):
    import io

    from rich.console import Console, Group

    from scanner.crawl.run import Display
    from scanner.crawl.state import Candidate, CrawlState

    with CrawlState(tmp_path / "state.db") as state:
        state.add([Candidate(f"user/repo-{i}", "list") for i in range(1500)])
        state.add(
            [
                Candidate(f"user/pickles-{i}", "list", status="unsafe", error="only pickle files")
                for i in range(40)
            ]
        )
        for _ in range(1234):
            row = state.claim()
            state.finish(row.target, "ok", error=None, header=None, result=None, nbytes=0)
        display = Display(True)
        display.downloaded = 123_456_789
        display.update(state, force=True)
    screen = io.StringIO()
    Console(file=screen, width=80, color_system=None, force_terminal=True).print(
        Group(*display.progress.get_renderables())
    )
    bar, counts = screen.getvalue().splitlines()
    assert bar.startswith("crawl ━") and "1274/1540" in bar
    assert counts.startswith("ok 1234 · failed 0 · skipped 0 · unsafe/error/no-lora 40") and len(counts) <= 80


def test_a_hostile_dtype_is_an_error_shown_as_text(tmp_path, capsys):
    from reader_helpers import raw_file

    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    header = {
        f"{name}.lora_A.weight": {
            "dtype": "[bold red]X[/bold red]\x1b[2J",
            "shape": [2, 3],
            "data_offsets": [0, 24],
        },
        f"{name}.lora_B.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [24, 56]},
    }
    path = tmp_path / "dtype.safetensors"
    path.write_bytes(raw_file(header, b"\0" * 56))
    code, out, err = lora_scan(capsys, "inspect", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1 and "[bold red]X" in err.replace("\\[", "[")
    _assert_inert(err)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=80))
def test_any_string_shown_is_one_visible_line_that_markup_leaves_alone(text):
    import io

    from rich.console import Console

    from lora_wise._text import shown

    plain = shown(text, markup=False)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in plain)
    screen = io.StringIO()
    console = Console(file=screen, soft_wrap=True, emoji=False, highlight=False)
    console.print(shown(text))  # never a MarkupError
    # Markup escaping changes nothing that is printed, but for a trailing backslash, which rich
    # doubles so that it cannot escape the markup a caller appends after it.
    trailing = "\\" if plain.endswith("\\") else ""
    assert screen.getvalue() == plain + trailing + "\n"


def test_dash_h_is_help_on_every_lora_wise_command_invoked_alone_too(capsys):
    """Each command carries its own settings: click keeps the help option of a command's first
    invocation, so a command first run alone (as tests and embedding apps do) must know ``-h`` too."""
    for name, command in lora_wise_cli.commands.items():
        assert run(command, ["-h"], prog_name=name) == 0, name
        assert "Usage:" in capsys.readouterr().out, name
        assert run(lora_wise_cli, [name, "-h"], prog_name="lora-wise") == 0, name
        capsys.readouterr()
