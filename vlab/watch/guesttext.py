"""Text that a guest, an image or a builder chose: read bounded, matched in linear time,
printed inert.

A console line is whatever the guest's kernel and programs wrote, and a builder's output is
the image's code talking; neither may stall vlab or reach the operator's terminal as
anything but characters. Patterns over such text are compiled by RE2 (google-re2), whose
matching is linear in the length of the text whatever the pattern; Python's `re`
backtracks, and a few of the judge's patterns took seconds on one long line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import re2

if TYPE_CHECKING:
    Pattern: TypeAlias = re2._Regexp[str]
else:
    Pattern = re2._Regexp

# What vlab's guest side (its initrd, the root's init or unit, rendered from domains/) prints
# for the judge to read: the proof of the NFS root, a failure it saw, the terminal up, and
# (then the terminal's name and its SSH host key) the key.
MARKER = "VLAB-NFSROOT-OK"
FAIL_MARKER = "VLAB-FAIL"
READY_MARKER = "VLAB-TERMINAL-UP"
SSH_MARKER = "VLAB-SSH-HOSTKEY"

# The longest line the judge and the report read of a console: a guest's longer line is cut
# (no line vlab decides on is near this long), and a line that never ends is read in pieces.
LINE_MAX = 16 << 10

# C0 controls but newline and tab, DEL, C1 controls (0x9b is a one-byte CSI), and the
# Unicode marks that reorder or hide what follows (bidirectional overrides, line and
# paragraph separators): each is shown by its code, never sent to the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes of a log a guest wrote (a console, dnsmasq's log): never more
    in memory, however much the guest printed. OSError if it cannot be read."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - limit))
        return f.read(limit)


def pattern(regex: str) -> Pattern:
    """A pattern for guest text (RE2 syntax: no backreferences, no lookaround)."""
    return re2.compile(regex)


def inert(text: str) -> str:
    """text with every control character shown as its escape: an escape sequence a guest
    printed (a clipboard write, a terminal reset, a title) reaches no terminal as one."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
