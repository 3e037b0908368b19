"""The one way a string from outside (a file, a server, the command line) reaches a terminal.

Tensor names, dtypes, metadata such as ``modelspec.title``, server messages and even the target
the user typed are data, not instructions. Printed as they are, ``[red]`` or ``[/x]`` would be
read as rich markup (or crash it), an ESC would start a terminal escape sequence (colours,
cursor moves, OSC 8 hyperlinks that hide where a link goes, a retitled window), a newline would
forge a second output line, and a lone surrogate would crash the encoder. :func:`shown` makes
any value safe for a rich console; JSON output needs nothing (``json.dumps`` escapes controls).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.markup import escape as _escape_markup

#: Categories spelled out: controls (ESC, BEL, CR, LF, TAB, C1...), format characters (bidirectional
#: overrides and isolates, zero-width marks, tag characters), lone surrogates, line and paragraph
#: separators. Spaces, private-use and not-yet-assigned characters print as themselves.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _spelled(text: str) -> str:
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_visible(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def shown(value: object, *, markup: bool = True) -> str:
    """``value`` as one line of plain, visible text: every control or invisible character spelled
    as a ``\\xNN`` / ``\\uNNNN`` escape, and (with ``markup``, for rich consoles) every ``[``
    that could open a markup tag escaped. Rich prints the result as the plain text, except that a
    trailing backslash shows doubled (escaped, so that it cannot escape markup put after it)."""
    text = _spelled(str(value))
    return _escape_markup(text) if markup else text


def shown_tree(data: Any) -> Any:
    """``data`` with every string in it, keys too, passed through :func:`shown`: for renderers that
    print the values of a summary as they find them."""
    if isinstance(data, dict):
        return {shown(k) if isinstance(k, str) else k: shown_tree(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [shown_tree(v) for v in data]
    return shown(data) if isinstance(data, str) else data
