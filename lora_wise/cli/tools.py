"""What both command-line tools share: the exit-code contract, one-line errors, consoles, ``-o``.

Exit codes (modelscan's contract, documented in every ``--help``; the numbers live in
``lora_wise.errors``): 0 clean, 1 findings, 2 error in the input or the network, 3 no LoRA weights
found, 4 usage error. Nothing the user, a file or a server can cause ends in a traceback; a bug
still does, on purpose. Every error is ONE line on stderr, whatever the terminal width, and every
outside string in it goes through :func:`lora_wise._text.shown`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console

from lora_wise._text import shown
from lora_wise.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_NO_LORA,
    EXIT_OK,
    EXIT_USAGE,
    LoraWiseError,
    one_line,
)

__all__ = [
    "CONTEXT_SETTINGS",
    "DOCS_HINT",
    "EXIT_CODES_HELP",
    "EXIT_FINDINGS",
    "EXIT_INPUT",
    "EXIT_NO_LORA",
    "EXIT_OK",
    "EXIT_USAGE",
    "console",
    "error",
    "exit_codes_help",
    "json_text",
    "main_for",
    "output_option",
    "parse_size",
    "print_json",
    "quiet_option",
    "run",
    "shown",
]


def exit_codes_help(
    clean: str = "clean", findings: str = "findings (an unsafe pickle file, a declared-vs-weights conflict)"
) -> str:
    """The exit-code section of a ``--help``; a command whose 0 and 1 mean more says so here."""
    return (
        f"\b\nExit codes:\n  0  {clean}\n  1  {findings}\n"
        "  2  error in the input or the network (malformed, hostile or unreachable)\n"
        "  3  no LoRA weights found\n  4  usage error"
    )


EXIT_CODES_HELP = exit_codes_help()

#: Where the documentation is for someone who has only the installed package.
DOCS_HINT = "Docs: the `docs` command lists the documents installed with the package (`docs crawl`, ...)."

#: ``-h`` as well as ``--help`` on every command (click's default is ``--help`` alone).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A console for our own messages: no emoji codes or auto-highlighting in outside strings, and
    on stderr no wrapping (an error stays one line, even piped at 80 columns); ``quiet`` prints
    nothing (``--quiet``)."""
    return Console(stderr=stderr, emoji=False, highlight=False, soft_wrap=stderr, quiet=quiet)


def error(message: str) -> None:
    """One line on stderr: ``error: MESSAGE``, with the message shown safely."""
    console(stderr=True).print(f"[bold red]error:[/] {shown(one_line(message))}")


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``123456`` -> bytes."""
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SIZE_UNITS else text
    try:
        return int(float(number) * unit)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 500M or 2G") from None


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "the command"
    return f"{one_line(exc.format_message())} (see {where} --help)"


#: ``on_error(args, message, exit_code)``: a tool's extra report of an error (``lora-scan``'s JSON).
OnError = Callable[[list[str], str, int], None]


def run(
    group: click.Command,
    args: list[str] | None = None,
    prog_name: str | None = None,
    on_error: OnError | None = None,
) -> int:
    """Run a click command with our exit-code contract instead of click's."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        rv = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        console(stderr=True).print("interrupted")
        return 130
    except click.UsageError as exc:
        message, code = _usage_line(exc), EXIT_USAGE
    except click.ClickException as exc:
        message, code = one_line(exc.format_message()), EXIT_INPUT
    except LoraWiseError as exc:
        message, code = one_line(exc), exc.exit_code
    else:
        return rv if isinstance(rv, int) else EXIT_OK
    error(message)
    if on_error is not None:
        on_error(argv, message, code)
    return code


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, default=_json_default)


def print_json(data: Any) -> None:
    """JSON on stdout, for machines: plain ``print`` so no markup or wrapping sneaks in (``json``
    escapes control characters, so outside strings need no other escaping here)."""
    click.echo(json_text(data))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    return str(obj)


@contextlib.contextmanager
def _stdout_to(path: str | None) -> Iterator[None]:
    """Everything the command prints to stdout goes to ``path`` instead, written atomically once
    the command has finished (nothing is written if it fails)."""
    if path is None:
        yield
        return
    from lora_wise._files import atomic_write_text

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    atomic_write_text(path, buffer.getvalue())


def output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-o/--output FILE``: write what the command would print (JSON or text) to FILE."""

    @click.option(
        "-o",
        "--output",
        "output",
        type=click.Path(dir_okay=False),
        default=None,
        help="Write the output (the JSON with --json, else the text) to FILE instead of stdout.",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, output: str | None, **kwargs: Any) -> Any:
        with _stdout_to(output):
            return command(*args, **kwargs)

    return wrapper


#: ``--quiet`` on every long command: no progress display (errors are still printed).
quiet_option = click.option("--quiet", is_flag=True, help="No progress display (errors are still printed).")


def main_for(group: click.Command, prog_name: str, on_error: OnError | None = None) -> None:
    sys.exit(run(group, prog_name=prog_name, on_error=on_error))
