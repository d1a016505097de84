"""Disk images as users bring them: format told by the bytes, GPT and MBR tables read, the
root and /boot partitions chosen as the Discoverable Partitions Specification says, and every
wrong or ambiguous choice refused with the partitions listed. Real images, made by sfdisk
and mkfs; no boot (the booting tests are in test_images.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from disks import ESP, LINUX, ROOT_X86_64, XBOOTLDR, Part, disk, qcow2

from vlab.build import disk as vdisk
from vlab.errors import ScenarioError
from vlab.scenario import load


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "etc/hostname").write_text("t\n")
    return root


def _gpt(tmp_path: Path, tree: Path, root_type: str = ROOT_X86_64,
         boot_type: str = XBOOTLDR) -> Path:
    return disk(tmp_path / "gpt.img", "gpt", [
        Part(ESP, 8, "vfat", fslabel="EFI"),
        Part(boot_type, 16, "ext4", tree / "boot", label="boot", fslabel="BOOT"),
        Part(root_type, 32, "ext4", tree, label="root", fslabel="rootfs"),
    ])


def test_gpt_with_esp_boot_and_root_is_read_and_chosen_by_type(tmp_path: Path,
                                                               tree: Path) -> None:
    image = _gpt(tmp_path, tree)
    assert vdisk.image_format(image) == "raw"
    assert vdisk.filesystem_of(image) is None
    parts = vdisk.partitions(image)
    assert [(p.number, p.kind, p.fstype, p.label, p.fslabel) for p in parts] == [
        (1, "esp", "vfat", "", "EFI"), (2, "xbootldr", "ext4", "boot", "BOOT"),
        (3, "root", "ext4", "root", "rootfs")]
    assert parts[2].offset == 25 << 20 and parts[2].size == 32 << 20
    root, boot = vdisk.choose(parts, None, None)
    assert (root.number, boot and boot.number) == (3, 2)


def test_the_only_linux_partition_is_the_root_and_names_pick_others(tmp_path: Path,
                                                                   tree: Path) -> None:
    mbr = disk(tmp_path / "mbr.img", "dos", [Part("ef", 8, "vfat"), Part("83", 32, "ext4", tree)])
    root, boot = vdisk.choose(vdisk.partitions(mbr), None, None)
    assert (root.number, root.kind, boot) == (2, "linux", None)
    # Two generic Linux partitions: which is the root is not guessed.
    two = _gpt(tmp_path, tree, root_type=LINUX, boot_type=LINUX)
    with pytest.raises(vdisk.DiskError, match=r"2 partitions could be the root .*1: esp, vfat, "
                       r"8 MiB, filesystem label 'EFI'; 2: linux, ext4, 16 MiB, label 'boot'"):
        vdisk.choose(vdisk.partitions(two), None, None)
    root, boot = vdisk.choose(vdisk.partitions(two), "rootfs", 2)
    assert (root.number, boot and boot.number) == (3, 2)
    root, boot = vdisk.choose(vdisk.partitions(two), 3, "boot")
    assert (root.number, boot and boot.number) == (3, 2)
    with pytest.raises(vdisk.DiskError, match="no root filesystem"):
        vdisk.choose(vdisk.partitions(two), 1, None)
    with pytest.raises(vdisk.DiskError, match="has no partition 7"):
        vdisk.choose(vdisk.partitions(two), 7, None)
    with pytest.raises(vdisk.DiskError, match="cannot be /boot: it is the root"):
        vdisk.choose(vdisk.partitions(two), 3, 3)


def test_a_table_pointing_past_the_file_is_refused(tmp_path: Path, tree: Path) -> None:
    image = _gpt(tmp_path, tree)
    with image.open("r+b") as f:
        f.truncate(30 << 20)  # cuts the root partition short
    with pytest.raises(vdisk.DiskError, match="beyond the end of the file"):
        vdisk.partitions(image)


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'[lab]\nname = "d"\n[root]\nsource = "image"\npath = "disk"\n{extra}'
                    '[kernel]\nsource = "debian"\n[[terminal]]\nname = "t1"\n')
    return path


def test_scenarios_take_qcow2_and_partitioned_images_and_refuse_with_the_partitions_seen(
        tmp_path: Path, tree: Path) -> None:
    raw = _gpt(tmp_path, tree, root_type=LINUX, boot_type=LINUX)
    (tmp_path / "disk").symlink_to(raw)
    with pytest.raises(ScenarioError) as err:
        load(_scenario(tmp_path))
    assert "root.path" in str(err.value) and "2 partitions could be the root" in str(err.value)
    assert "3: linux, ext4, 32 MiB, label 'root', filesystem label 'rootfs'" in str(err.value)
    assert load(_scenario(tmp_path, 'partition = "root"\nboot_partition = 2\n')).root.partition \
        == "root"
    with pytest.raises(ScenarioError, match="root.partition.*no partition 'nope'"):
        load(_scenario(tmp_path, 'partition = "nope"\n'))
    with pytest.raises(ScenarioError, match="root.partition.*a partition number or a label"):
        load(_scenario(tmp_path, "partition = true\n"))
    with pytest.raises(ScenarioError, match="root.boot_partition.*no partition 9 for /boot"):
        load(_scenario(tmp_path, 'partition = "root"\nboot_partition = 9\n'))
    with pytest.raises(ScenarioError, match="root.boot_partition.*cannot be /boot: it is the"):
        load(_scenario(tmp_path, 'partition = "root"\nboot_partition = "root"\n'))
    (tmp_path / "disk").unlink()
    (tmp_path / "disk").symlink_to(qcow2(raw, tmp_path / "disk.qcow2"))
    assert vdisk.image_format(tmp_path / "disk") == "qcow2"
    load(_scenario(tmp_path, "partition = 3\n"))  # its partitions are read once converted


def test_qcow2_with_a_backing_file_and_other_formats_are_refused(tmp_path: Path,
                                                                 tree: Path) -> None:
    import subprocess

    raw = _gpt(tmp_path, tree)
    base = qcow2(raw, tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(tmp_path / "disk")], check=True)
    with pytest.raises(ScenarioError, match="names a backing file, which vlab does not follow"):
        load(_scenario(tmp_path))
    (tmp_path / "disk").unlink()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw),
                    str(tmp_path / "disk")], check=True)
    with pytest.raises(ScenarioError, match="is a vmdk image.*qemu-img convert -f vmdk"):
        load(_scenario(tmp_path))


def test_partitions_of_raw_and_qcow2_images_mount_read_only_and_go_with_release(
        tmp_path: Path, tree: Path) -> None:
    from disks import sha256

    from vlab.build import mounts, nfsroot

    (tree / "boot/vmlinuz-test").write_text("kernel\n")
    raw = _gpt(tmp_path, tree)
    image = qcow2(raw, tmp_path / "gpt.qcow2")
    before = sha256(image)
    said: list[str] = []
    for attempt in ("cold", "warm"):
        point = tmp_path / f"mnt-{attempt}"
        attached = nfsroot.mount_image(image, point, None, None, tmp_path / "cache", said.append)
        try:
            assert attached.parent == tmp_path / "cache/images" and attached.suffix == ".raw"
            assert (point / "etc/hostname").read_text() == "t\n"
            assert (point / "boot/vmlinuz-test").read_text() == "kernel\n"  # the XBOOTLDR one
            assert [str(p) for p in mounts.mounted_under(point)] == [str(point / "boot"),
                                                                      str(point)]
        finally:
            nfsroot.release_image(attached, point, mounts.source_of(point))
        assert mounts.mounted_under(point) == [] and not point.exists()
        assert mounts.loops_of(attached) == []
    assert sum("converting it once" in s for s in said) == 1, said  # warm: the cached raw
    assert sha256(image) == before


def test_an_image_swapped_after_its_check_is_never_read(tmp_path: Path, tree: Path) -> None:
    """Issue 27, finding 2: vlab checked a qcow2 by its path, hashed it, then qemu-img
    opened the path again. Here the path is swapped for a qcow2 whose external data file is
    a host file right after the check (at vlab's own progress line, the callable it is
    given), and again before the conversion: vlab reads the file it opened, so the
    conversion is the harmless image's bytes, cached under their checksum, and the host
    file's bytes are nowhere in it."""
    import os
    import subprocess

    from disks import sha256

    from vlab.build import mounts, nfsroot

    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST-SECRET\n" * 4096)
    raw = _gpt(tmp_path, tree)
    image = qcow2(raw, tmp_path / "gpt.qcow2")
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={secret},data_file_raw=on", str(evil),
                    str(os.stat(raw).st_size)], check=True)

    def swap(line: str) -> None:  # the attacker's move, at each step vlab reports
        if evil.exists():
            os.replace(evil, image)

    point = tmp_path / "mnt"
    attached = nfsroot.mount_image(image, point, None, None, tmp_path / "cache", swap)
    try:
        assert not evil.exists()  # the path now names the evil image
        assert b"HOST-SECRET" not in attached.read_bytes()
        assert sha256(attached) == sha256(raw)
        assert (point / "etc/hostname").read_text() == "t\n"
    finally:
        nfsroot.release_image(attached, point, mounts.source_of(point))


def test_a_vfat_boot_partition_is_read_in_userspace_and_goes_with_release(
        tmp_path: Path, tree: Path) -> None:
    """Issue 27: image builders make /boot vfat (XBOOTLDR), and this machine kind's kernel
    has no vfat. vlab reads it with mtools, through the image's open descriptor, into a
    read-only tmpfs on the root's /boot; release leaves nothing."""
    from vlab.build import mounts, nfsroot

    (tree / "boot/vmlinuz-test").write_text("kernel\n")
    (tree / "boot/loader").mkdir()
    (tree / "boot/loader/entry.conf").write_text("title t\n")
    image = disk(tmp_path / "vfat-boot.img", "gpt", [
        Part(XBOOTLDR, 16, "vfat", tree / "boot", label="boot", fslabel="BOOT"),
        Part(ROOT_X86_64, 32, "ext4", tree, label="root", fslabel="rootfs"),
    ])
    point = tmp_path / "mnt"
    attached = nfsroot.mount_image(image, point, None, None, tmp_path / "cache", print)
    try:
        assert (point / "boot/vmlinuz-test").read_text() == "kernel\n"
        assert (point / "boot/loader/entry.conf").read_text() == "title t\n"
        (line,) = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()
                   if ln.split()[1] == str(point / "boot")]
        assert line[0] == mounts.BOOT_TMPFS and line[2] == "tmpfs"
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(line[3].split(","))
    finally:
        nfsroot.release_image(attached, point, mounts.source_of(point))
    assert mounts.mounted_under(point) == [] and not point.exists()
