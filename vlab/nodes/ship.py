"""Boot files to other hypervisor hosts, over SFTP (paramiko).

libvirt's direct kernel boot reads the kernel and initrd on the host that runs the guest, so
vlab ships them into a folder of its own there, checks each by its SHA-256, and moves nothing
that is already there. The host must prove who it is against known_hosts (the user's and the
machine's, as `ssh` and libvirt's qemu+ssh:// check them): an unknown key is refused with
its fingerprint and the command that trusts it, never accepted unseen.
"""

from __future__ import annotations

import contextlib
import posixpath
import shlex
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import paramiko

from vlab.build.cache import file_digest
from vlab.errors import ShipError
from vlab.scenario.model import SHIP_DIR
from vlab.watch.sshkeys import fingerprint

KNOWN_HOSTS = (Path("~/.ssh/known_hosts"), Path("/etc/ssh/ssh_known_hosts"))
Connector = Callable[[str, int], socket.socket]  # (address, port) -> a connected socket
# In every folder vlab makes on another host: only a folder with it is vlab's to empty.
MARKER = ".vlab-shipped"
MARKER_TEXT = "made by vlab for one lab's boot files; vlab down removes it\n"
# SFTP's flow-control window: paramiko's 2 MiB default stalls a LAN-speed upload.
WINDOW = 16 << 20

ANSWER_MAX = 1 << 20  # bytes of a remote command's answer vlab reads
ANSWER_SECONDS = 300  # for all of it (sha256sum of a 1 GiB initrd on a slow disk: ~10 s)
HEX = frozenset("0123456789abcdef")


