"""Imported first by the crawl's forkserver (``dispatch._preload``), and nowhere else.

It asks Linux to SIGKILL the forkserver the moment the crawl that started it dies (however it dies:
Ctrl-C, ``kill -9``). Without it the forkserver, which holds torch and the scanner, only notices
later and then tears its interpreter down slowly, keeping the crawl's stderr open meanwhile.
"""

from __future__ import annotations

import sys


def die_with_parent() -> None:
    """``PR_SET_PDEATHSIG`` = SIGKILL for this process (Linux; elsewhere nothing)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules:  # the forkserver, and only it
    die_with_parent()
