"""Watch a terminal's serial console and turn it into a verdict.

The engine is pure: feed it lines, it answers with a verdict on the first decisive line
(the proof of the NFS root, or a recognised failure), so failures are reported within a
poll interval of the line that shows them, never at the timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlab.plan import FAIL_MARKER, MARKER, READY_MARKER

OK = "ok"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What a root's own init says once the terminal is up, by kind of init.
READY_BUSYBOX = re.compile(re.escape(READY_MARKER))
READY_SYSTEMD = re.compile(r"Reached target .*Multi-User System|Reached target multi-user\.target")
TIMEOUT = "timeout"
STALLED = "stalled"

PROOF_RE = re.compile(
    re.escape(MARKER) + r" server=(?P<server>\S*) export=(?P<export>\S*) "
    r"fstype=(?P<fstype>\S+) options=(?P<options>\S+)(?: client=(?P<client>\S+))?"
)

# Milestones on the way to the verdict, for the progress board (direct boot, PXE, builders).
PHASE_LINES = (
    ("kernel", re.compile(r"Linux version|vlab-initrd: kernel command line|Run /init as init|"
                          r"Loading, please wait|dracut-")),
    ("dhcp", re.compile(r"lease of \S+ obtained|\(lease from|IP-Config: \S+ complete|"
                        r"dhcp.*(bound|lease)|DHCPACK")),
    ("nfs-mounted", PROOF_RE),
)


# Where a terminal's console says which address DHCP gave it: vlab's initrd ("vlab-initrd:
# eth0 is 10.0.1.57/24"), klibc's ipconfig ("address: 10.0.1.57" under initramfs-tools), and
# the NFSv4 proof line of every builder ("clientaddr=10.0.1.57").
ADDRESS_RE = re.compile(r"(?:vlab-initrd: \S+ is |^ *address: |clientaddr=)"
                        r"(\d+\.\d+\.\d+\.\d+)\b", re.MULTILINE)


def address_from_console(console_log: Path) -> str | None:
    """The last address the terminal's initrd reported on this console log."""
    try:
        found = ADDRESS_RE.findall(console_log.read_text(errors="replace"))
    except OSError:
        return None
    return found[-1] if found else None


def phase_of(line: str) -> str | None:
    return next((name for name, pattern in PHASE_LINES if pattern.search(line)), None)


# First match wins, so specific causes come before the generic lines that follow them.
FAILURES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("nfs-no-such-export", r"mount: mounting \S+ on \S+ failed: No such file or directory"),
        ("nfs-access-denied",
         r"mount: mounting \S+ on \S+ failed: (Permission denied|Operation not permitted)"),
        ("nfs-unreachable",
         r"mount: mounting \S+ on \S+ failed: (Connection refused|No route to host|"
         r"Network is unreachable|Connection timed out|Input/output error|Host is down)"
         r"|nfs: server \S+ not responding"),
        ("nfs-version-unsupported",
         r"mount: mounting \S+ on \S+ failed: (Protocol not supported|Invalid argument|"
         r"Protocol family not supported)|nfs: Unknown parameter|Program version wrong"),
        ("nfs-mount-failed", r"mount: mounting \S+ on \S+ failed"),
        ("dhcp-failed", re.escape(FAIL_MARKER) + r" dhcp-failed|No more network devices|"
         r"No configuration methods succeeded"),
        # PXE: pxelinux and iPXE cannot fetch a file of the TFTP tree.
        ("tftp-file-not-found",
         r"Could not find (kernel|ramdisk) image|Unable to locate configuration file|"
         r"failed:\s+No such file or directory|TFTP error|File not found|"
         r"Loading \S+( |\.\.\.)\s*failed"),
        ("nic-driver-missing", re.escape(FAIL_MARKER) + r" nic-driver-missing"),
        ("init-failed",
         re.escape(FAIL_MARKER) + r" init-failed|Attempted to kill init|"
         r"switch_root: |No working init found|Failed to execute /init"),
        ("nfs-mount-failed", re.escape(FAIL_MARKER) + r" nfs-mount"),
        ("kernel-panic", r"Kernel panic - not syncing"),
    )
)


