"""Processes vlab started: pid files, signals, and what a process's network namespace listens on."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def read_pid(pid_file: Path, program: str, argument: str | None = None) -> int | None:
    """The pid in pid_file, if that process lives and is still the one vlab started: its
    program is `program` (and `argument` is one of its arguments). A pid file outlives a
    reboot, and its number may belong to anyone's process by then."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or not alive(pid):
        return None
    args = arguments(pid)
    if not args or Path(args[0]).name != program or (argument is not None
                                                     and argument not in args[1:]):
        return None
    return pid


def arguments(pid: int) -> list[str]:
    """A process's command line, [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _state(pid)
    return state is not None and state != b"Z"


def _state(pid: int) -> bytes | None:
    """The process's state letter in /proc/PID/stat (R, S, T, Z, ...); None if it is gone."""
    try:  # bytes: a process's name (in parentheses) need not be UTF-8
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def with_argument(prefix: str, program: str) -> dict[int, str]:
    """Live processes of `program` with an argument that starts with prefix (pid -> command
    line): vlab's own, not a `tail -f` or a `tar` of the same files."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        words = arguments(int(entry))
        if (words and Path(words[0]).name == program
                and any(w.startswith(prefix) for w in words[1:]) and alive(int(entry))):
            found[int(entry)] = " ".join(words)
    return found


def freeze(pid: int) -> None:
    """SIGSTOP: the process does nothing until thaw() (a [[fault]] kind = "nfs-pause")."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)


def frozen(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP): a fault vlab made that an interrupted command left."""
    return _state(pid) == b"T"


def thaw(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after timeout seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


def listening(pid: int, port: int) -> bool:
    """Is a TCP port listening in pid's network namespace? (read from /proc, no netns entry)"""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def socket_answers(path: Path) -> bool:
    """Does a daemon accept connections on this Unix socket?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
