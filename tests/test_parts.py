"""Pure parts of the artifacts: module closure from modules.dep, the cpio writer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vlab.build import initrd, kernel
from vlab.build.cpio import Archive, read_names
from vlab.build.kernel import Kernel
from vlab.build.kmod import BadModulesDep, ModuleIndex, ModuleNotFound
from vlab.errors import HostError, ScenarioError


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


# A root's modules.dep and its .ko files are untrusted: nothing of the host comes through.

@pytest.mark.parametrize("line", [
    "/etc/shadow.ko:\n", "kernel/../../../../etc/shadow.ko:\n",
    "kernel/fs/nfs/nfs.ko: /root/.ssh/id_ed25519.ko\n", "kernel/fs/nfs/nfs.ko: ../x.ko\n",
    "kernel/fs/nfs/shadow:\n",
])
def test_modules_dep_paths_must_stay_inside(tmp_path: Path, line: str) -> None:
    (tmp_path / "modules.dep").write_text(line)
    with pytest.raises(BadModulesDep, match="modules.dep line 1 names"):
        ModuleIndex.load(tmp_path)


def test_a_dependency_without_its_own_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko\n")
    with pytest.raises(BadModulesDep, match="sunrpc.ko as a dependency but has no line"):
        ModuleIndex.load(tmp_path).load_order(["nfs"])


def _kernel_at(folder: Path) -> Kernel:
    return Kernel("6.1.0-test", folder.parent.parent.parent / "boot/vmlinuz", folder)


def test_a_symlinked_module_leading_out_is_refused(modules_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (modules_dir / "kernel/net/sunrpc").mkdir(parents=True)
    (modules_dir / "kernel/net/sunrpc/sunrpc.ko").symlink_to(secret)
    with pytest.raises(HostError, match="leads out of"):
        initrd.module_bytes(_kernel_at(modules_dir), "kernel/net/sunrpc/sunrpc.ko")


def test_a_module_that_is_a_fifo_is_refused(modules_dir: Path) -> None:
    (modules_dir / "kernel/net/sunrpc").mkdir(parents=True)
    os.mkfifo(modules_dir / "kernel/net/sunrpc/sunrpc.ko")
    with pytest.raises(HostError, match="not a regular file"):
        initrd.module_bytes(_kernel_at(modules_dir), "kernel/net/sunrpc/sunrpc.ko")


def test_a_module_inside_the_folder_is_read(modules_dir: Path) -> None:
    (modules_dir / "kernel/net/sunrpc").mkdir(parents=True)
    (modules_dir / "kernel/net/sunrpc/real.ko").write_bytes(b"\x7fELF module")
    (modules_dir / "kernel/net/sunrpc/sunrpc.ko").symlink_to("real.ko")
    assert initrd.module_bytes(_kernel_at(modules_dir),
                               "kernel/net/sunrpc/sunrpc.ko") == b"\x7fELF module"


@pytest.mark.parametrize("kind", ["fifo", "chardev", "symlink-out"])
def test_a_root_kernel_that_is_no_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "lib/modules/6.1.0-test").mkdir(parents=True)
    (root / "lib/modules/6.1.0-test/modules.dep").write_text("")
    vmlinuz = root / "boot/vmlinuz-6.1.0-test"
    if kind == "fifo":
        os.mkfifo(vmlinuz)
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(vmlinuz, 0o20644, os.makedev(1, 3))
    else:
        vmlinuz.symlink_to("/dev/zero")
    why = "cannot be read: a symlink" if kind == "symlink-out" else "not a regular file"
    with pytest.raises(ScenarioError, match=why):
        kernel.from_root(root, None, tmp_path / "cache", tmp_path / "s.toml")
    assert not (tmp_path / "cache" / "kernels").exists() or not [
        p for p in (tmp_path / "cache" / "kernels").iterdir()]


def _compressed_kernel(tmp_path: Path) -> Path:
    """A kernel whose modules are compressed three ways, with softdeps between them."""
    import gzip
    import lzma

    import zstandard

    d = tmp_path / "lib/modules/6.12.0-test"
    (d / "kernel").mkdir(parents=True)
    (d / "modules.dep").write_text(
        "kernel/nfsv4.ko.xz: kernel/nfs.ko.zst kernel/sunrpc.ko.gz\n"
        "kernel/nfs.ko.zst: kernel/sunrpc.ko.gz\n"
        "kernel/sunrpc.ko.gz:\n"
        "kernel/crc32c-generic.ko.xz:\n"
        "kernel/late.ko:\n")
    (d / "modules.alias").write_text("alias crc32c crc32c_generic\nalias pci:v*d* late\n")
    (d / "modules.softdep").write_text(
        "# comment\nsoftdep nfs pre: crc32c absent_module post: late\nsoftdep bad pre: ../x\n")
    (d / "kernel/nfsv4.ko.xz").write_bytes(lzma.compress(b"\x7fELF nfsv4"))
    (d / "kernel/nfs.ko.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\x7fELF nfs"))
    (d / "kernel/sunrpc.ko.gz").write_bytes(gzip.compress(b"\x7fELF sunrpc"))
    (d / "kernel/crc32c-generic.ko.xz").write_bytes(lzma.compress(b"\x7fELF crc"))
    (d / "kernel/late.ko").write_bytes(b"\x7fELF late")
    return d


def test_softdeps_are_followed_and_compressed_modules_land_decompressed(tmp_path: Path) -> None:
    from vlab.build.kmod import plain_bytes, plain_path

    d = _compressed_kernel(tmp_path)
    index = ModuleIndex.load(d)
    order = index.load_order(["nfsv4"])
    # crc32c (an alias) before nfs (pre:), late right after it (post:), an absent one skipped.
    assert order == ["kernel/sunrpc.ko.gz", "kernel/crc32c-generic.ko.xz", "kernel/nfs.ko.zst",
                     "kernel/late.ko", "kernel/nfsv4.ko.xz"]
    assert [plain_path(m) for m in order][-1] == "kernel/nfsv4.ko"
    got = {plain_path(m): plain_bytes(m, (d / m).read_bytes()) for m in order}
    assert got["kernel/nfs.ko"] == b"\x7fELF nfs" and got["kernel/sunrpc.ko"] == b"\x7fELF sunrpc"
    assert got["kernel/nfsv4.ko"] == b"\x7fELF nfsv4" and got["kernel/late.ko"] == b"\x7fELF late"


def test_a_module_that_decompresses_too_big_or_not_at_all_is_refused(tmp_path: Path) -> None:
    import lzma

    from vlab.build.kmod import MAX_MODULE, plain_bytes

    bomb = lzma.compress(b"\0" * (MAX_MODULE + 2))
    with pytest.raises(BadModulesDep, match="decompresses to more than 64 MiB"):
        plain_bytes("kernel/x.ko.xz", bomb)
    with pytest.raises(BadModulesDep, match="cannot be decompressed"):
        plain_bytes("kernel/x.ko.zst", b"not zstd at all")


def test_a_dependency_chain_deeper_than_any_kernel_is_refused_not_a_crash(tmp_path: Path) -> None:
    n = 5000
    (tmp_path / "modules.dep").write_text("".join(
        f"kernel/m{i}.ko: kernel/m{i + 1}.ko\n" for i in range(n)) + f"kernel/m{n}.ko:\n")
    with pytest.raises(BadModulesDep, match="nests dependencies deeper"):
        ModuleIndex.load(tmp_path).load_order(["m0"])


# Issue 27, finding 3: the module folder's files were read through their symlinks.
@pytest.mark.parametrize("name", ["modules.dep", "modules.builtin", "modules.softdep",
                                  "modules.alias"])
def test_a_module_index_that_is_a_symlink_or_a_device_is_refused(tmp_path: Path,
                                                                   name: str) -> None:
    """Linked to a host file, its content never reaches a message; linked to /dev/zero,
    it is not read without end; a FIFO does not hang."""
    secret = tmp_path / "host-secret"
    secret.write_text("kernel/HOST-SECRET.ko:\n")
    folder = tmp_path / "6.1.0-test"
    folder.mkdir()
    (folder / "modules.dep").write_text("kernel/fs/nfs/nfs.ko:\n")
    for target in (secret, Path("/dev/zero")):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(target)
        with pytest.raises(BadModulesDep, match=f"{name} .*cannot be read: a symlink") as err:
            ModuleIndex.load(folder)
        assert "HOST-SECRET" not in str(err.value)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    with pytest.raises(BadModulesDep, match="not a regular file"):
        ModuleIndex.load(folder)


def test_a_module_index_larger_than_any_kernels_is_refused(tmp_path: Path) -> None:
    from vlab.build.kmod import MAX_INDEX

    folder = tmp_path / "6.1.0-test"
    folder.mkdir()
    with (folder / "modules.dep").open("wb") as f:
        f.truncate(MAX_INDEX + 1)  # sparse: no disk, but that many bytes to read
    with pytest.raises(BadModulesDep, match="larger than 32 MiB"):
        ModuleIndex.load(folder)


def test_a_roots_links_resolve_inside_it_never_out(tmp_path: Path) -> None:
    """mounts.inside resolves as a chroot would, by the kernel (openat2 RESOLVE_IN_ROOT): a
    merged-/usr link works, absolute links and `..` chains stay in the root."""
    from vlab.build import mounts

    root = tmp_path / "root"
    (root / "usr/lib/modules/6.1.0-test").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "boot").symlink_to("/etc")  # the host's /etc has files; the root's has none
    (root / "sbin").symlink_to("../../../../../../usr/sbin")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("the root's own\n")
    assert mounts.inside(root, "lib/modules/6.1.0-test") == root / "usr/lib/modules/6.1.0-test"
    assert mounts.inside(root, "boot") == root / "etc"
    assert mounts.inside(root, "boot/hostname") == root / "etc/hostname"
    assert mounts.inside(root, "boot/passwd") is None  # the host's /etc/passwd is not seen
    assert mounts.inside(root, "sbin") is None  # no /usr/sbin in the root, host's not seen
    assert mounts.inside(root, "/../../etc/hostname") == root / "etc/hostname"
    (root / "proc").symlink_to("/proc/self/root")
    assert mounts.inside(root, "proc/etc") is None


def test_a_link_on_the_way_to_a_module_cannot_lead_out(modules_dir: Path,
                                                        tmp_path: Path) -> None:
    """Every part of a module's path is resolved under the module folder, not only its
    last: a folder of the path that is a link out of it is refused."""
    outside = tmp_path / "outside/sunrpc"
    outside.mkdir(parents=True)
    (outside / "sunrpc.ko").write_bytes(b"host bytes")
    (modules_dir / "kernel/net").mkdir(parents=True)
    (modules_dir / "kernel/net/sunrpc").symlink_to(outside)
    with pytest.raises(HostError, match="leads out of"):
        initrd.module_bytes(_kernel_at(modules_dir), "kernel/net/sunrpc/sunrpc.ko")
    (modules_dir / "kernel/net/sunrpc").unlink()
    (modules_dir / "kernel/net/sunrpc").symlink_to("../../../../outside/sunrpc")
    with pytest.raises(HostError, match="leads out of"):
        initrd.module_bytes(_kernel_at(modules_dir), "kernel/net/sunrpc/sunrpc.ko")
