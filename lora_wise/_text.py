"""The one way a string from outside (a file, a server, the command line) reaches a terminal.

Tensor names, dtypes, metadata such as ``modelspec.title``, server messages and even the target
the user typed are data, not instructions. Printed as they are, ``[red]`` or ``[/x]`` would be
read as rich markup (or crash it), an ESC would start a terminal escape sequence (colours,
cursor moves, OSC 8 hyperlinks that hide where a link goes, a retitled window), a newline would
forge a second output line, and a lone surrogate would crash the encoder. :func:`shown` makes
any value safe for a rich console; JSON output needs nothing (``json.dumps`` escapes controls).
"""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape as _escape_markup

# C0 and C1 controls (ESC, BEL, CR, LF, TAB...), DEL, lone surrogates, and the invisible
# characters that reorder or hide text (bidirectional overrides and isolates, zero-width marks).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object, *, markup: bool = True) -> str:
    """``value`` as one line of plain, visible text: every control or invisible character spelled
    as a ``\\xNN`` / ``\\uNNNN`` escape, and (with ``markup``, for rich consoles) every ``[``
    that could open a markup tag escaped."""
    text = _UNPRINTABLE.sub(_visible, str(value))
    return _escape_markup(text) if markup else text


def shown_tree(data: Any) -> Any:
    """``data`` with every string in it, keys too, passed through :func:`shown`: for renderers that
    print the values of a summary as they find them."""
    if isinstance(data, dict):
        return {shown(k) if isinstance(k, str) else k: shown_tree(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [shown_tree(v) for v in data]
    return shown(data) if isinstance(data, str) else data
