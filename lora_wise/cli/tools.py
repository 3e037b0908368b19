"""What both command-line tools share: the exit-code contract and one-line error reporting.

Exit codes (modelscan-style, documented in every ``--help``):
0 ok, 2 error in the input (bad, hostile, unreachable or unsafe file), 3 no LoRA weights found,
4 usage error. Nothing the user can cause ends in a traceback; a bug still does, on purpose.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console

from lora_wise.errors import LoraWiseError, one_line

EXIT_OK, EXIT_INPUT, EXIT_NO_LORA, EXIT_USAGE = 0, 2, 3, 4

EXIT_CODES_HELP = (
    "\b\nExit codes:\n  0  ok\n  2  error in the input (malformed, hostile, unsafe or unreachable)\n"
    "  3  no LoRA weights found\n  4  usage error"
)

err_console = Console(stderr=True)
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``123456`` -> bytes."""
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SIZE_UNITS else text
    try:
        return int(float(number) * unit)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 500M or 2G") from None



def run(group: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run a click command with our exit-code contract instead of click's."""
    try:
        rv = group.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_INPUT
    except LoraWiseError as exc:
        err_console.print(f"[bold red]error:[/] {one_line(exc)}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return rv if isinstance(rv, int) else EXIT_OK


def print_json(data: Any) -> None:
    """JSON on stdout, for machines: plain ``print`` so no markup or wrapping sneaks in."""
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    return str(obj)


def main_for(group: click.Command, prog_name: str) -> None:
    sys.exit(run(group, prog_name=prog_name))
