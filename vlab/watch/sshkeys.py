"""SSH into terminals (paramiko): the lab's key pair, host keys pinned from the console,
commands and interactive shells. No host key is ever accepted unseen: the only key a
terminal may present is the one it printed on its serial console, a channel vlab already
trusts."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import select
import shutil
import socket
import sys
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlab.errors import VlabError
from vlab.watch.follow import complete_lines
from vlab.watch.guesttext import SSH_MARKER, pattern

if TYPE_CHECKING:  # paramiko (and what it imports) is loaded only to speak SSH: ~25 MiB
    import paramiko

KEY_FILE = "id_ed25519"
ED25519_BLOB_BYTES = 51  # string "ssh-ed25519" (4 + 11) and string key (4 + 32)
HOST_KEY_RE = pattern(re.escape(SSH_MARKER) + r" (?P<name>\S+) (?P<type>ssh-ed25519) "
                      r"(?P<blob>[A-Za-z0-9+/=]+)")


class SshError(VlabError):
    """The terminal's SSH server could not be reached or did not prove who it is."""


def fingerprint(key: paramiko.PKey) -> str:
    """A key's fingerprint as ssh-keygen -l prints it (SHA256:...)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def lab_key(ssh_dir: Path) -> str:
    """The lab's key pair (made once, private half mode 0600, public half beside it in
    OpenSSH's form); returns the public blob."""
    private, public = ssh_dir / KEY_FILE, ssh_dir / (KEY_FILE + ".pub")
    words = public.read_text().split() if public.is_file() and private.is_file() else []
    if len(words) >= 2 and words[0] == "ssh-ed25519":
        return words[1]
    # cryptography (~10 MiB) is loaded only to make the pair, once per lab
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not private.exists():
        ssh_dir.mkdir(parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        key = Ed25519PrivateKey.generate()
        tmp = private.with_name(KEY_FILE + ".tmp")
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
        tmp.chmod(0o600)
        tmp.replace(private)
    pair = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    line = pair.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    tmp = public.with_name(KEY_FILE + ".pub.tmp")
    tmp.write_bytes(line + b" vlab\n")
    tmp.replace(public)
    return line.split()[1].decode()


def host_key_from_console(console_log: Path) -> paramiko.PKey | None:
    """The host key the terminal printed on its console in this boot (the last one)."""
    import paramiko

    found = list(HOST_KEY_RE.finditer(complete_lines(console_log)))
    if not found:
        return None
    try:  # the console is the guest's: a blob that is no key is no key, not a crash
        blob = base64.b64decode(found[-1].group("blob"), validate=True)
        if len(blob) != ED25519_BLOB_BYTES:  # paramiko takes a short one
            return None
        return paramiko.Ed25519Key(data=blob)
    except (ValueError, paramiko.SSHException):
        return None


def await_host_key(console_log: Path, seconds: float) -> paramiko.PKey | None:
    """The host key line, waited for up to `seconds`: a terminal says it is up first and
    starts its SSH server after (off the boot's critical path)."""
    deadline = time.monotonic() + seconds
    while (key := host_key_from_console(console_log)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return key


OUTPUT_LIMIT = 1 << 20  # bytes of a probe's (or a heartbeat's) output vlab keeps


@dataclass
class Session:
    client: paramiko.SSHClient

    def run(self, command: str, timeout: float = 60,
            limit: int | None = OUTPUT_LIMIT) -> tuple[int, str]:
        """Run a command; its exit status and its output (stdout and stderr, interleaved):
        at most `limit` bytes of it (the guest's text: a probe printing without end costs
        vlab no more), within `timeout` s in all (-1 and a note after either)."""
        chan = self.client.get_transport().open_session()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        chan.set_combine_stderr(True)
        chan.exec_command(command)
        out = bytearray()
        try:
            while True:
                chan.settimeout(max(0.01, deadline - time.monotonic()))
                data = chan.recv(65536)
                if not data:
                    break
                out += data
                if limit is not None and len(out) > limit:
                    chan.close()
                    return -1, out[:limit].decode(errors="replace") + (
                        f"\n(output cut at {limit} bytes)")
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            chan.close()
            return -1, out.decode(errors="replace") + f"\n(timed out after {timeout:.0f} s)"
        return chan.recv_exit_status(), out.decode(errors="replace")

    def shell(self) -> int:
        """An interactive shell on this terminal's TTY until the remote shell exits."""
        size = shutil.get_terminal_size((80, 24))
        chan = self.client.invoke_shell(term="xterm", width=size.columns, height=size.lines)
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
        try:
            if saved is not None:
                tty.setraw(fd, termios.TCSANOW)  # keep what was typed ahead
            while True:
                ready, _, _ = select.select([chan, fd], [], [])
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                if fd in ready:
                    data = os.read(fd, 65536)
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        return chan.recv_exit_status()

    def close(self) -> None:
        self.client.close()


def connect(sock: socket.socket, ip: str, host_key: paramiko.PKey, ssh_dir: Path,
            terminal: str) -> Session:
    """Log in as root with the lab's key; refuse any host key but the pinned one."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(ip, host_key.get_name(), host_key)
    try:
        client.connect(ip, username="root", pkey=paramiko.Ed25519Key(
            filename=str(ssh_dir / KEY_FILE)), sock=sock, look_for_keys=False,
            allow_agent=False, timeout=15, banner_timeout=15, auth_timeout=15)
    except paramiko.BadHostKeyException as err:
        client.close()
        raise SshError(
            f"{terminal} ({ip}) presented SSH host key {fingerprint(err.key)}, "
            f"not the one it printed on its console "
            f"({fingerprint(err.expected_key)}): refused; fix: is another machine "
            "answering on that address? `vlab up` the lab again") from None
    except (paramiko.SSHException, OSError) as err:
        client.close()
        raise SshError(f"SSH to {terminal} ({ip}) failed: {err}; fix: see its console "
                       "(vlab console) and its log for dropbear") from None
    return Session(client)
