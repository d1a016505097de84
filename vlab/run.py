"""The only module that runs programs. Everything else asks it.

Keyword-only arguments, a clean environment, the command line in the debug log, and a
readable CommandError when a program fails or is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, BinaryIO

from vlab.errors import CommandError

log = logging.getLogger("vlab.run")

_ENV_KEEP = ("PATH", "HOME", "LANG", "TERM", "TMPDIR", "http_proxy", "https_proxy")


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if "/sbin" not in env["PATH"]:
        env["PATH"] += ":/usr/sbin:/sbin"
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    hint: str = "",
    timeout: float | None = 600,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion and capture its output.

    It dies with vlab: killed with SIGKILL, vlab cannot clean up, but then no builder of
    its goes on writing into a folder that vlab down is about to sweep."""
    shown = _in_netns(argv, netns)
    full = [SETPRIV, "--pdeathsig", "KILL", *shown] if SETPRIV is not None else shown
    log.debug("run: %s", shlex.join(shown))
    try:
        # Its own process group, so that Ctrl-C or a timeout ends everything it started
        # (a builder's children must not keep the build mounts busy).
        child = subprocess.Popen(full, cwd=cwd, env=_env(env),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 pass_fds=pass_fds)
    except FileNotFoundError:
        raise CommandError(shown, 127, "", hint) from None
    # What a program prints is kept up to OUTPUT_MAX bytes a stream, its last ones (a
    # builder is an image's code: it may print without end), decoded leniently.
    streams = [_Tail(child.stdout), _Tail(child.stderr)]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        child.wait(timeout=timeout)
        for stream in streams:  # a child it left may hold the pipes: as communicate() did
            stream.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if stream.is_alive():
                raise subprocess.TimeoutExpired(full, timeout or 0)
    except BaseException as err:
        _kill_group(child)
        for stream in streams:
            stream.join()
        if isinstance(err, subprocess.TimeoutExpired):
            raise CommandError(shown, -1, f"timed out after {timeout} s", hint) from err
        raise
    stdout, stderr = (stream.text() for stream in streams)
    proc = subprocess.CompletedProcess(shown, child.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise CommandError(shown, proc.returncode, proc.stderr or proc.stdout, hint)
    return proc


OUTPUT_MAX = 4 << 20


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping its last OUTPUT_MAX bytes."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        super().__init__(daemon=True)
        self.pipe, self.kept, self.cut = pipe, bytearray(), False
        self.start()

    def run(self) -> None:
        if self.pipe is None:
            return
        with self.pipe:
            while chunk := self.pipe.read1(1 << 16):  # type: ignore[attr-defined]
                self.kept += chunk
                if len(self.kept) > 2 * OUTPUT_MAX:
                    del self.kept[:-OUTPUT_MAX]
                    self.cut = True

    def text(self) -> str:
        cut = self.cut or len(self.kept) > OUTPUT_MAX
        text = bytes(self.kept[-OUTPUT_MAX:]).decode(errors="replace")
        return f"[... the first part of the output is left out]\n{text}" if cut else text


SETPRIV = "/usr/bin/setpriv" if Path("/usr/bin/setpriv").exists() else None  # util-linux


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def output(argv: Sequence[str], **kwargs: object) -> str:
    return run(argv, **kwargs).stdout  # type: ignore[arg-type]


def which(program: str) -> str | None:
    for folder in _env(None)["PATH"].split(":"):
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


@contextlib.contextmanager
def _started(what: str, argv: Sequence[str], netns: str | None, log_file: Path,
             hint: str = "") -> Iterator[tuple[list[str], BinaryIO]]:
    """The full command line (in the namespace) and its log, open; a missing program is
    rc 127."""
    full = _in_netns(argv, netns)
    log.debug("%s: %s", what, shlex.join(full))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        try:
            yield full, out
        except FileNotFoundError:
            raise CommandError(full, 127, "", hint) from None


def daemon(argv: Sequence[str], *, netns: str | None, log_file: Path, hint: str = "") -> None:
    """Start a program that daemonizes itself; its early output goes to log_file."""
    with _started("daemon", argv, netns, log_file, hint) as (full, out):
        rc = subprocess.run(full, env=_env(None), stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            timeout=60).returncode
    if rc != 0:
        raise CommandError(full, rc, log_file.read_text(errors="replace"), hint)


def spawn(argv: Sequence[str], *, netns: str | None, log_file: Path) -> int:
    """Start a long-running program in the foreground of its own session; return its pid."""
    with _started("spawn", argv, netns, log_file) as (full, out):
        proc = subprocess.Popen(full, env=_env(None), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid
