"""What another hypervisor host answers is data: vlab reads it bounded in size and in time.
The host here is a real SSH server (paramiko's, on loopback, in this process) that answers
vlab's `sha256sum` the way a hostile or broken host would. The shipping itself, to a real
sshd, is in test_hosts.py."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from vlab.errors import ShipError
from vlab.nodes import ship

Answer = Callable[[paramiko.Channel], None]


class _Server(paramiko.ServerInterface):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.answer, args=(channel,), daemon=True).start()
        return True


@pytest.fixture
def hostile_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[[Answer], ship.Remote]]:
    """A connected ship.Remote whose server answers every command with `answer`."""
    host_key = paramiko.ECDSAKey.generate()
    client_key = paramiko.ECDSAKey.generate()
    client_key.write_private_key_file(str(tmp_path / "id"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    monkeypatch.setattr(ship, "KNOWN_HOSTS", (known,))
    transports: list[paramiko.Transport] = []

    def connect(answer: Answer) -> ship.Remote:
        def serve() -> None:
            sock, _ = listener.accept()
            t = paramiko.Transport(sock)
            transports.append(t)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, paramiko.SFTPServerInterface)
            t.start_server(server=_Server(answer))

        threading.Thread(target=serve, daemon=True).start()
        return ship.Remote("h2", f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={tmp_path}/id",
                         lambda address, p: socket.create_connection((address, p)))

    yield connect
    for t in transports:
        t.close()
    listener.close()


def _endless(channel: paramiko.Channel) -> None:
    """64 MiB of bytes that are no UTF-8, then silence, the channel left open."""
    block = b"\xff" * (1 << 20)
    try:
        for _ in range(64):
            channel.sendall(block)
    except (OSError, EOFError, paramiko.SSHException):
        return


def _trickle(channel: paramiko.Channel) -> None:
    """One byte a tenth of a second, without end."""
    try:
        while True:
            channel.sendall(b"0")
            time.sleep(0.1)
    except (OSError, EOFError, paramiko.SSHException):
        return


def test_an_endless_answer_is_read_bounded_and_is_no_checksum(hostile_host) -> None:  # type: ignore[no-untyped-def]
    host = hostile_host(_endless)
    tracemalloc.start()
    try:
        assert host.sha256(["/var/cache/vlab/shipped/x/vmlinuz"]) == {}
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        host.close()
    assert peak < 16 * ship.ANSWER_MAX, peak  # 1 MiB read, never the 64 MiB sent


def test_an_answer_that_never_ends_stops_at_the_time_limit(hostile_host,  # type: ignore[no-untyped-def]
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(ship, "ANSWER_SECONDS", 2)
    host = hostile_host(_trickle)
    started = time.monotonic()
    try:
        with pytest.raises(ShipError, match="h2: sha256sum gave no whole answer within 2 s"):
            host.sha256(["/var/cache/vlab/shipped/x/vmlinuz"])
    finally:
        host.close()
    assert time.monotonic() - started < 30
