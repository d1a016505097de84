"""The judge: a terminal's console lines, its CPU time and the clock to a verdict.

Pure: feed it lines, it answers with a verdict on the first decisive line (the proof of the
NFS root, or a recognised failure), so failures are reported within a poll interval of the
line that shows them, never at the timeout. follow.py feeds it from the console's log.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vlab.watch.guesttext import FAIL_MARKER, LINE_MAX, MARKER, READY_MARKER, Pattern, pattern

OK = "ok"
# Terminal escapes the judge reads past: CSI (cursor moves, colours), OSC (titles, clipboard)
# and the two-character ones.
ANSI = pattern(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]")
# What a root's own init says once the terminal is up, by kind of init.
READY_BUSYBOX = pattern(re.escape(READY_MARKER))
# A systemd root is up at the line of the runtime unit the initrd adds (ready.sh.j2): it
# comes once multi-user.target is reached, also after a getty took the console and systemd
# prints no more, and it names the units that failed. systemd's own line is provisional: ok
# at it only if the unit's line does not follow within READY_GRACE s.
READY_SYSTEMD = pattern(re.escape(READY_MARKER) + r" \S+ systemd ")
SYSTEMD_REACHED = pattern(r"Reached target .*Multi-User System|"
                             r"Reached target multi-user\.target")
READY_GRACE = 20.0
# What systemd says it waits for, in the status line it redraws in place (no newline).
JOB_RE = pattern(r"Job (\S+/\S+) running \(|A (?:start|stop) job is running for (.+?) \(")
TIMEOUT = "timeout"
STALLED = "stalled"
STOPPED = "domain-stopped"  # the domain is no longer running: destroyed, shut off, crashed
INTERRUPTED = "interrupted"  # never reported: the vlab command itself was interrupted
# A guest whose vCPU ran, or was ready to run and waited for a host CPU, at least this share
# of the wall clock is working, console or not (an idle guest, hung on a dead server or an
# init asleep, uses about 1%; a booting one near 100%: on a loaded host, twelve TCG guests on
# two cores, it runs a sixth of the time and waits the rest). CPU_POLL: seconds between samples.
BUSY_SHARE = 0.2
CPU_POLL = 1.0

PROOF_RE = pattern(
    re.escape(MARKER) + r" server=(?P<server>\S*) export=(?P<export>\S*) "
    r"fstype=(?P<fstype>\S+) options=(?P<options>\S+)(?: client=(?P<client>\S+))?"
)

# Milestones on the way to the verdict, for the progress board (direct boot, PXE, builders).
PHASE_LINES = (
    # Network boot: the NIC's iPXE, pxelinux, OVMF's own PXE or HTTP boot, shim and GRUB
    # (before them: the firmware).
    ("loader", pattern(r"\biPXE\b|PXELINUX \d|>>Start PXE over IPv[46]|>>Start HTTP Boot over "
                          r"IPv4|Welcome to GRUB|GNU GRUB|Booting from ROM")),
    # ...which got its address by DHCP (iPXE, OVMF's PXE and HTTP boot)...
    ("address", pattern(r"Configuring \(net\d+ [0-9a-f:]+\)\.* ok|Station IP address is ")),
    # ...and fetches what it boots: iPXE's URLs, OVMF's downloads (the loader's own, the
    # HTTP boot image); what follows until the kernel is loaders and their transfers.
    ("transfer", pattern(r"(?:https?|tftp)://\S+\.\.\.|Downloading NBP file|"
                            r"Downloading\.\.\.\d+%")),
    ("kernel", pattern(r"Linux version \d|EFI stub: |Decompressing Linux")),
    ("initrd", pattern(r"vlab-initrd: kernel command line|Run /init as init|"
                          r"Loading, please wait|dracut-|Starting systemd-udevd version")),
    ("dhcp", pattern(r"lease of \S+ obtained|\(lease from|IP-Config: \S+ complete|"
                        r"dhcp.*(bound|lease)|DHCPACK|dhcp: BOUND|\(SLAAC")),
    ("nfs-mounted", PROOF_RE),
)
# A DHCP client asking for a lease (udhcpc, klibc's ipconfig, dracut's dhclient): silence and
# an idle vCPU after one, with no lease, is no DHCP server (a lab's answers in milliseconds).
DHCP_ASKED_RE = pattern(r"udhcpc: (?:broadcasting|sending) discover|"
                           r"IP-Config: \S+ hardware address .* DHCP|dhcp: PREINIT")


# Where a terminal's console says which address DHCP (or SLAAC) gave it: vlab's initrd
# ("vlab-initrd: eth0 is 10.0.1.57/24", "... is fd00:213:1::5054:ff:fe12:3456/64"), klibc's
# ipconfig ("address: 10.0.1.57" under initramfs-tools), and the NFSv4 proof line of every
# builder ("clientaddr=10.0.1.57").
ADDRESS_RE = pattern(r"(?m)(?:vlab-initrd: \S+ is |^ *address: |clientaddr=)"
                        r"(\d+\.\d+\.\d+\.\d+|[0-9a-f]{1,4}:[0-9a-f:]+)\b", )


# What is read of a console's end for what it said last (its address, its host key).
def phase_of(line: str) -> str | None:
    return next((name for name, phase in PHASE_LINES if phase.search(line)), None)


PHASE_ORDER = [name for name, _pattern in PHASE_LINES]
BEFORE_DHCP = ("", *PHASE_ORDER[:PHASE_ORDER.index("dhcp")])


def _later(phase: str, than: str) -> bool:
    return not than or PHASE_ORDER.index(phase) > PHASE_ORDER.index(than)


# First match wins, so specific causes come before the generic lines that follow them.
FAILURES: tuple[tuple[str, Pattern], ...] = tuple(
    (name, pattern(regex))
    for name, regex in (
        # vlab's initrd (busybox mount), dracut's (nfs-utils' mount.nfs) and initramfs-tools'
        # (klibc's nfsmount, which initramfs-tools retries: its first such line decides).
        ("nfs-no-such-export", r"mount: mounting \S+ on \S+ failed: No such file or directory"
         r"|mounting \S+ failed, reason given by server: No such file or directory"
         r"|mount call failed - server replied: No such file or directory"),
        ("nfs-access-denied",
         r"mount: mounting \S+ on \S+ failed: (Permission denied|Operation not permitted)"
         r"|access denied by server while mounting"
         r"|mount call failed - server replied: Permission denied"),
        ("nfs-unreachable",
         r"mount: mounting \S+ on \S+ failed: (Connection refused|No route to host|"
         r"Network is unreachable|Connection timed out|Input/output error|Host is down)"
         r"|nfs: server \S+ not responding"
         r"|mount\.nfs4?: (Connection refused|No route to host|Network is unreachable|"
         r"Connection timed out|timed out, giving up)"
         r"|^nfsmount: (Connection refused|No route to host|Network is unreachable|"
         r"Connection timed out)|NFS over TCP not available from"),
        ("nfs-version-unsupported",
         r"mount: mounting \S+ on \S+ failed: (Protocol not supported|Invalid argument|"
         r"Protocol family not supported)|nfs: Unknown parameter|Program version wrong"
         r"|requested NFS version or transport protocol is not supported"
         # mount.nfs's text for the kernel's EINVAL, which its NFS client gives for a
         # version or minor version it does not have (vlab's own options are valid)
         r"|mount\.nfs4?: an incorrect mount option was specified"
         # klibc's nfsmount: NFSv2/v3 only, and a server without MOUNT v1 (NFSv2) answers
         # PROG_MISMATCH or PROC_UNAVAIL
         r"|^nfsmount: bad NFS version|^rpc failed: [23]$"),
        # Any other reason the mount gives (e.g. a root path that is a file: Not a directory).
        ("nfs-mount-failed",
         r"mount: mounting \S+ on \S+ failed|" + re.escape(FAIL_MARKER) + r" nfs-mount"
         r"|mount call failed - server replied|mount\.nfs4?: mounting \S+ failed"),
        # klibc's ipconfig, retried by initramfs-tools in rounds of 2, 3, 4, 6, ... s: the
        # first round often ends before the link is up, but a server that let the 2, 3, 4
        # and 6 s rounds go by is not there (a lab's dnsmasq answers in milliseconds);
        # dracut's dhclient gives up after its 60 s.
        ("dhcp-failed", re.escape(FAIL_MARKER) + r" dhcp-failed|No more network devices|"
         r"No configuration methods succeeded|IP-Config: no response after (?:[6-9]|\d\d+) "
         r"secs|dhcp for interface \S+ failed"),
        # PXE under Secure Boot: shim refuses a loader (GRUB) no key it trusts signed, GRUB
        # (through shim) a kernel, OVMF a boot file itself.
        ("secure-boot-refused",
         r"Verification failed: \(0x1A\) Security Violation|error: bad shim signature|"
         r"prohibited by secure boot policy|BdsDxe: failed to load .*: Access Denied"),
        # Over HTTP: UEFI HTTP boot (OVMF's "Client Error: 404 Not Found") or iPXE ("URL...
        # No such file or directory") asked the web server for a file it has not, or may not
        # read.
        ("http-file-not-found",
         r"Client Error: 40[34] |https?://\S+\.\.\. (?:No such file or directory|Permission "
         r"denied)"),
        # PXE: pxelinux, iPXE and GRUB cannot fetch a file of the TFTP tree.
        ("tftp-file-not-found",
         r"Could not find (kernel|ramdisk) image|Unable to locate configuration file|"
         r"failed:\s+No such file or directory|TFTP error|File not found|"
         r"Loading \S+( |\.\.\.)\s*failed|error: file `[^']*' not found"),
        ("nic-driver-missing", re.escape(FAIL_MARKER) + r" nic-driver-missing"),
        ("init-failed",
         re.escape(FAIL_MARKER) + r" init-failed|Attempted to kill init|"
         r"switch_root: |No working init found|Failed to execute /init"
         # initramfs-tools' init, and dracut's
         r"|Target filesystem doesn't have requested|No init found\. Try passing init="
         r"|Cannot find init!"),
        ("kernel-panic", r"Kernel panic - not syncing"),
    )
)


@dataclass(frozen=True)
class Proof:
    server: str
    export: str
    fstype: str
    options: str
    client: str | None = None  # the NFSv4 client id: uniquifier/hostname, or the hostname


@dataclass(frozen=True)
class Verdict:
    name: str
    seconds: float
    line: str = ""
    proof: Proof | None = None
    tail: tuple[str, ...] = ()
    # Each phase the console showed, with the second (since the domain started) of the line
    # that began it; the verdict's own second ends the last.
    phases: tuple[tuple[str, float], ...] = ()
    # Where the lab's servers saw the failure too, its cause in a sentence (cause.py; set by
    # the lab once the judge decided, never by the judge).
    cause: str | None = None
    # What the lab's servers logged about the terminal (its DHCP and TFTP lines, cause.py).
    seen: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.name == OK


def shared_client_ids(verdicts: dict[str, Verdict]) -> dict[str, list[str]]:
    """NFSv4 client ids that more than one terminal showed in its proof, with those terminals."""
    by_id: dict[str, list[str]] = {}
    for name, v in verdicts.items():
        if v.proof and v.proof.client and v.proof.fstype == "nfs4":
            by_id.setdefault(v.proof.client, []).append(name)
    return {client: names for client, names in by_id.items() if len(names) > 1}


def decide(line: str) -> tuple[str, Proof | None] | None:
    """The verdict a single console line decides, if any."""
    if m := PROOF_RE.search(line):
        return OK, Proof(**m.groupdict())
    for name, failure in FAILURES:
        if failure.search(line):
            return name, None
    return None


def clean(raw: bytes) -> str:
    """One console line as the judge reads it: decoded, escapes and carriage returns gone,
    at most LINE_MAX characters (the rest of a longer line is dropped)."""
    return ANSI.sub("", raw[:LINE_MAX].decode(errors="replace")).replace("\r", "")


class Judge:
    """The verdict of one console, decided from its lines and the clock alone (pure: no
    sleeping, no files). feed() each line as it arrives, output() when bytes arrived that
    end no line yet, tick() now and then; each returns the verdict once there is one.

    "stalled" needs both silence and idleness: cpu() takes samples of the guest's CPU time,
    and a guest that keeps its vCPU busy (systemd starting units quietly on a slow or loaded
    host, a guest kernel's soft lockup under TCG) is still booting, not stalled.

    With `ready`, the proof of the NFS root is not enough: the root's own init must also
    say it is up (e.g. systemd reaching multi-user) for the verdict to be ok. Without it (an
    init vlab does not know), the proof is ok once `settle` s pass with no failure line: an
    init that dies at once is caught.
    """

    def __init__(self, *, started: float, timeout: float, stall: float,
                 ready: Pattern | None = None, settle: float = 0.0,
                 on_phase: Callable[[str], None] | None = None,
                 almost: Pattern | None = None, grace: float = READY_GRACE) -> None:
        self.started, self.timeout, self.stall = started, timeout, stall
        self.ready, self.settle, self.on_phase = ready, settle, on_phase
        self.almost, self.grace = almost, grace
        self.almost_at: float | None = None
        self.phase = ""  # the last boot phase a line showed (PHASE_LINES)
        self.phases: list[tuple[str, float]] = []
        self.asked = False  # a DHCP client asked for a lease (DHCP_ASKED_RE)
        self.job = ""  # the last systemd job its status line said it waits for
        self.almost_line = ""
        self.tail: deque[str] = deque(maxlen=20)
        self.last_output = started
        self.last_busy = started
        self.cpu_sample: tuple[float, float] | None = None  # (when, guest CPU seconds)
        self.proof: Proof | None = None
        self.proved_at, self.proof_line = 0.0, ""

    def verdict(self, name: str, at: float, line: str) -> Verdict:
        return Verdict(name, round(at - self.started, 1), line, self.proof, tuple(self.tail),
                       tuple(self.phases))

    def output(self, now: float, pending: str = "") -> None:
        """Bytes arrived (systemd redraws "A start job is running..." in place, no newline);
        `pending` is that unfinished line as it shows now."""
        self.last_output = now
        self._job(pending)

    def _job(self, text: str) -> None:
        if m := JOB_RE.search(text):
            self.job = m.group(1) or m.group(2)

    def cpu(self, now: float, seconds: float) -> None:
        """A sample of the guest's CPU time (seconds used since it started)."""
        if self.cpu_sample is not None:
            at, before = self.cpu_sample
            if now > at and (seconds - before) / (now - at) >= BUSY_SHARE:
                self.last_busy = now
        self.cpu_sample = (now, seconds)

    def feed(self, line: str, now: float) -> Verdict | None:
        line = line[:LINE_MAX]
        self.last_output = now
        self.tail.append(line)
        self._job(line)
        if (phase := phase_of(line)) is not None and _later(phase, self.phase):
            # A phase only moves on: a root's own "dracut-..." units after the NFS root is
            # mounted are not its initrd starting again.
            self.phase = phase
            self.phases.append((phase, round(now - self.started, 2)))
            if self.on_phase is not None:
                self.on_phase(phase)
        self.asked = self.asked or bool(DHCP_ASKED_RE.search(line))
        decided = decide(line)
        if decided is not None and decided[0] != OK:
            return self.verdict(decided[0], now, line)
        if decided is not None:
            self.proof, self.proved_at, self.proof_line = decided[1], now, line
        if self.proof is not None and self.ready is not None and self.ready.search(line):
            return self.verdict(OK, now, line)
        if (self.proof is not None and self.almost is not None and self.almost_at is None
                and self.almost.search(line)):
            self.almost_at, self.almost_line = now, line
        return None

    def stopped(self, now: float, state: str) -> Verdict:
        """The domain is no longer running (libvirt says `state`): nothing more will come."""
        last = self.tail[-1] if self.tail else ""
        return self.verdict(STOPPED, now, f"the domain is {state}, after: {last}"
                            if last else f"the domain is {state}")

    def tick(self, now: float) -> Verdict | None:
        if self.proof is not None and self.ready is None and now - self.proved_at >= self.settle:
            return self.verdict(OK, self.proved_at, self.proof_line)
        if self.almost_at is not None and now - self.almost_at >= self.grace:
            return self.verdict(OK, self.almost_at, self.almost_line)
        last = self.tail[-1] if self.tail else ""
        if now - self.started > self.timeout:
            return self.verdict(TIMEOUT, now, last)
        if now - max(self.last_output, self.last_busy) > self.stall:
            if self.phase == "dhcp" and self.proof is None:
                # An address, then silence and an idle vCPU: klibc's nfsmount and mount.nfs
                # wait without a word for a server that does not answer.
                return self.verdict("nfs-unreachable", now, "silent and idle for "
                                    f"{self.stall:.0f} s after DHCP, before any NFS mount: the "
                                    f"NFS server does not answer (last line: {last})")
            if self.asked and self.phase in BEFORE_DHCP and self.proof is None:
                # dracut's dhclient says so only after its 60 s, in silence until then.
                return self.verdict("dhcp-failed", now, f"silent and idle for "
                                    f"{self.stall:.0f} s after asking for a DHCP lease, none "
                                    f"came: no DHCP server answers (last line: {last})")
            waiting = f" (systemd was waiting for {self.job})" if self.job else ""
            return self.verdict(STALLED, now, last + waiting)
        return None


FAILED_UNITS_RE = pattern(re.escape(READY_MARKER) + r" \S+ systemd \S+ failed=(\S*)")
UNIT_RE = pattern(r"[A-Za-z0-9@._:\\-]{1,256}")


def failed_units(line: str | None) -> list[str]:
    """The systemd units the runtime unit's ready line names as failed (guest output:
    anything that is not a unit name is dropped)."""
    m = FAILED_UNITS_RE.search(line or "")
    return [u for u in m.group(1).split(",") if UNIT_RE.fullmatch(u)] if m else []
