"""The progress board: plain timestamped lines without a TTY, a board redrawn in place on one."""

from __future__ import annotations

import io
import re

from vlab.progress import Board
from vlab.watch.judge import phase_of

PROOF = "VLAB-NFSROOT-OK server=10.0.0.1 export=/srv fstype=nfs4 options=ro"


def test_console_lines_move_a_terminal_through_its_phases() -> None:
    lines = ["iPXE (http://ipxe.org) 00:02.0 C000 PCI2.10 PnP PMM+0EFCF110+0EF0F110 C000",
             ">>Start PXE over IPv4.", "Welcome to GRUB!",
             "Configuring (net0 52:54:00:d4:4c:fe)...... ok", "  Station IP address is 10.0.0.9",
             "tftp://10.213.5.1/pxelinux.0... ok", "http://10.0.0.1/vlab/vmlinuz... ok",
             " Downloading NBP file...", "  Downloading...100%",
             "PXELINUX 6.04 PXE 20200816 Copyright (C) 1994-2015 H. Peter Anvin et al",
             "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)",
             "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path",
             "vlab-initrd: kernel command line: console=ttyS0 root=10.0.0.1:/srv",
             "Loading, please wait...", "Starting systemd-udevd version 252.39-1~deb12u2",
             "udhcpc: lease of 10.213.5.10 obtained from 10.213.5.1, lease time 3600",
             "IP-Config: eth0 complete (dhcp from 10.0.0.1):", PROOF, "something else"]
    assert [phase_of(ln) for ln in lines] == [
        "loader", "loader", "loader", "address", "address", "transfer", "transfer", "transfer",
        "transfer", "loader", "kernel", "kernel", "initrd", "initrd", "initrd",
        "dhcp",
        "dhcp", "nfs-mounted", None]


def test_without_a_tty_one_timestamped_line_per_change() -> None:
    out = io.StringIO()
    board = Board(["t1", "t2"], stream=out, tty=False)
    with board:
        board.booted("t1", board.start)
        board.set("t1", "kernel")
        board.set("t1", "kernel")  # no change, no line
        board.set("t1", "defined")  # never backwards
        board.set("t1", "nfs-mounted")
        board.done("t1", "ok", 4.2)
        board.set("t1", "dhcp")  # after the verdict: nothing
    lines = out.getvalue().splitlines()
    assert [re.sub(r"^\[\s*[\d.]+s\] ", "", ln) for ln in lines] == [
        "t1: defined", "t1: kernel", "t1: nfs-mounted", "t1: ok after 4.2 s"]
    assert all(re.match(r"^\[\s*\d+\.\ds\] ", ln) for ln in lines)
    assert "\x1b" not in out.getvalue()


def test_on_a_tty_the_board_is_redrawn_in_place() -> None:
    out = io.StringIO()
    board = Board(["t1", "longname"], stream=out, tty=True)
    with board:
        board.booted("t1", board.start)
        board.set("t1", "dhcp")
        board.done("longname", "nfs-access-denied", 3.1)
    text = out.getvalue()
    assert "\x1b[2F" in text  # cursor back up over the two lines
    last = text.rsplit("\x1b[2F", 1)[1]
    assert "t1        dhcp" in last and "longname  nfs-access-denied after 3.1 s" in last
