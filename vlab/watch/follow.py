"""Follow a terminal's serial console log as it grows and hand it to the judge (judge.py):
whole lines, the guest's CPU time and the domain's state sampled through callables."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from vlab.errors import VlabError
from vlab.nodes.virt import DEAD
from vlab.watch.guesttext import LINE_MAX, Pattern, tail
from vlab.watch.judge import (
    ADDRESS_RE,
    ANSI,
    CPU_POLL,
    INTERRUPTED,
    Judge,
    Verdict,
    clean,
)

# Console bytes read at one poll at most (the rest at the next).
READ_MAX = 4 << 20
# With lifecycle events (died()), the domain's state is asked only this often, as a fallback.
STATE_FALLBACK = 5.0
EVENT_GRACE = 1.0
TAIL_MAX = 1 << 20


def complete_lines(console_log: Path) -> str:
    """The last TAIL_MAX bytes of a console log, up to its last newline ("" if unreadable):
    the guest may be halfway through a line (an address, a host key), which is not read
    until it ends."""
    try:
        data = tail(console_log, TAIL_MAX)
    except OSError:
        return ""
    return data[:data.rfind(b"\n") + 1].decode(errors="replace")


def address_from_console(console_log: Path) -> str | None:
    """The last address the terminal's initrd reported on this console log."""
    found = ADDRESS_RE.findall(complete_lines(console_log))
    return found[-1] if found else None


class Follower:
    """Reads a console log file as it grows, line by line. It works on bytes and decodes
    and strips escapes per whole line only: a UTF-8 character or an escape split across two
    reads comes out whole, and a half-written line (an address, a host key) is never read."""

    def __init__(self, path: Path, stamps: Path | None = None,
                 started: float | None = None) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.grew = False  # the last read found new bytes, whole lines or not
        # Arrival times beside the log: "SECONDS OFFSET" lines, the bytes up to OFFSET had
        # come SECONDS after `started` (the boot report's timeline reads any line's time).
        self.stamps = stamps.open("w") if stamps is not None else None
        self.started = time.monotonic() if started is None else started

    def lines(self) -> list[str]:
        self.grew = False
        try:
            with self.path.open("rb") as f:
                if f.seek(0, 2) < self.offset:  # truncated: a new boot
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read(READ_MAX)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        self.grew = bool(data)
        if data and self.stamps is not None:
            self.stamps.write(f"{time.monotonic() - self.started:.2f} {self.offset}\n")
            self.stamps.flush()
        *complete, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > LINE_MAX:  # a line that never ends is read in pieces
            complete.append(self.partial)
            self.partial = b""
        return [clean(raw) for raw in complete]

    def close(self) -> None:
        if self.stamps is not None:
            self.stamps.close()

    def pending(self) -> str:
        """The unfinished line as it shows now (the last of its in-place redraws)."""
        text = ANSI.sub("", self.partial[-4096:].decode(errors="replace"))
        return next((part for part in reversed(text.split("\r")) if part.strip()), "")


def _state(state: Callable[[], str]) -> str:
    """The domain's state; "unknown" (alive, as far as vlab knows) if libvirt cannot say."""
    try:
        return state()
    except VlabError:
        return "unknown"


def watch(console_log: Path, *, started: float, timeout: float, stall: float,
          ready: Pattern | None = None, settle: float = 0.0, poll: float = 0.05,
          stop: threading.Event | None = None,
          on_phase: Callable[[str], None] | None = None,
          cpu: Callable[[], tuple[float, float] | None] | None = None,
          state: Callable[[], str] | None = None,
          died: Callable[[], str | None] | None = None,
          almost: Pattern | None = None, stamps: Path | None = None) -> Verdict:
    """Follow one console until the judge decides: a decisive line, `stall` s of silence
    with the guest idle (cpu() gives the last sample of its CPU time, (when, seconds), None
    if there is none yet), the domain no longer running, or `timeout` s. died() says how the
    domain died once a libvirt event said so (asked at every poll); state() says "running"
    while it is (asked once a second, or every STATE_FALLBACK s when died() is given). cpu
    is asked once a second; each and state must answer at once (virt.Polled). With `stop`
    set (Ctrl-C in the main thread), stop at the next poll. With `stamps`, when the console's
    bytes came is written there (Follower)."""
    follower = Follower(console_log, stamps, started)
    try:
        return _follow(follower, started=started, timeout=timeout, stall=stall, ready=ready,
                       settle=settle, poll=poll, stop=stop, on_phase=on_phase, cpu=cpu,
                       state=state, died=died, almost=almost)
    finally:
        follower.close()


def _follow(follower: Follower, *, started: float, timeout: float, stall: float,
            ready: Pattern | None, settle: float, poll: float,
            stop: threading.Event | None, on_phase: Callable[[str], None] | None,
            cpu: Callable[[], tuple[float, float] | None] | None,
            state: Callable[[], str] | None,
            died: Callable[[], str | None] | None, almost: Pattern | None) -> Verdict:
    judge = Judge(started=started, timeout=timeout, stall=stall, ready=ready, settle=settle,
                  on_phase=on_phase, almost=almost)
    sampled = asked = fed = 0.0
    every = STATE_FALLBACK if died is not None else CPU_POLL
    polled: tuple[float, str] | None = None  # when the state said dead, and what it said
    while stop is None or not stop.is_set():
        now = time.monotonic()
        gone = None  # read what it printed last before deciding on it
        if died is not None and (how := died()) is not None:
            gone = f"{how} (libvirt event)"
        if now - sampled >= CPU_POLL:
            sampled = now
            if cpu is not None and (sample := cpu()) is not None and sample[0] > fed:
                fed = sample[0]  # a sample is taken into account once, at its own time
                judge.cpu(*sample)
        if gone is None and polled is None and state is not None and now - asked >= every:
            asked = now
            if (seen := _state(state)) in DEAD:
                polled = (now, f"{seen} (libvirt)")
        # libvirt may drop a domain a moment before its event comes: with events, the
        # state's word waits EVENT_GRACE s for the event's, which says how it died.
        if gone is None and polled is not None and (
                died is None or now - polled[0] >= EVENT_GRACE):
            gone = polled[1]
        lines = follower.lines()
        if follower.grew:
            judge.output(now, follower.pending())
        for line in lines:
            if (verdict := judge.feed(line, now)) is not None:
                return verdict
        if gone is not None:
            return judge.stopped(now, gone)
        if (verdict := judge.tick(now)) is not None:
            return verdict
        time.sleep(poll)
    # Stopped from outside: the command is being interrupted, and no report is made of this.
    return judge.verdict(INTERRUPTED, time.monotonic(), "interrupted")