@dataclass(frozen=True)
class Proof:
    server: str
    export: str
    fstype: str
    options: str
    client: str | None = None  # the NFSv4 client id: uniquifier/hostname, or the hostname


@dataclass(frozen=True)
class Verdict:
    name: str
    seconds: float
    line: str = ""
    proof: Proof | None = None
    tail: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.name == OK


def shared_client_ids(verdicts: dict[str, Verdict]) -> dict[str, list[str]]:
    """NFSv4 client ids that more than one terminal showed in its proof, with those terminals."""
    by_id: dict[str, list[str]] = {}
    for name, v in verdicts.items():
        if v.proof and v.proof.client and v.proof.fstype == "nfs4":
            by_id.setdefault(v.proof.client, []).append(name)
    return {client: names for client, names in by_id.items() if len(names) > 1}


def decide(line: str) -> tuple[str, Proof | None] | None:
    """The verdict a single console line decides, if any."""
    if m := PROOF_RE.search(line):
        return OK, Proof(**m.groupdict())
    for name, pattern in FAILURES:
        if pattern.search(line):
            return name, None
    return None


class Follower:
    """Reads a console log file as it grows, line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.grew = False  # the last read found new bytes, whole lines or not

    def lines(self) -> list[str]:
        self.grew = False
        try:
            with self.path.open("rb") as f:
                if f.seek(0, 2) < self.offset:  # truncated: a new boot
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        self.grew = bool(data)
        text = self.partial + ANSI.sub("", data.decode(errors="replace")).replace("\r", "")
        *complete, self.partial = text.split("\n")
        return complete


class Cancelled(Exception):
    """The watch was stopped from outside (Ctrl-C in the main thread)."""


def watch(console_log: Path, *, started: float, timeout: float, stall: float,
          ready: re.Pattern[str] | None = None, settle: float = 0.0, poll: float = 0.05,
          stop: threading.Event | None = None,
          on_phase: Callable[[str], None] | None = None) -> Verdict:
    """Follow one console until a decisive line, `stall` s of silence, or `timeout` s.

    With `ready`, the proof of the NFS root is not enough: the root's own init must also
    say it is up (e.g. systemd reaching multi-user) for the verdict to be ok. Without it (an
    init vlab does not know), the proof is ok once `settle` s pass with no failure line: an
    init that dies at once is caught.
    """
    follower = Follower(console_log)
    tail: deque[str] = deque(maxlen=20)
    last_output = started
    proof: Proof | None = None
    proved_at, proof_line = 0.0, ""
    while True:
        if stop is not None and stop.is_set():
            raise Cancelled
        now = time.monotonic()
        lines = follower.lines()
        if follower.grew:  # systemd redraws "A start job is running..." in place, no newline
            last_output = now
        for line in lines:
            tail.append(line)
            if on_phase is not None and (phase := phase_of(line)) is not None:
                on_phase(phase)
            decided = decide(line)
            if decided is not None and decided[0] != OK:
                return Verdict(decided[0], round(now - started, 1), line, proof, tuple(tail))
            if decided is not None:
                proof, proved_at, proof_line = decided[1], now, line
            if proof is not None and ready is not None and ready.search(line):
                return Verdict(OK, round(now - started, 1), line, proof, tuple(tail))
        if proof is not None and ready is None and now - proved_at >= settle:
            return Verdict(OK, round(proved_at - started, 1), proof_line, proof,
                           tuple(tail))
        if now - started > timeout:
            return Verdict(TIMEOUT, round(now - started, 1), tail[-1] if tail else "",
                           proof, tuple(tail))
        if now - last_output > stall:
            return Verdict(STALLED, round(now - started, 1), tail[-1] if tail else "",
                           proof, tuple(tail))
        time.sleep(poll)
