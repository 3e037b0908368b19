"""PEFT's ``alpha_pattern`` / ``rank_pattern`` key matching, without a backtracking regex engine.

PEFT (``peft.utils.other.get_pattern_key``) picks the first key for which
``re.match(rf"(.*\\.)?({key})$", module_name)`` succeeds. The keys come from an untrusted
``adapter_config.json`` or ``lora_adapter_metadata`` header, and Python's ``re`` backtracks:
``(a+)+b`` on a long name runs for hours and ignores Ctrl-C. So a key is matched here the same
way, by a Thompson NFA simulated one character at a time (Pike's method, as RE2 does): time
is linear in the name and in the pattern, whatever the pattern. Keys without any regex
syntax, by far the common case, are plain suffix comparisons. Constructs an NFA cannot run
(back-references, look-arounds) are refused as a malformed config, never handed to ``re``.

Caps, all documented in ``docs/security.md``: a key of at most :data:`MAX_PATTERN_CHARS`
characters, compiling to at most :data:`MAX_STATES` NFA states, and at most
:data:`MAX_STEPS` state visits over a whole file's matching.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    from re import _constants as sre_c
    from re import _parser as sre_parse
else:  # pragma: no cover - Python 3.10
    import sre_constants as sre_c
    import sre_parse

from lora_wise.errors import InvalidLoraFile

MAX_PATTERN_CHARS = 256  # PEFT keys are module names; longer is a hostile config
MAX_STATES = 4096  # after expanding counted repeats such as ``a{1000}``
MAX_STEPS = 20_000_000  # state visits for one file's pattern matching: well under a second in total
_SPECIAL = frozenset(".^$*+?{}[]\\|()")

# NFA nodes: ("char", predicate, next) consumes one character; ("split", [targets]) is an
# epsilon fork; ("begin"/"end", next) are anchors; ("accept",).
Node = tuple


def _bad(key: str, why: str) -> InvalidLoraFile:
    return InvalidLoraFile(f"LoRA config pattern key {key[:40]!r}: {why}")


def _category(cat) -> Callable[[str], bool]:
    tests = {
        sre_c.CATEGORY_DIGIT: str.isdigit,
        sre_c.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
        sre_c.CATEGORY_SPACE: str.isspace,
    }
    for positive, negative in (
        (sre_c.CATEGORY_DIGIT, sre_c.CATEGORY_NOT_DIGIT),
        (sre_c.CATEGORY_WORD, sre_c.CATEGORY_NOT_WORD),
        (sre_c.CATEGORY_SPACE, sre_c.CATEGORY_NOT_SPACE),
    ):
        if cat == positive:
            return tests[positive]
        if cat == negative:
            test = tests[positive]
            return lambda c: not test(c)
    raise ValueError(f"character category {cat}")


def _is(char: str) -> Callable[[str], bool]:
    return char.__eq__


def _is_not(char: str) -> Callable[[str], bool]:
    return char.__ne__


def _char_class(items) -> Callable[[str], bool]:
    negate, tests = False, []
    for op, av in items:
        if op is sre_c.NEGATE:
            negate = True
        elif op is sre_c.LITERAL:
            tests.append(_is(chr(av)))
        elif op is sre_c.RANGE:
            tests.append(lambda c, lo=av[0], hi=av[1]: lo <= ord(c) <= hi)
        elif op is sre_c.CATEGORY:
            tests.append(_category(av))
        else:
            raise ValueError(f"{op} in a character class")
    return lambda c: any(t(c) for t in tests) != negate


@dataclass
class _Builder:
    """Thompson construction, built back to front: each piece is compiled with its continuation."""

    key: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, node: Node) -> int:
        if len(self.nodes) >= MAX_STATES:
            raise _bad(self.key, f"compiles to more than {MAX_STATES} states")
        self.nodes.append(node)
        return len(self.nodes) - 1

    def seq(self, items, nxt: int) -> int:
        for op, av in reversed(list(items)):
            nxt = self.item(op, av, nxt)
        return nxt

    def item(self, op, av, nxt: int) -> int:
        if op is sre_c.LITERAL:
            return self.add(("char", _is(chr(av)), nxt))
        if op is sre_c.NOT_LITERAL:
            return self.add(("char", _is_not(chr(av)), nxt))
        if op is sre_c.ANY:
            return self.add(("char", lambda c: c != "\n", nxt))
        if op is sre_c.IN:
            return self.add(("char", _char_class(av), nxt))
        if op is sre_c.SUBPATTERN:
            return self.seq(av[-1], nxt)
        if op is sre_c.BRANCH:
            return self.add(("split", [self.seq(branch, nxt) for branch in av[1]]))
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT) or op is getattr(sre_c, "POSSESSIVE_REPEAT", None):
            return self.repeat(*av, nxt)
        if op is sre_c.AT and av in (sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING):
            return self.add(("begin", nxt))
        if op is sre_c.AT and av in (sre_c.AT_END, sre_c.AT_END_STRING):
            return self.add(("end", nxt))
        raise ValueError(f"{str(op).lower()} is not supported")

    def repeat(self, low: int, high: int, body, nxt: int) -> int:
        if high is sre_c.MAXREPEAT or high == sre_c.MAXREPEAT:
            loop = self.add(("split", []))
            self.nodes[loop] = ("split", [self.seq(body, loop), nxt])
            start = loop
        else:
            start = nxt
            for _ in range(high - low):  # optional copies: each may stop here
                start = self.add(("split", [self.seq(body, start), nxt]))
                nxt = start
        for _ in range(low):
            start = self.seq(body, start)
        return start


@dataclass
class PatternMatcher:
    """Matches module names against a config's pattern keys, PEFT's way, in bounded time."""

    keys: list[str]
    steps: int = 0
    _compiled: dict[str, tuple[list[Node], int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.keys:
            if len(key) > MAX_PATTERN_CHARS:
                raise _bad(key, f"{len(key)} characters (more than {MAX_PATTERN_CHARS})")
            if _SPECIAL.isdisjoint(key):
                continue
            try:
                tree = sre_parse.parse(rf"(?:.*\.)?(?:{key})")
                builder = _Builder(key)
                accept = builder.add(("accept",))
                start = builder.seq(tree, builder.add(("end", accept)))
            except InvalidLoraFile:
                raise
            except (sre_c.error, ValueError, RecursionError, OverflowError) as exc:
                raise _bad(key, f"not a pattern PEFT can use safely ({exc})") from None
            self._compiled[key] = (builder.nodes, start)

    def first_match(self, name: str) -> str | None:
        """The first key matching ``name`` (as ``get_pattern_key`` would pick it), else None."""
        for key in self.keys:
            if self.matches(key, name):
                return key
        return None

    def matches(self, key: str, name: str) -> bool:
        compiled = self._compiled.get(key)
        if compiled is None:  # a literal key: PEFT's regex reduces to "the name or a dotted suffix"
            return name == key or name.endswith("." + key)
        nodes, start = compiled
        states = self._closure(nodes, [start], 0, len(name))
        for pos, char in enumerate(name):
            moved = [node[2] for node in (nodes[s] for s in states) if node[0] == "char" and node[1](char)]
            states = self._closure(nodes, moved, pos + 1, len(name))
            if not states:
                return False
        return any(nodes[s][0] == "accept" for s in states)

    def _closure(self, nodes: list[Node], seeds: list[int], pos: int, end: int) -> set[int]:
        """The states reachable without consuming a character; anchors pass only where they hold."""
        seen: set[int] = set()
        stack = list(seeds)
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise InvalidLoraFile(f"LoRA config patterns need more than {MAX_STEPS} matching steps")
            node = nodes[state]
            kind = node[0]
            if kind == "split":
                stack.extend(node[1])
            elif (kind == "begin" and pos == 0) or (kind == "end" and pos == end):
                stack.append(node[1])
        return seen
