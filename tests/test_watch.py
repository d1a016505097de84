"""The verdict engine, fed with console lines as real guests print them."""

from __future__ import annotations

import ast
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import plan_of

from vlab.errors import VirtError
from vlab.nodes import virt
from vlab.progress import PHASES
from vlab.scenario.model import Hypervisor
from vlab.watch.consoles import say_verdicts
from vlab.watch.follow import Follower, address_from_console, watch
from vlab.watch.guesttext import SSH_MARKER, Pattern
from vlab.watch.judge import (
    FAILURES,
    OK,
    READY_BUSYBOX,
    READY_SYSTEMD,
    STALLED,
    STOPPED,
    SYSTEMD_REACHED,
    TIMEOUT,
    Judge,
    Verdict,
    decide,
    shared_client_ids,
)
from vlab.watch.sshkeys import host_key_from_console

PROOF_LINE = (
    "VLAB-NFSROOT-OK server=10.213.1.1 export=/var/cache/vlab/roots/busybox fstype=nfs4 "
    "options=ro,relatime,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,"
    "port=21315,timeo=600,retrans=2,sec=sys,clientaddr=10.213.1.10,local_lock=none,"
    "addr=10.213.1.1"
)


def test_proof_line_is_ok_with_its_proof() -> None:
    decided = decide(PROOF_LINE)
    assert decided is not None
    name, proof = decided
    assert name == OK and proof is not None
    assert (proof.server, proof.export, proof.fstype) == (
        "10.213.1.1", "/var/cache/vlab/roots/busybox", "nfs4")
    assert proof.options.startswith("ro,") and "vers=4.2" in proof.options
    assert proof.client is None  # a proof line from before the client id was printed


def test_proof_line_names_the_nfs_client_id() -> None:
    decided = decide(PROOF_LINE + " client=vlab-525400770002/(none)")
    assert decided is not None and decided[1] is not None
    assert decided[1].client == "vlab-525400770002/(none)"
    assert decided[1].options.endswith("addr=10.213.1.1")


def test_terminals_sharing_an_nfs4_client_id_are_found() -> None:
    def ok(client: str, fstype: str = "nfs4") -> Verdict:
        line = PROOF_LINE.replace("fstype=nfs4", f"fstype={fstype}") + f" client={client}"
        decided = decide(line)
        assert decided is not None
        return Verdict(OK, 1.0, line, decided[1])
    verdicts = {"a": ok("(none)"), "b": ok("vlab-525400000002/(none)"), "c": ok("(none)"),
                "d": ok("(none)", fstype="nfs"), "e": Verdict(TIMEOUT, 9.0)}
    assert shared_client_ids(verdicts) == {"(none)": ["a", "c"]}


@pytest.mark.parametrize(("line", "verdict"), [
    ("mount: mounting 10.213.198.1:/no/such/export on /newroot failed: No such file or directory",
     "nfs-no-such-export"),
    ("mount: mounting 10.0.0.1:/srv on /newroot failed: Permission denied", "nfs-access-denied"),
    ("mount: mounting 10.0.0.1:/srv on /newroot failed: Connection refused", "nfs-unreachable"),
    ("[   65.1] nfs: server 10.0.0.1 not responding, still trying", "nfs-unreachable"),
    ("mount: mounting 10.0.0.1:/srv on /newroot failed: Protocol not supported",
     "nfs-version-unsupported"),
    ("VLAB-FAIL dhcp-failed: no DHCP lease on eth0", "dhcp-failed"),
    ("VLAB-FAIL nic-driver-missing: no network interface appeared", "nic-driver-missing"),
    ("VLAB-FAIL init-failed: no /sbin/init in 10.0.0.1:/srv", "init-failed"),
    ("[    3.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
     "init-failed"),
    ("[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
     "kernel-panic"),
    ("[    1.0] Kernel panic - not syncing: Out of memory and no killable processes",
     "kernel-panic"),
    ("Loading initrd.img failed: No such file or directory", "tftp-file-not-found"),
    ("Could not find kernel image: vmlinuz", "tftp-file-not-found"),
    ("error: file `/vmlinuz' not found.", "tftp-file-not-found"),  # GRUB
    ("  Client Error: 404 Not Found", "http-file-not-found"),  # OVMF's HTTP boot
    ("http://10.213.80.1/vlab/52-54-00-80-00-03.ipxe... No such file or directory (htt",
     "http-file-not-found"),  # iPXE, its line cut at 80 columns
    ("http://10.0.0.1/vlab/vmlinuz... Permission denied (http://ipxe.org/0216eb3c)",
     "http-file-not-found"),
    ("Verification failed: (0x1A) Security Violation", "secure-boot-refused"),  # shim
    ("error: bad shim signature.", "secure-boot-refused"),  # GRUB, for an unsigned kernel
    ("BdsDxe: failed to load Boot0001 \"UEFI PXEv4 (MAC:525400780002)\" from PciRoot(0x0)"
     "/Pci(0x1,0x0)/MAC(525400780002,0x1)/IPv4(0.0.0.0): Access Denied", "secure-boot-refused"),
    ("No more network devices", "dhcp-failed"),
    # initramfs-tools (klibc) and dracut, as their consoles showed them
    ("nfsmount: bad NFS version '4'", "nfs-version-unsupported"),
    ("rpc failed: 3", "nfs-version-unsupported"),
    ("mount.nfs4: an incorrect mount option was specified", "nfs-version-unsupported"),
    ("IP-Config: no response after 6 secs - giving up", "dhcp-failed"),
    ("IP-Config: no response after 16 secs - giving up", "dhcp-failed"),
    ("[   75.2] dracut-initqueue[301]: Warning: dhcp for interface ens2 failed", "dhcp-failed"),
    ("VLAB-FAIL nic-driver-missing: no network interface appeared (udev settled: the initrd "
     "has no driver for the NIC, or it was not loaded)", "nic-driver-missing"),
])
def test_failure_lines(line: str, verdict: str) -> None:
    decided = decide(line)
    assert decided is not None and decided[0] == verdict