def _answer(chan: paramiko.Channel) -> bytes:
    """What a remote command prints until it ends: at most ANSWER_MAX bytes, within
    ANSWER_SECONDS in all (a host that trickles bytes cannot hold vlab either); raises
    TimeoutError."""
    deadline = time.monotonic() + ANSWER_SECONDS
    data = bytearray()
    while len(data) < ANSWER_MAX:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        chan.settimeout(left)
        chunk = chan.recv(min(1 << 16, ANSWER_MAX - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class Target:
    """Where a qemu+ssh:// URI points: user, address, port and key file."""

    user: str
    address: str
    port: int
    keyfile: str | None

    @classmethod
    def of(cls, uri: str) -> Target:
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        keyfile = query["keyfile"][0] if "keyfile" in query else None
        return cls(user=unquote(parts.username or "root"), address=parts.hostname or "",
                   port=parts.port or 22, keyfile=keyfile)

    @property
    def known_as(self) -> str:
        """The name known_hosts files it under."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass
class Shipped:
    moved: list[str] = field(default_factory=list)  # remote paths written
    kept: list[str] = field(default_factory=list)  # already there with the right checksum
    bytes: int = 0


class _Unknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise _UnknownKey(hostname, key)


class _UnknownKey(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname, self.key = hostname, key


class Remote:
    """An SSH session to another node (a hypervisor host), for SFTP and checksums."""

    def __init__(self, name: str, uri: str, connect_tcp: Connector) -> None:
        self.name, self.target = name, Target.of(uri)
        t = self.target
        self.client = paramiko.SSHClient()
        for path in KNOWN_HOSTS:
            if path.expanduser().exists():
                self.client.load_host_keys(str(path.expanduser()))
        self.client.set_missing_host_key_policy(_Unknown())
        where = f"host {name} ({t.user}@{t.known_as})"
        try:
            sock = connect_tcp(t.address, t.port)
            self.client.connect(t.address, port=t.port, username=t.user, sock=sock,
                                key_filename=t.keyfile, timeout=15, banner_timeout=15,
                                auth_timeout=15)
        except _UnknownKey as err:
            self.client.close()
            raise ShipError(
                f"{where} is not in known_hosts: its SSH host key is "
                f"{err.key.get_name()} {fingerprint(err.key)}, which nothing vouches for; "
                f"fix: if that is its key (ask its admin: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_kind(err.key)}_key.pub), trust it: ssh-keyscan -p {t.port} "
                f"-t {err.key.get_name()} {t.address} >> ~/.ssh/known_hosts") from None
        except paramiko.BadHostKeyException as err:
            self.client.close()
            raise ShipError(
                f"{where} presented SSH host key {fingerprint(err.key)}, but known_hosts "
                f"holds {fingerprint(err.expected_key)} for it: refused; fix: if the host was "
                f"reinstalled, remove the old key (ssh-keygen -R {t.known_as}) and trust the "
                "new one") from None
        except (paramiko.SSHException, OSError) as err:
            self.client.close()
            raise ShipError(f"{where} does not answer over SSH ({err or type(err).__name__}); "
                            f"fix: check that it is up and that ssh {t.user}@{t.address} "
                            "works") from None
        sftp = paramiko.SFTPClient.from_transport(
            self.client.get_transport(), window_size=WINDOW)  # type: ignore[arg-type]
        assert sftp is not None
        self.sftp = sftp

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def sha256(self, paths: list[str]) -> dict[str, str]:
        """The checksums of files there, in one command; a missing file is left out."""
        chan = self.client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command("sha256sum -- " + shlex.join(paths))
        # The other host's answer: at most a line a path, read bounded in size and time,
        # decoded leniently; a line that is not "DIGEST  PATH" for a path asked about is not
        # a checksum.
        try:
            out = _answer(chan).decode(errors="replace")
        except TimeoutError:
            raise ShipError(f"host {self.name}: sha256sum gave no whole answer within "
                            f"{ANSWER_SECONDS} s; fix: check that the host is not overloaded "
                            "and its disk answers, then run the command again") from None
        finally:
            chan.close()  # a host that would say more is not listened to
        sums = {}
        for line in out.splitlines():
            digest, _, name = line.partition("  ")
            if name in paths and len(digest) == 64 and all(c in HEX for c in digest):
                sums[name] = digest
        return sums

    def makedirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            try:
                if not stat.S_ISDIR(self.sftp.stat(d).st_mode or 0):
                    raise ShipError(f"host {self.name}: {d} is not a folder; fix: remove it or "
                                    "give another files = folder")
            except FileNotFoundError:
                self.sftp.mkdir(d, 0o755)  # QEMU runs as another user there: o+rx

    @contextlib.contextmanager
    def _sftp(self, what: str) -> Iterator[None]:
        """SFTP and SSH failures as a ShipError naming the host and what vlab was doing."""
        try:
            yield
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise ShipError(f"host {self.name}: {what}: {err or type(err).__name__}; fix: "
                            "check the disk and permissions there, then run the command "
                            "again") from None

    def own_folder(self, folder: str) -> None:
        """The lab's folder there, made by vlab and marked as its own (MARKER); an existing
        folder without the mark is someone else's and is refused."""
        with self._sftp(f"make {folder}"):
            try:
                st = self.sftp.lstat(folder)
            except FileNotFoundError:
                self.makedirs(posixpath.dirname(folder))
                self.sftp.mkdir(folder, 0o755)
                with self.sftp.open(posixpath.join(folder, MARKER), "w") as f:
                    f.write(MARKER_TEXT)
                return
            if not stat.S_ISDIR(st.st_mode or 0) or not self._marked(folder):
                raise ShipError(f"host {self.name}: {folder} is there and is not a folder vlab "
                                "made (no " + MARKER + " in it): vlab neither writes into nor "
                                "empties it; fix: give [[node]] files = a folder of "
                                f"vlab's own (the default is {SHIP_DIR})")

    def _marked(self, folder: str) -> bool:
        try:
            with self.sftp.open(posixpath.join(folder, MARKER), "r") as f:
                return bool(f.read(64).decode(errors="replace") == MARKER_TEXT)
        except OSError:
            return False

    def ship(self, files: dict[Path, str]) -> Shipped:
        """Copy local files to remote paths; a file whose checksum matches stays."""
        folders = {posixpath.dirname(remote) for remote in files.values()}
        for folder in sorted(folders):
            self.own_folder(folder)
        with self._sftp("ship the boot files"):
            return self._ship(files)

    def _ship(self, files: dict[Path, str]) -> Shipped:
        done = Shipped()
        want = {remote: file_digest(local) for local, remote in files.items()}
        there = self.sha256(list(want))
        todo = {local: remote for local, remote in files.items()
                if there.get(remote) != want[remote]}
        done.kept = [r for r in want if r not in todo.values()]
        if not todo:
            return done
        sftp = self.sftp
        for local, remote in todo.items():
            self.makedirs(posixpath.dirname(remote))
            sftp.put(str(local), remote + ".part")
            sftp.chmod(remote + ".part", 0o644)
        got = self.sha256([r + ".part" for r in todo.values()])
        for local, remote in todo.items():
            if got.get(remote + ".part") != want[remote]:
                sftp.remove(remote + ".part")
                raise ShipError(f"host {self.name}: {remote} arrived with SHA-256 "
                                f"{got.get(remote + '.part')}, not {want[remote]}; fix: "
                                "check the disk there, then vlab up again")
            sftp.posix_rename(remote + ".part", remote)
            done.moved.append(remote)
            done.bytes += local.stat().st_size
        return done

    def remove_shipped(self, folder: str, names: list[str]) -> bool:
        """Remove what vlab shipped into its marked folder (the named files, their .part
        leftovers and the mark), then the folder if nothing else is in it. False when it was
        not there or is not vlab's: a folder without the mark is never touched."""
        with self._sftp(f"remove {folder}"):
            try:
                if not stat.S_ISDIR(self.sftp.lstat(folder).st_mode or 0):
                    return False
            except FileNotFoundError:
                return False
            if not self._marked(folder):
                return False
            there = set(self.sftp.listdir(folder))
            for name in [*names, *(n + ".part" for n in names), MARKER]:
                if name in there:
                    self.sftp.remove(posixpath.join(folder, name))
                    there.discard(name)
            if there:
                return False
            self.sftp.rmdir(folder)
            return True


def _kind(key: paramiko.PKey) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key.get_name(), "ecdsa")

