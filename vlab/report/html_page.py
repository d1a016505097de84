"""The boot report: one self-contained HTML page per lab (inline CSS and SVG, nothing fetched),
with each terminal's verdict, a timeline of its measured phases on a shared time axis, and its
console with the decisive line marked (pure: a report dict and the consoles in, a page out)."""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.artifacts import templates
from vlab.report.outcome import carried_on
from vlab.watch.guesttext import tail
from vlab.watch.judge import ANSI, OK, phase_of

# The first stretch, before the console shows anything vlab knows: firmware (and, with direct
# kernel boot, the kernel's own quiet start). What follows the NFS mount is the root's own
# userspace, until the verdict.
START = "firmware"
AFTER_MOUNT = "userspace"
PHASE_TEXT = {"loader": "loader", "address": "boot DHCP", "transfer": "transfer",
              "kernel": "kernel", "initrd": "initrd", "dhcp": "DHCP", "nfs-mounted": AFTER_MOUNT}
MAX_CONSOLE = 256 << 10  # bytes of console shown per terminal (its end; the rest folded away)
BAR_WIDTH = 720  # px of the longest boot


@dataclass(frozen=True)
class Segment:
    phase: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 1)


def segments(phases: list[list[Any]], seconds: float | None) -> list[Segment]:
    """A terminal's phases as stretches of time: each from the second its line came to the
    next one's, the last to the verdict."""
    end = float(seconds or 0.0)
    marks = [(PHASE_TEXT.get(str(name), str(name)), float(at)) for name, at in phases
             if float(at) <= end]
    if not marks or marks[0][1] > 0:
        marks.insert(0, (START, 0.0))
    out = []
    for (phase, start), nxt in zip(marks, [*marks[1:], (None, end)], strict=True):
        out.append(Segment(phase, start, max(start, nxt[1])))
    return out


@dataclass(frozen=True)
class FaultMark:
    """A [[fault]] on a terminal's timeline: from when it began to when it ended, in seconds
    from the terminal's boot, with the terminal's outcome."""

    kind: str
    start: float
    end: float
    verdict: str
    carried_on: str  # how the terminal carried on, if it did (outcome.carried_on)


def fault_marks(t: dict[str, Any]) -> list[FaultMark]:
    booted = float(t.get("booted_at") or 0.0)
    return [FaultMark(str(f["kind"]), round(float(f["began"]) - booted, 1),
                      round(float(f["ended"]) - booted, 1), str(f["verdict"]),
                      carried_on(f))
            for f in t.get("faults") or []
            if f.get("began") is not None]  # a fault not made has no place on it


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _text(value: object) -> str:
    """A guest's words as page text: no control characters (an escape's remains, a bell)."""
    return CONTROL.sub("", str(value))


def _console(name: str, path: str, decisive: str) -> str:
    """The console as HTML text: escapes stripped, its end only if long, the decisive line
    marked and each phase's first line an anchor (the guest wrote it all: escaped, never
    markup)."""
    try:
        data = tail(Path(path), MAX_CONSOLE + 1)
    except OSError:
        return "(no console log)"
    folded = len(data) > MAX_CONSOLE
    text = _text(ANSI.sub("", data[-MAX_CONSOLE:].decode(errors="replace")).replace("\r", "\n"))
    lines = [ln for ln in text.split("\n") if ln.strip()]
    marked = False
    out = []
    for ln in reversed(lines):  # the decisive line is the last one that says it
        escaped = html.escape(ln)
        if decisive and not marked and decisive.strip() and decisive.strip() in ln:
            escaped = f'<mark id="decisive-{html.escape(name)}">{escaped}</mark>'
            marked = True
        out.append(escaped)
    out.reverse()
    seen = set()
    for i, ln in enumerate(lines):
        if (phase := phase_of(ln)) is not None and phase not in seen:
            seen.add(phase)
            out[i] = f'<span id="{html.escape(name)}-{phase}">{out[i]}</span>'
    head = f"… the first {len(data) - MAX_CONSOLE} bytes are not shown …\n" if folded else ""
    return head + "\n".join(out)


def page(rep: dict[str, Any]) -> str:
    """The report of one lab's last boot (the report vlab up, check and status make)."""
    terminals = sorted(rep["terminals"], key=lambda t: (t.get("verdict") == OK, t["name"]))
    marks = {t["name"]: fault_marks(t) for t in terminals}
    longest = max([float(t.get("seconds") or 0) for t in terminals]
                  + [m.end for ms in marks.values() for m in ms] + [1.0])
    rows = []
    for t in terminals:
        segs = segments(t.get("phases") or [], t.get("seconds"))
        rows.append({
            "faults": marks[t["name"]],
            "t": {**t, "line": _text(t.get("line") or ""), "cause": _text(t.get("cause") or "")},
            "ok": t.get("verdict") == OK,
            "segments": segs,
            "scale": BAR_WIDTH / longest,
            "console": _console(t["name"], t.get("console_log", ""), t.get("line") or ""),
            "seen": [_text(line) for line in t.get("seen") or []],
        })
    failed = sum(1 for r in rows if not r["ok"])
    return templates.template("report/report.html.j2", rep=rep, rows=rows, failed=failed,
                           longest=longest, bar_width=BAR_WIDTH,
                           made=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