@pytest.mark.parametrize("line", [
    "udhcpc: broadcasting discover",
    # klibc's first rounds often end before the link is up; initramfs-tools tries again
    "IP-Config: no response after 2 secs - giving up",
    "IP-Config: no response after 4 secs - giving up",
    "rpc failed: 1x",
    "vlab-initrd: mounting 10.213.1.1:/var/cache/vlab/roots/busybox (vers=4.2,port=21315)",
    "",
])
def test_ordinary_lines_decide_nothing(line: str) -> None:
    assert decide(line) is None


def test_follower_reads_growing_file_and_keeps_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    f = Follower(log)
    assert f.lines() == []
    log.write_bytes(b"one\r\ntw")
    assert f.lines() == ["one"]
    with log.open("ab") as out:
        out.write(b"o\nthree\n")
    assert f.lines() == ["two", "three"]


def test_follower_keeps_a_character_or_escape_split_across_reads_whole(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    f = Follower(log)
    line = "caf\u00e9 \x1b[0;32m  OK  \x1b[0m 10.213.1.12\n".encode()
    cut_in_char, cut_in_escape = line.index(b"\xa9"), line.index(b"32m")
    log.write_bytes(line[:cut_in_char])
    assert f.lines() == []
    with log.open("ab") as out:
        out.write(line[cut_in_char:cut_in_escape])
    assert f.lines() == []  # a half-written address is never read as an address
    with log.open("ab") as out:
        out.write(line[cut_in_escape:])
    assert f.lines() == ["caf\u00e9   OK   10.213.1.12"]


def test_watch_decides_on_the_line_not_at_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "c.log"

    def guest() -> None:
        time.sleep(0.3)
        log.write_text("booting\nmount: mounting 1.2.3.4:/x on /newroot failed: "
                       "No such file or directory\n")

    threading.Thread(target=guest).start()
    start = time.monotonic()
    v = watch(log, started=start, timeout=30, stall=30, poll=0.01)
    assert v.name == "nfs-no-such-export"
    assert time.monotonic() - start < 5
    assert v.tail[-1].startswith("mount: mounting")


def test_watch_timeout_and_stall(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("a line\n")
    assert watch(log, started=time.monotonic(), timeout=0.3, stall=10, poll=0.01).name == TIMEOUT
    assert watch(log, started=time.monotonic(), timeout=10, stall=0.3, poll=0.01).name == STALLED


def test_a_console_redrawing_one_line_is_not_stalled(tmp_path: Path) -> None:
    # systemd waiting on a job: one status line redrawn every second, never a newline.
    log = tmp_path / "c.log"
    log.write_text("VLAB-NFSROOT-OK server=10.0.0.1 export=/srv fstype=nfs4 options=ro\n")
    stop = threading.Event()

    def systemd() -> None:
        for i in range(40):
            if stop.is_set():
                return
            with log.open("a") as out:
                out.write(f"\r\x1b[K[ ***  ] A start job is running for /dev/ttyS0 "
                          f"({i}s / 1min 30s)")
            time.sleep(0.05)
        with log.open("a") as out:
            out.write("\r\x1b[K[  OK  ] Reached target multi-user.target - Multi-User System.\n")

    threading.Thread(target=systemd).start()
    try:
        v = watch(log, started=time.monotonic(), timeout=30, stall=0.5, poll=0.01,
                  ready=re.compile("Reached target multi-user"))
    finally:
        stop.set()
    assert v.ok and "Reached target" in v.line


def test_an_unknown_init_is_ok_only_once_it_has_settled(tmp_path: Path) -> None:
    proof = "VLAB-NFSROOT-OK server=10.0.0.1 export=/srv fstype=nfs4 options=ro,vers=4.2\n"
    log = tmp_path / "console.log"
    log.write_text(proof + "[    3.2] Kernel panic - not syncing: Attempted to kill init!\n")
    v = watch(log, started=time.monotonic(), timeout=10, stall=10, settle=0.5, poll=0.01)
    assert v.name == "init-failed"
    log.write_text(proof)
    start = time.monotonic()
    v = watch(log, started=start, timeout=10, stall=10, settle=0.3, poll=0.01)
    assert v.ok and v.line == proof.strip() and time.monotonic() - start >= 0.3


def test_the_address_a_terminal_got_is_read_off_its_console(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    for text, address in (
        ("vlab-initrd: eth0 is 10.214.1.47/24 (lease from 10.214.1.1)\r\n", "10.214.1.47"),
        ("IP-Config: ens2 complete (dhcp from 10.0.0.1):\r\n address: 10.0.0.12    "
         "broadcast: 10.0.0.255\r\n", "10.0.0.12"),
        ("VLAB-NFSROOT-OK server=10.0.0.1 export=/r fstype=nfs4 options=ro,"
         "clientaddr=10.0.0.13,local_lock=none\r\n", "10.0.0.13"),
        ("IP-Config: ens2 hardware address 52:54:00:57:13:a6 mtu 1500 DHCP\r\n", None),
    ):
        log.write_text(text)
        assert address_from_console(log) == address
    log.write_text("vlab-initrd: eth0 is 10.214.1.4")  # 10.214.1.47, half-written
    assert address_from_console(log) is None


def test_a_host_key_line_is_read_whole_and_a_bad_one_is_no_key(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIAs8tkWLscRp0nS/VZsmMg4yIDgTveOiTPMyuWvNAEUU"
    log.write_text(f"{SSH_MARKER} vm ssh-ed25519 {blob}\r\n")
    found = host_key_from_console(log)
    assert found is not None and found.get_base64() == blob
    log.write_text(f"{SSH_MARKER} vm ssh-ed25519 {blob[:30]}")  # the guest still writing
    assert host_key_from_console(log) is None
    for bad in ("AAAA", "QUJD", "AAAAC3NzaC1lZDI1NTE5AAAAIAs8", "=="):
        log.write_text(f"{SSH_MARKER} vm ssh-ed25519 {bad}\n")
        assert host_key_from_console(log) is None, bad


# Consoles captured from real boots (tests/consoles/): the pure judge replays them with a
# line every 0.1 s, no sleeping, and must decide as it did when they were live.
CONSOLES = Path(__file__).parent / "consoles"


def _replay(name: str, ready: Pattern | None, stall: float = 45,
            timeout: float = 240) -> tuple[Verdict, list[str]]:
    phases: list[str] = []
    judge = Judge(started=0.0, timeout=timeout, stall=stall, ready=ready, settle=5.0,
                  on_phase=phases.append,
                  almost=SYSTEMD_REACHED if ready is READY_SYSTEMD else None)
    now = 0.0
    for line in Follower(CONSOLES / name).lines():
        now += 0.1
        if (verdict := judge.feed(line, now)) is not None:
            return verdict, phases
        if (verdict := judge.tick(now)) is not None:
            return verdict, phases
    while (verdict := judge.tick(now)) is None:  # then the console says no more
        now += 1.0
    return verdict, phases


@pytest.mark.parametrize(("name", "ready", "verdict", "decisive"), [
    ("busybox-ok.log", READY_BUSYBOX, OK, "VLAB-TERMINAL-UP"),
    ("pxe-busybox-ok.log", READY_BUSYBOX, OK, "VLAB-TERMINAL-UP"),
    ("initramfs-tools-ok.log", READY_SYSTEMD, OK, "multi-user.target"),
    ("dir-vlab-initrd-ok.log", READY_SYSTEMD, OK, "multi-user.target"),
    # dracut: the root mounted, then systemd printed nothing more (the open verdict issue)
    ("dracut-proof-then-silent.log", READY_SYSTEMD, STALLED, "systemd-udevd"),
    ("no-such-export.log", READY_BUSYBOX, "nfs-no-such-export", "No such file or directory"),
    ("access-denied.log", READY_BUSYBOX, "nfs-access-denied", "Permission denied"),
    ("pxe-initrd-missing.log", READY_BUSYBOX, "tftp-file-not-found", "Loading initrd.img failed"),
])
def test_recorded_consoles_are_judged_as_they_were_live(
        name: str, ready: Pattern, verdict: str, decisive: str) -> None:
    v, phases = _replay(name, ready)
    assert (v.name, decisive in v.line) == (verdict, True), v
    if verdict == OK:
        assert v.proof is not None and v.proof.fstype in ("nfs", "nfs4")
        seen = list(dict.fromkeys(phases))  # first sightings, in order
        assert seen == [p for p in PHASES if p in seen] and seen[-2:] == ["dhcp", "nfs-mounted"]


def test_a_verdict_carries_the_phases_with_the_second_each_began() -> None:
    """The boot report's timeline: a PXE boot's loader (iPXE), its DHCP, its transfers
    (pxelinux, the kernel and initrd), the initrd, its DHCP and the mount, each at the second
    of the line that began it, in order, once each."""
    v, _phases = _replay("pxe-busybox-ok.log", READY_BUSYBOX)
    names = [name for name, _at in v.phases]
    assert names == ["loader", "address", "transfer", "initrd", "dhcp", "nfs-mounted"], v.phases
    seconds = [at for _name, at in v.phases]
    assert seconds == sorted(seconds) and seconds[-1] <= v.seconds


def test_the_console_bytes_arrival_times_are_kept_beside_the_log(tmp_path: Path) -> None:
    log, stamps = tmp_path / "t1.log", tmp_path / "t1.times"
    log.write_bytes(b"vlab-initrd: kernel command line: x\n")
    follower = Follower(log, stamps, started=time.monotonic() - 3.0)
    follower.lines()
    with log.open("ab") as f:
        f.write(PROOF_LINE.encode() + b"\n")
    follower.lines()
    follower.lines()  # nothing new: no stamp
    follower.close()
    rows = [line.split() for line in stamps.read_text().splitlines()]
    assert [int(offset) for _s, offset in rows] == [36, log.stat().st_size]
    assert 3.0 <= float(rows[0][0]) <= float(rows[1][0]) < 60


def test_an_unknown_init_is_ok_once_it_runs_settle_seconds_past_the_proof() -> None:
    judge = Judge(started=0.0, timeout=60, stall=30, ready=None, settle=5.0)
    assert judge.feed(PROOF_LINE, 2.0) is None
    assert judge.tick(6.9) is None
    v = judge.tick(7.0)
    assert v is not None and v.name == OK and v.seconds == 2.0


def test_the_judge_stalls_on_silence_but_not_on_a_line_redrawn_in_place() -> None:
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    judge.feed(PROOF_LINE, 1.0)
    for t in range(2, 100):
        judge.output(float(t))  # "A start job is running..." with no newline
        assert judge.tick(float(t)) is None
    v = judge.tick(99.0 + 45.1)
    assert v is not None and v.name == STALLED and v.proof is not None


def test_a_silent_guest_that_keeps_its_cpu_busy_is_not_stalled() -> None:
    # A soft lockup under TCG, or systemd starting units quietly on a loaded host: no
    # console output for minutes, the vCPU at 30% to 100%. Not stalled; then it goes idle.
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    judge.feed(PROOF_LINE, 1.0)
    cpu = 0.0
    for t in range(2, 200):
        cpu += 0.3  # 30% of one CPU each second
        judge.cpu(float(t), cpu)
        assert judge.tick(float(t)) is None, t
    for t in range(200, 245):  # idle: 1% (timer ticks), as a guest hung on its NFS server
        cpu += 0.01
        judge.cpu(float(t), cpu)
        assert judge.tick(float(t)) is None, t
    judge.cpu(246.0, cpu + 0.01)
    v = judge.tick(246.0)
    assert v is not None and v.name == STALLED


def test_an_idle_silent_guest_stalls_within_its_stall_window() -> None:
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    judge.feed(PROOF_LINE, 1.0)
    for t in range(2, 47):
        judge.cpu(float(t), 0.01 * t)
        assert judge.tick(float(t)) is None
    judge.cpu(47.0, 0.47)
    v = judge.tick(47.0)
    assert v is not None and v.name == STALLED and v.seconds == 47.0


def test_watch_samples_the_guest_cpu(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(PROOF_LINE + "\n")
    clock = time.monotonic()
    def busy() -> tuple[float, float]:  # a vCPU at 90%
        now = time.monotonic()
        return now, (now - clock) * 0.9

    v = watch(log, started=time.monotonic(), timeout=2.5, stall=1.2, poll=0.01,
              ready=READY_SYSTEMD, cpu=busy)
    assert v.name == TIMEOUT  # busy all along: never stalled
    v = watch(log, started=time.monotonic(), timeout=10, stall=1.2, poll=0.01,
              ready=READY_SYSTEMD, cpu=lambda: (time.monotonic(), 1.0))
    assert v.name == STALLED and v.seconds < 3
    # A sampler that answers no more (its host is slow to answer): its last sample counts
    # once; the silence decides, when the stall window says, not later.
    stuck = (time.monotonic(), 1.0)
    v = watch(log, started=time.monotonic(), timeout=10, stall=1.2, poll=0.01,
              ready=READY_SYSTEMD, cpu=lambda: stuck)
    assert v.name == STALLED and v.seconds < 3


def test_the_judge_times_out_while_the_console_talks() -> None:
    judge = Judge(started=0.0, timeout=10, stall=10, ready=READY_SYSTEMD)
    for t in range(1, 11):
        assert judge.feed(f"still starting {t}", float(t)) is None
        assert judge.tick(float(t)) is None
    v = judge.tick(10.5)
    assert v is not None and v.name == TIMEOUT and v.line == "still starting 10"


def test_a_systemd_root_is_up_by_the_runtime_unit_when_systemd_no_longer_prints() -> None:
    judge = Judge(started=0.0, timeout=240, stall=45, ready=READY_SYSTEMD)
    assert judge.feed(PROOF_LINE, 5.0) is None
    assert judge.feed("vm login: ", 40.0) is None
    assert judge.feed("VLAB-TERMINAL-UP (none) nfs4 root", 41.0) is None  # busybox's: not this
    v = judge.feed("VLAB-TERMINAL-UP vm systemd multi-user.target", 44.0)
    assert v is not None and v.name == OK and v.seconds == 44.0


def test_silence_under_kvm_names_the_fix() -> None:
    plan = plan_of("tiny")
    kvm = replace(plan, hypervisor=Hypervisor.KVM)
    said: list[str] = []
    say_verdicts(kvm, {kvm.terminals[0]: Verdict(STALLED, 10.0)}, 10, said.append)
    assert any('set hypervisor = "qemu"' in line for line in said)
    said.clear()
    say_verdicts(plan, {plan.terminals[0]: Verdict(STALLED, 10.0)}, 10, said.append)
    assert not any("hypervisor" in line for line in said)


def _boot_tests() -> list[ast.FunctionDef]:
    """Every test function marked `boot` (by itself or by its module's pytestmark)."""
    found = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        whole = any(isinstance(n, ast.Assign) and "pytestmark" in map(ast.unparse, n.targets)
                    and "boot" in ast.unparse(n.value) for n in tree.body)
        found += [n for n in tree.body if isinstance(n, ast.FunctionDef)
                  and n.name.startswith("test_")
                  and (whole or any("mark.boot" in ast.unparse(d) for d in n.decorator_list))]
    return found


def test_every_verdict_name_is_provoked_by_a_boot_test() -> None:
    """Each verdict name is a string of a test that boots (in its body or its parameters),
    not merely somewhere in a test file."""
    names = {name for name, _ in FAILURES} | {STALLED, TIMEOUT}
    said = {c.value for test in _boot_tests() for c in ast.walk(test)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert sorted(names - said) == []


def test_a_domain_that_stops_is_decided_within_a_second_after_its_last_lines(
        tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("booting\n")
    began = time.monotonic()
    states = iter(["running", "running", "shut off"])
    v = watch(log, started=began, timeout=60, stall=45, poll=0.01,
              state=lambda: next(states, "shut off"))
    assert v.name == STOPPED and "the domain is shut off (libvirt), after: booting" in v.line
    assert time.monotonic() - began < 3.5
    # A decisive line printed just before the domain went wins over the stop.
    log.write_text("booting\nKernel panic - not syncing: VFS: Unable to mount root fs\n")
    v = watch(log, started=time.monotonic(), timeout=60, stall=45, poll=0.01,
              state=lambda: "absent")
    assert v.name == "kernel-panic"


def test_a_death_an_event_tells_is_decided_at_the_next_poll(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("booting\n")
    began = time.monotonic()
    asked: list[float] = []

    def state() -> str:
        asked.append(time.monotonic())
        return "running"

    v = watch(log, started=began, timeout=60, stall=45, poll=0.01, state=state,
              died=lambda: "crashed (the guest kernel panicked)"
              if time.monotonic() - began > 0.5 else None)
    assert v.name == STOPPED, v
    assert v.line == ("the domain is crashed (the guest kernel panicked) (libvirt event), "
                      "after: booting")
    assert 0.5 <= time.monotonic() - began < 1.0
    assert len(asked) == 1  # with events, the state is only the fallback


def test_a_domain_gone_before_its_event_is_told_by_the_event(tmp_path: Path) -> None:
    """libvirt can drop a domain a moment before its STOPPED event is dispatched: the state
    poll's "absent" waits a moment for the event, and says it itself if none comes."""
    log = tmp_path / "console.log"
    log.write_text("reboot: Power down\n")
    began = time.monotonic()
    v = watch(log, started=began, timeout=60, stall=45, poll=0.01, state=lambda: "absent",
              died=lambda: "shut off" if time.monotonic() - began > 0.3 else None)
    assert v.line == "the domain is shut off (libvirt event), after: reboot: Power down", v
    began = time.monotonic()
    v = watch(log, started=began, timeout=60, stall=45, poll=0.01, state=lambda: "absent",
              died=lambda: None)
    assert v.line == "the domain is absent (libvirt), after: reboot: Power down", v
    assert 1.0 <= time.monotonic() - began < 2.0


def test_libvirt_lifecycle_events_name_a_destroyed_domain(tmp_path: Path) -> None:
    """On libvirt's test driver (its own event source): a domain destroyed is told by an
    event, through vlab's event loop, within a moment."""
    conn = virt.connect("test:///default")
    try:
        deaths = virt.Deaths(conn)
        assert deaths.live
        virt.destroy_domain(conn, "test")
        waited = time.monotonic()
        while deaths.of("test") is None and time.monotonic() - waited < 5:
            time.sleep(0.01)
        assert deaths.of("test") == "shut off"
        assert deaths.of("other") is None
        deaths.close()
    finally:
        virt.close(conn)


def test_a_state_libvirt_cannot_give_is_not_a_death(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("booting\n")

    def unknown() -> str:
        raise VirtError("look up domain", "connection reset")

    v = watch(log, started=time.monotonic(), timeout=1.5, stall=45, poll=0.01, state=unknown)
    assert v.name == TIMEOUT


def test_polled_states_and_cpu_come_from_libvirt() -> None:
    """On libvirt's test driver: one thread asks, the watchers read its last answers."""
    conn = virt.connect("test:///default")
    polled = virt.Polled(conn, ["test", "other"], every=0.05)
    try:
        waited = time.monotonic()
        while polled.state("other") == "unknown" and time.monotonic() - waited < 5:
            time.sleep(0.01)
        assert polled.state("test") == "running" and polled.state("other") == "absent"
        sample = polled.cpu("test")
        assert sample is not None and sample[0] <= time.monotonic() and sample[1] > 0
        assert polled.cpu("other") is None
    finally:
        polled.close()
        virt.close(conn)


class _Hung:
    """A connection whose host does not answer: every call waits (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def lookupByName(self, name: str) -> None:  # noqa: N802  (libvirt's name)
        self.release.wait(30)
        raise virt.libvirt.libvirtError("connection closed: keepalive timeout")


class _Gone:
    """A host that answers again, where the domain is no more."""

    closed = 0

    def lookupByName(self, name: str) -> None:  # noqa: N802  (libvirt's name)
        err = virt.libvirt.libvirtError(f"Domain not found: {name}")
        err.err = (virt.libvirt.VIR_ERR_NO_DOMAIN, 0, f"Domain not found: {name}", 2, "", "",
                   "", 0, 0)
        raise err

    def close(self) -> int:
        _Gone.closed += 1
        return 0


def test_a_broken_console_relay_reopens_only_while_its_domain_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(virt, "RELAY_RETRY_WAIT", 0.0)
    tries: list[int] = []

    def unreachable() -> None:
        tries.append(1)
        raise VirtError("connect to xen+ssh://h/system", "Connection refused")

    assert virt._reopen_console(unreachable, "t1") is None
    assert len(tries) == virt.RELAY_RETRIES  # then the relay ends: nothing waits on it
    assert virt._reopen_console(_Gone, "t1") is None and _Gone.closed == 1


def test_a_host_that_does_not_answer_delays_no_verdict(tmp_path: Path) -> None:
    """A remote host under load answers nothing for minutes (its connection's keepalive
    closes it only then): the watch still ends at its timeout, to the tenth of a second."""
    log = tmp_path / "console.log"
    log.write_text("booting\n")
    hung = _Hung()
    polled = virt.Polled(hung, ["t1"])
    try:
        began = time.monotonic()
        v = watch(log, started=began, timeout=1.0, stall=45, poll=0.01,
                  state=lambda: polled.state("t1"), cpu=lambda: polled.cpu("t1"))
        assert v.name == TIMEOUT and time.monotonic() - began < 1.5
        assert polled.state("t1") == "unknown" and polled.cpu("t1") is None
    finally:
        polled.close()
        hung.release.set()


def test_the_ready_line_names_failed_units_and_drops_what_is_no_unit_name() -> None:
    from vlab.watch.judge import failed_units
    line = "VLAB-TERMINAL-UP t1 systemd multi-user.target failed=ssh.service,getty@ttyS0.service"
    assert failed_units(line) == ["ssh.service", "getty@ttyS0.service"]
    assert failed_units("VLAB-TERMINAL-UP t1 systemd multi-user.target failed=") == []
    assert failed_units("VLAB-TERMINAL-UP t1 systemd multi-user.target failed=a$(x),b.mount"
                        ) == ["b.mount"]
    assert failed_units("Reached target multi-user.target") == []
    assert failed_units(None) == []


def test_silence_after_an_address_and_before_any_mount_is_nfs_unreachable() -> None:
    """klibc's nfsmount and mount.nfs wait for a server that does not answer without a word
    (seen with initramfs-tools and dracut roots): named, not just stalled."""
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    assert judge.feed("IP-Config: ens2 complete (dhcp from 10.213.231.1):", 10.0) is None
    assert judge.feed(" filename  : ", 10.1) is None
    assert judge.tick(50.0) is None
    v = judge.tick(55.2)
    assert v is not None and v.name == "nfs-unreachable" and "after DHCP" in v.line
    dracut = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    dracut.feed("dhcp: BOUND setting up eth0", 5.0)
    v = dracut.tick(60.0)
    assert v is not None and v.name == "nfs-unreachable"


@pytest.mark.parametrize("asked", [
    "dhcp: PREINIT eth0 up",  # dracut's dhclient, which says nothing more for 60 s
    "IP-Config: ens2 hardware address 52:54:00:ff:3b:df mtu 1500 DHCP",
    "udhcpc: broadcasting discover",
])
def test_silence_after_asking_for_a_lease_and_none_came_is_dhcp_failed(asked: str) -> None:
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    assert judge.feed("Starting systemd-udevd version 252.39-1~deb12u2", 4.0) is None
    assert judge.feed(asked, 5.0) is None
    assert judge.tick(49.0) is None
    v = judge.tick(50.5)
    assert v is not None and v.name == "dhcp-failed", v
    assert "after asking for a DHCP lease" in v.line and asked in v.line
    # Silence before any DHCP client asked is no DHCP failure.
    quiet = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    quiet.feed("Starting systemd-udevd version 252.39-1~deb12u2", 4.0)
    v = quiet.tick(50.5)
    assert v is not None and v.name == "stalled", v


def test_a_dracut_root_silent_after_its_nfs_root_is_stalled_not_dhcp_failed() -> None:
    """CI, a trixie root with its own dracut on a loaded host: the root mounted, then the
    root's own systemd ran dracut-shutdown.service (a "dracut-" line, which is no initrd
    starting again) and fell silent: that is not "no DHCP server answers"."""
    judge = Judge(started=0.0, timeout=600, stall=45, ready=READY_SYSTEMD)
    judge.feed("dhcp: PREINIT eth0 up", 10.0)
    judge.feed("dhcp: BOUND setting up eth0", 14.0)
    judge.feed(PROOF_LINE, 22.0)
    judge.feed("[  OK  ] Finished dracut-shutdown.service - Restore /run/initramfs on shutdown.",
               30.0)
    judge.feed("[  OK  ] Finished getty-static.service - getty on tty2-tty6 if dbus and logind "
               "are not available.", 40.0)
    assert judge.phase == "nfs-mounted"
    v = judge.tick(86.0)
    assert v is not None and v.name == STALLED, v


def test_a_stalled_verdict_names_the_job_systemd_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(PROOF_LINE.encode() + b"\n[  OK  ] Started Journal Service.\n"
                    b"\x1b[K[ \x1b[0;31m*\x1b[0m] (2 of 7) Job dev-ttyS0.device/start running "
                    b"(15s / 1min 30s)\r\r\x1b[K[**  ] (2 of 7) Job dev-ttyS0.device/start "
                    b"running (16s / 1min 30s)\r")
    v = watch(log, started=time.monotonic(), timeout=30, stall=1.0, poll=0.01,
              ready=READY_SYSTEMD, cpu=lambda: (time.monotonic(), 1.0))
    assert v.name == STALLED
    assert v.line == "[  OK  ] Started Journal Service. (systemd was waiting for " \
                     "dev-ttyS0.device/start)", v.line


def test_a_root_brought_as_a_folder_is_judged_by_what_its_init_is(tmp_path: Path) -> None:
    """systemd: its ready line; vlab's busybox init (the marker in it): its own; anything
    else (an init vlab does not know, a FIFO where the init should be): the settle time."""
    import os

    from vlab.scenario.model import RootSource
    from vlab.watch.consoles import ready_line
    from vlab.watch.guesttext import READY_MARKER
    from vlab.watch.judge import READY_BUSYBOX, READY_SYSTEMD

    plan = replace(plan_of("tiny"), root_source=RootSource.DIR, export_path=tmp_path)
    (tmp_path / "sbin").mkdir()
    (tmp_path / "lib/systemd").mkdir(parents=True)
    (tmp_path / "lib/systemd/systemd").write_text("ELF")
    (tmp_path / "sbin/init").symlink_to("/lib/systemd/systemd")
    assert ready_line(plan) is READY_SYSTEMD
    (tmp_path / "sbin/init").unlink()
    (tmp_path / "sbin/init").write_text(f"#!/bin/sh\necho {READY_MARKER} $name\n")
    assert ready_line(plan) is READY_BUSYBOX
    (tmp_path / "sbin/init").write_text("#!/bin/sh\nexec /bin/sh\n")
    assert ready_line(plan) is None
    (tmp_path / "sbin/init").unlink()
    os.mkfifo(tmp_path / "sbin/init")
    assert ready_line(plan) is None  # and it did not block on the FIFO


# Guest text against the judge (issue 27): lines a hostile guest prints to stall it. Each
# took Python's backtracking engine time quadratic in the line's length (a 32 KB line 2.7 s,
# a 1 MiB line about 45 minutes), during which the lab's timeout was not looked at.
HOSTILE_LINES = (
    "mount: mounting " + "a" * (1 << 20),
    "dhcp" * (1 << 18),
    "Job " + "x/" * (1 << 19),
    "A start job is running for " + "(" * (1 << 20),
    "IP-Config: " + "x " * (1 << 19),
)


@pytest.mark.parametrize("line", HOSTILE_LINES, ids=["mount", "dhcp", "job", "start-job",
                                                     "ip-config"])
def test_a_1mib_console_line_is_judged_at_once(line: str) -> None:
    """Fed to the judge, then followed by a decisive line: the verdict still comes, and the
    hostile line took a small fraction of the second the issue allows (a bound for a
    machine twice as slow and loaded, not a speed figure: the old engine took minutes)."""
    judge = Judge(started=0.0, timeout=300, stall=45)
    began = time.perf_counter()
    assert judge.feed(line, 1.0) is None
    took = time.perf_counter() - began
    assert took < 1.0, f"{took:.2f} s for one line"
    verdict = judge.feed("Kernel panic - not syncing: VFS: Unable to mount root fs", 2.0)
    assert verdict is not None and verdict.name == "kernel-panic"


def test_every_pattern_over_guest_text_is_linear_time() -> None:
    """The judge's patterns are RE2 patterns (google-re2: linear in the text's length)."""
    from vlab.watch import cause, judge, sshkeys
    from vlab.watch.guesttext import Pattern as Linear

    patterns = [p for _name, p in FAILURES] + [p for _name, p in judge.PHASE_LINES] + [
        judge.PROOF_RE, judge.DHCP_ASKED_RE, judge.ADDRESS_RE, judge.JOB_RE, judge.ANSI,
        READY_BUSYBOX, READY_SYSTEMD, SYSTEMD_REACHED, judge.FAILED_UNITS_RE, judge.UNIT_RE,
        sshkeys.HOST_KEY_RE]
    patterns += [v for v in vars(cause).values() if isinstance(v, re.Pattern | Linear)]
    assert all(isinstance(p, Linear) for p in patterns), [
        p.pattern for p in patterns if not isinstance(p, Linear)]


def test_a_line_that_never_ends_is_read_in_pieces(tmp_path: Path) -> None:
    """The follower holds at most LINE_MAX bytes of an unfinished line, and the judge's
    lines are no longer than that: 8 MiB without a newline cost no 8 MiB string."""
    from vlab.watch.guesttext import LINE_MAX

    log = tmp_path / "t1.log"
    log.write_bytes(b"x" * (8 << 20) + b"\nKernel panic - not syncing: x\n")
    follower = Follower(log)
    lines: list[str] = []
    while chunk := follower.lines():
        lines += chunk
        assert len(follower.partial) <= LINE_MAX
    assert all(len(line) <= LINE_MAX for line in lines)
    assert lines[-1] == "Kernel panic - not syncing: x"


def test_escapes_a_guest_prints_reach_the_operator_inert(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An OSC 52 clipboard write, a terminal reset, a C1 CSI, a BEL, a bidirectional
    override: in the decisive line vlab prints, and in what `vlab status` prints, each is
    shown as its escape, none is sent to the terminal."""
    from vlab.cli import _print_report
    from vlab.progress import stderr_progress

    hostile = ("mount: mounting x failed: \x1b]52;c;ZXZpbA==\x07 \x1bc \x9b2J \x07 "
               "\u202eevil\x1b[31m")
    plan = plan_of("tiny")
    say_verdicts(plan, {plan.terminals[0]: Verdict("nfs-mount-failed", 1.0, hostile)}, 45,
                 stderr_progress())
    _print_report({"lab": "esc", "terminals": [{
        "name": "t1", "node": "local", "mac": "52:54:00:00:00:01", "ip": "", "state": "running",
        "verdict": "nfs-mount-failed", "seconds": 1.0, "proof": None, "line": hostile,
        "console_log": "/x"}]})
    out, err = capsys.readouterr()
    for text in (out, err):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
        assert "\\x1b]52;c;ZXZpbA==\\x07" in text and "\\x1bc" in text, repr(text)
        assert "\\x9b2J" in text and "\\u202eevil" in text, repr(text)

