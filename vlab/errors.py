"""Typed errors. Only cli.py turns them into a message and an exit code."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


class VlabError(Exception):
    """Base of every error vlab reports to the user."""

    exit_code = 3

    def message(self) -> str:
        return str(self)


class ScenarioError(VlabError):
    """The scenario file is wrong: one line naming the file, the key, the bad value and the fix."""

    exit_code = 2

    def __init__(self, file: Path | str, key: str, why: str, fix: str = "") -> None:
        self.file, self.key, self.why, self.fix = str(file), key, why, fix
        super().__init__(self.message())

    def message(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        text = f"{where}: {self.why}"
        return f"{text}; fix: {self.fix}" if self.fix else text


class UsageError(VlabError):
    """The command line is wrong (unknown terminal, bad flag value)."""

    exit_code = 2


class CommandError(VlabError):
    """A program vlab ran failed."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str, hint: str = "") -> None:
        self.argv, self.rc, self.stderr, self.hint = list(argv), rc, stderr, hint
        super().__init__(self.message())

    def message(self) -> str:
        cmd = shlex.join(self.argv)
        if self.rc == 127:
            text = f"{self.argv[0]} not found (running: {cmd})"
        else:
            tail = "\n".join(self.stderr.strip().splitlines()[-12:])
            text = f"command failed with exit code {self.rc}: {cmd}"
            if tail:
                text += "\n  " + tail.replace("\n", "\n  ")
        return f"{text}\n  fix: {self.hint}" if self.hint else text


class MissingTool(VlabError):
    """A program or file vlab needs is not installed: names the Debian package."""

    def __init__(self, what: str, package: str) -> None:
        self.what, self.package = what, package
        super().__init__(f"{what} is missing; fix: apt-get install {package}")


class VirtError(VlabError):
    """libvirt refused an operation; the message says what to do about it."""

    def __init__(self, op: str, detail: str, fix: str = "") -> None:
        self.op, self.detail, self.fix = op, detail, fix
        text = f"libvirt: {op}: {detail}"
        super().__init__(f"{text}; fix: {fix}" if fix else text)


class HostError(VlabError):
    """The lab host (libvirtd, NFS server, namespace) could not be brought up."""


class DiskFull(VlabError):
    """A file vlab writes did not fit: its folder's device is full (or its quota used up)."""

    def __init__(self, err: OSError, down: str, folders: str) -> None:
        where = err.filename2 if err.filename2 is not None else err.filename
        super().__init__(f"no space left for {where or 'a file in ' + folders}"
                         f" ({err.strerror}); fix: free space on that device (df -h), then "
                         f"run the command again; `{down}` removes what was started")


class ShipError(VlabError):
    """A hypervisor host could not be reached over SSH, or would not take the files."""


class LabBusy(VlabError):
    """Another vlab process is working on the same lab."""


class BootFailed(VlabError):
    """At least one terminal did not prove its NFS root."""

    exit_code = 1


class Interrupted(VlabError):
    """Ctrl-C, SIGTERM or SIGHUP: what was started stays recorded, so `vlab down` can
    remove it. The exit code is a shell's for the signal: 128 + its number."""

    exit_code = 130

    def __init__(self, text: str, signum: int = 2) -> None:
        super().__init__(text)
        self.exit_code = 128 + signum


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, as Ctrl-C's KeyboardInterrupt is:
    every step that cleans up after Ctrl-C cleans up after them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
