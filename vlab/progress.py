"""Live per-terminal progress on stderr: a board redrawn in place on a TTY, plain timestamped
lines (one per change) in a CI log."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from vlab.watch.guesttext import inert

T0 = time.monotonic()  # every progress line counts from the start of the vlab command
Say = Callable[[str], None]  # how a step tells the user what it does


def stderr_progress() -> Say:
    def say(text: str) -> None:
        # A step's text can carry a guest's or a builder's words: shown, never obeyed.
        print(f"[{time.monotonic() - T0:5.1f}s] {inert(text)}", file=sys.stderr, flush=True)

    return say

# The phases a terminal goes through, in order; a verdict ends it.
PHASES = ("building", "defined", "loader", "address", "transfer", "kernel", "initrd", "dhcp",
          "nfs-mounted")


class Board:
    def __init__(self, names: list[str], stream: TextIO | None = None,
                 tty: bool | None = None, start: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.start = T0 if start is None else start
        self.names = names
        self.width = max(len(n) for n in names) if names else 0
        self.phase = dict.fromkeys(names, PHASES[0])
        self.since = dict.fromkeys(names, self.start)  # when the terminal was booted
        self.final: dict[str, str] = {}
        self.drawn = 0
        self.lock = threading.Lock()
        self.ticker: threading.Thread | None = None
        self.stopped = threading.Event()

    def booted(self, name: str, at: float) -> None:
        self.since[name] = at
        self.set(name, "defined")

    def set(self, name: str, phase: str) -> None:
        """Move a terminal on; phases only go forward."""
        with self.lock:
            if name in self.final or PHASES.index(phase) <= PHASES.index(self.phase[name]):
                return
            self.phase[name] = phase
            self._show(name)

    def done(self, name: str, verdict: str, seconds: float) -> None:
        with self.lock:
            self.final[name] = f"{verdict} after {seconds} s"
            self._show(name)

    def _show(self, name: str) -> None:
        if self.tty:
            self._redraw()
        else:
            text = self.final.get(name) or self.phase[name]
            self.stream.write(f"[{time.monotonic() - self.start:5.1f}s] {name}: {text}\n")
            self.stream.flush()

    def _line(self, name: str) -> str:
        if name in self.final:
            return f"  {name:<{self.width}}  {self.final[name]}"
        secs = time.monotonic() - self.since[name]
        return f"  {name:<{self.width}}  {self.phase[name]:<12} {secs:5.1f}s"

    def _redraw(self) -> None:
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        lines = "".join(f"\x1b[2K{self._line(n)}\n" for n in self.names)
        self.stream.write(up + lines)
        self.stream.flush()
        self.drawn = len(self.names)

    def __enter__(self) -> Board:
        if self.tty:  # the seconds tick on a TTY even when nothing else happens
            def tick() -> None:
                while not self.stopped.wait(0.5):
                    with self.lock:
                        self._redraw()

            self.ticker = threading.Thread(target=tick, daemon=True)
            self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join()
            with self.lock:
                self._redraw()
