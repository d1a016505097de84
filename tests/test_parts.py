"""Pure parts of the artifacts: module closure from modules.dep, the cpio writer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vlab.cpio import Archive, read_names
from vlab.kmod import ModuleIndex, ModuleNotFound


@pytest.fixture
def modules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "lib/modules/6.1.0-test"
    d.mkdir(parents=True)
    (d / "modules.dep").write_text(
        "kernel/fs/nfs/nfsv4.ko: kernel/net/dns_resolver/dns_resolver.ko kernel/fs/nfs/nfs.ko "
        "kernel/net/sunrpc/sunrpc.ko\n"
        "kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko\n"
        "kernel/net/sunrpc/sunrpc.ko:\n"
        "kernel/net/dns_resolver/dns_resolver.ko:\n"
        "kernel/drivers/net/xen-netfront.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
    )
    (d / "modules.builtin").write_text("kernel/drivers/net/e1000.ko\n")
    return d


def test_load_order_puts_dependencies_first(modules_dir: Path) -> None:
    order = ModuleIndex.load(modules_dir).load_order(["virtio_net", "nfsv4"])
    assert order == [
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/net/virtio_net.ko",
        "kernel/net/sunrpc/sunrpc.ko", "kernel/fs/nfs/nfs.ko",
        "kernel/net/dns_resolver/dns_resolver.ko", "kernel/fs/nfs/nfsv4.ko",
    ]


def test_dash_and_underscore_names_and_builtins(modules_dir: Path) -> None:
    index = ModuleIndex.load(modules_dir)
    assert index.load_order(["xen_netfront"]) == ["kernel/drivers/net/xen-netfront.ko"]
    assert index.load_order(["e1000"]) == []


def test_unknown_module(modules_dir: Path) -> None:
    with pytest.raises(ModuleNotFound, match="no module rtl8139"):
        ModuleIndex.load(modules_dir).load_order(["rtl8139"])


def _archive() -> Archive:
    a = Archive()
    a.dir("dev")
    a.chardev("dev/console", 5, 1)
    a.file("init", b"#!/bin/sh\necho hi\n", 0o755)
    a.symlink("sh", "/bin/busybox")
    return a


def test_cpio_is_reproducible_and_readable_back() -> None:
    a = _archive()
    assert a.gzipped() == _archive().gzipped()
    assert read_names(a.gzipped()) == ["dev", "dev/console", "init", "sh"]


def test_gnu_cpio_reads_our_archive(tmp_path: Path) -> None:
    proc = subprocess.run(["cpio", "-itv"], input=_archive().to_bytes(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.decode()
    assert "dev/console" in listing and listing.count("\n") == 4
    assert "crw-------" in listing
