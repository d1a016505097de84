"""The only module that talks to libvirt. libvirt errors become VirtErrors that say what to do."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import termios
import threading
import time
import tty
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import libvirt
import libvirt_qemu

from vlab import procs
from vlab.errors import VirtError

ESCAPE = b"\x1d"  # Ctrl-], as virsh console

# libvirt prints every error to stderr by default; vlab reports them itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)



def _fix_for(err: libvirt.libvirtError) -> str:
    code, text = err.get_error_code(), str(err)
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_SYSTEM_ERROR) and "socket" in text:
        return "start libvirtd, or let vlab start its isolated lab host: vlab lab-host up"
    if "Permission denied" in text:
        return ("QEMU runs as libvirt-qemu: make the kernel, initrd and their folders readable "
                "by it (chmod o+rx on each folder, o+r on the files)")
    if "KVM is not available" in text or "kvm" in text.lower() and "not" in text.lower():
        return 'this machine cannot run KVM guests: set hypervisor = "qemu" in [lab]'
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "already" in text:
        return "run vlab down first"
    return ""


def _error(op: str, err: libvirt.libvirtError) -> VirtError:
    return VirtError(op, str(err).strip(), _fix_for(err))


_loop = threading.Lock()
_loop_running = False

# Keepalive: a peer that answers none of 12 pings 10 s apart (a remote host gone, its ssh
# stuck) is taken for dead and the connection closed, rather than hanging its callers. Not
# virsh's 6 pings 5 s apart: a Xen host's libvirtd answers nothing while libxl builds a
# domain, and a nested one under TCG on a loaded machine took 36 s per domain.
KEEPALIVE = (10, 12)
# Calls vlab has in flight on one connection at most. A libvirtd with max_client_requests
# (5 by default) of a client's calls in progress reads nothing more from that client, its
# keepalive answers included; under load (domains started side by side on a busy machine)
# those calls last long enough for libvirtd to drop the client for keepalive timeout, and
# the calls fail with "Connection reset by peer" (its log: "Client hit max requests limit").
CALLS_AT_ONCE = 4


def event_loop() -> None:
    """libvirt's default event loop, run by a daemon thread: lifecycle events, keepalive and
    console streams come through it. Started once, before the first connection opens (a
    connection serves events only if the loop was registered when it was opened)."""
    global _loop_running
    with _loop:
        if _loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt events", daemon=True).start()
        _loop_running = True


# A libvirtd that went away (restarted, crashed) is opened again by the next call, and
# waited for this long from when its connection broke, so that what vlab does next (the
# report after the verdicts, a domain's start) finds it back; after that, a call fails as
# any libvirt error does.
REOPEN_WAIT = 30.0
REOPEN_EVERY = 0.5


class Conn:
    """A libvirt connection (libvirt.virConnect's calls, by attribute) that opens itself
    again once its libvirtd went away and came back: libvirt's close callback and keepalive
    mark the old one dead (isAlive), and the next call opens a new one, registers again
    what was registered on the old (on_reopen), and goes to it. The guests, their console
    logs (virtlogd) and QEMU outlive a libvirtd restart; only the connection is new."""

    def __init__(self, uri: str, open_raw: Callable[[], Any]) -> None:
        self.uri = uri
        self._open_raw = open_raw
        self._lock = threading.RLock()
        self._raw = open_raw()
        self._broke: float | None = None
        self._closed = False
        self._hooks: list[Callable[[], None]] = []
        self._watch(self._raw)

    def _watch(self, raw: Any) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # a driver without keepalive (test:///)
            raw.setKeepAlive(*KEEPALIVE)
        me = weakref.ref(self)  # libvirt holds the callback: no cycle through it

        def broke(*_: Any) -> None:
            if (conn := me()) is not None and conn._raw is raw:  # not a replaced one's
                conn._mark_broken()

        with contextlib.suppress(libvirt.libvirtError):
            raw.registerCloseCallback(broke, None)

    def _mark_broken(self) -> None:
        if self._broke is None:
            self._broke = time.monotonic()

    def _alive(self) -> bool:
        if self._broke is not None:
            return False
        try:
            return bool(self._raw.isAlive())
        except libvirt.libvirtError:
            return False

    def lost(self, err: libvirt.libvirtError) -> bool:
        """Whether `err` says the connection broke under a call (its RPC layer's error: end
        of file, a reset, a closed socket), which the close callback may not have told yet;
        if so, the next call opens a new one."""
        if err.get_error_domain() != libvirt.VIR_FROM_RPC and self._alive():
            return False
        self._mark_broken()
        return True

    def current(self) -> Any:
        """The raw connection: the open one, or a new one if the old broke (waiting up to
        REOPEN_WAIT s from the break for libvirtd to answer again)."""
        with self._lock:
            if self._closed or self._alive():
                return self._raw
            self._mark_broken()
            assert self._broke is not None
            while True:
                try:
                    raw = self._open_raw()
                except VirtError:
                    if time.monotonic() - self._broke > REOPEN_WAIT:
                        return self._raw  # calls fail with the broken connection's error
                    time.sleep(REOPEN_EVERY)
                    continue
                _release(self._raw)
                self._raw, self._broke = raw, None
                self._watch(raw)
                for hook in self._hooks:
                    hook()
                return raw

    def on_reopen(self, hook: Callable[[], None]) -> None:
        """Call hook (on the libvirt caller's thread) each time the connection is new."""
        with self._lock:
            self._hooks.append(hook)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not libvirt's: one of ours, missing (a failed __init__)
            raise AttributeError(name)
        return getattr(self.current(), name)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            _release(self._raw)

    def close(self) -> None:
        """Close it for good; one that broke meanwhile is closed all the same."""
        with self._lock:
            self._closed = True
            _release(self._raw)


def _release(raw: Any) -> None:
    """Close a raw connection, its close callback first (which holds a reference to it)."""
    with contextlib.suppress(libvirt.libvirtError):
        raw.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        raw.close()


def _open(uri: str) -> Any:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as err:
        raise _error(f"connect to {uri}", err) from None


def connect(uri: str, inside: Callable[[Callable[[], Any]], Any] | None = None) -> Conn:
    """A connection to `uri`, opened (and opened again) by `inside` if given (from a
    network namespace, reach.py)."""
    event_loop()
    return Conn(uri, (lambda: inside(lambda: _open(uri))) if inside else lambda: _open(uri))


def close(conn: Conn) -> None:
    conn.close()


def refuses(uri: str) -> str | None:
    """Why a libvirt URI does not answer, or None when it does."""
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError as err:
        return str(err.get_error_message())
    return None


def _lookup(lookup: Any, name: str, missing: int) -> Any:
    try:
        return lookup(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == missing:
            return None
        raise _error(f"look up {name}", err) from None


def network_active(conn: Conn, name: str) -> bool:
    net = _lookup(conn.networkLookupByName, name, libvirt.VIR_ERR_NO_NETWORK)
    return bool(net is not None and net.isActive())


def start_network(conn: Conn, name: str, xml: str) -> None:
    """Create the lab network as a transient network (gone once destroyed), unless it runs."""
    net = _lookup(conn.networkLookupByName, name, libvirt.VIR_ERR_NO_NETWORK)
    try:
        if net is None:
            conn.networkCreateXML(xml)
        elif not net.isActive():
            net.create()
    except libvirt.libvirtError as err:
        raise _error(f"start network {name}", err) from None


# Where libvirt's network driver keeps the pid of each network's dnsmasq (a lab's network
# is always on this machine's lab host).
NETWORK_RUN_DIR = Path("/run/libvirt/network")
# A DNS record vlab adds and takes away again: changes nothing a lab's network serves.
REFRESH_RECORD = "<txt name='vlab-refresh' value='restart the DHCP server'/>"


def dhcp_server(name: str) -> int | None:
    """The dnsmasq libvirt runs for network `name` (DHCP, router advertisements, TFTP), if it
    runs."""
    return procs.read_pid(NETWORK_RUN_DIR / f"{name}.pid", "dnsmasq",
                          f"--conf-file=/var/lib/libvirt/dnsmasq/{name}.conf")


def restart_dhcp_server(conn: Conn, name: str) -> None:
    """Have libvirt start the network's dnsmasq again, from the network's own configuration
    (its pinned hosts) and lease file: libvirt refreshes it on any live update, and starts it
    if it is not running (its networkRefreshDhcpDaemon). The network, its bridge and the
    terminals on it stay as they are."""
    net = _lookup(conn.networkLookupByName, name, libvirt.VIR_ERR_NO_NETWORK)
    if net is None:
        return
    try:
        for command in (libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                        libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE):
            net.update(command, libvirt.VIR_NETWORK_SECTION_DNS_TXT, -1, REFRESH_RECORD,
                       libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)
    except libvirt.libvirtError as err:
        raise _error(f"restart the DHCP server of network {name}", err) from None


def destroy_network(conn: Conn, name: str) -> bool:
    net = _lookup(conn.networkLookupByName, name, libvirt.VIR_ERR_NO_NETWORK)
    if net is None:
        return False
    try:
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
            raise _error(f"destroy network {name}", err) from None
    return True


DOMAIN_NAME_RE = re.compile(r"<name>([^<]+)</name>")


def start_domain(conn: Conn, xml: str, paused: bool = False) -> None:
    """Create and start a transient domain: destroying it leaves nothing defined. If the
    connection broke under the call (libvirtd restarted), the domain is made on the new one
    unless the old call made it."""
    flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
    try:
        conn.createXML(xml, flags)
    except libvirt.libvirtError as err:
        name = DOMAIN_NAME_RE.search(xml)
        if name is None or not conn.lost(err):
            raise _error("start domain", err) from None
        try:
            if domain_state(conn, name.group(1)) == "absent":
                conn.createXML(xml, flags)
        except libvirt.libvirtError as again:
            raise _error("start domain", again) from None


def resume_domain(conn: Conn, name: str) -> None:
    """Run a paused domain (again on a new connection, if it broke under the call and the
    domain is still paused)."""
    try:
        conn.lookupByName(name).resume()
    except libvirt.libvirtError as err:
        state = domain_state(conn, name) if conn.lost(err) else None
        if state == "running":  # the call was done before the connection broke
            return
        if state != "paused":
            raise _error(f"resume domain {name}", err) from None
        try:
            conn.lookupByName(name).resume()
        except libvirt.libvirtError as again:
            raise _error(f"resume domain {name}", again) from None


# A relayed console whose connection broke (its keepalive closed it while the host was slow
# to answer) is opened again, this many times, RELAY_RETRY_WAIT s apart, while its domain runs.
RELAY_RETRIES = 10
RELAY_RETRY_WAIT = 3.0


def _open_console(conn: Conn, name: str) -> Any:
    try:
        stream = conn.newStream(0)
        conn.lookupByName(name).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    except libvirt.libvirtError as err:
        raise _error(f"open the console of {name}", err) from None
    return stream


def _copy(stream: Any, out: BinaryIO) -> None:
    """A console stream into a file, until it ends or its connection breaks."""
    while True:
        try:
            data = stream.recv(65536)
        except libvirt.libvirtError:
            return
        if not isinstance(data, bytes) or not data:
            return
        out.write(data)


def _reopen_console(connect: Callable[[], Conn], name: str) -> tuple[Conn, Any] | None:
    """A new connection and console stream to a domain that still runs; None once it does
    not (shut off, absent) or its host did not answer RELAY_RETRIES times."""
    for _ in range(RELAY_RETRIES):
        try:
            conn = connect()
        except VirtError:
            time.sleep(RELAY_RETRY_WAIT)
            continue
        try:
            if domain_state(conn, name) in DEAD:
                close(conn)
                return None
            return conn, _open_console(conn, name)
        except VirtError:
            close(conn)
            time.sleep(RELAY_RETRY_WAIT)
    return None


def relay_console(conn: Conn, connect: Callable[[], Conn], name: str,
                  log: Path) -> threading.Thread:
    """Copy a domain's serial console into a local file, as QEMU's own log does on this
    machine: for a guest on another host, whose log file vlab cannot read. Open it before the
    guest runs (start it paused) and nothing is lost; it ends with the domain or with vlab.
    A connection that breaks meanwhile is opened again (what the guest printed in between
    may be lost).

    conn is the relay's own from then on, and connect() opens another like it: a blocking
    read holds its connection (the remote driver's lock) until data comes, so a call on the
    same connection (the resume) would wait for ever. It is closed if the console cannot be
    opened."""
    try:
        stream = _open_console(conn, name)
    except VirtError:
        close(conn)
        raise

    def copy() -> None:
        nonlocal conn, stream
        with log.open("wb", buffering=0) as out:
            while True:
                _copy(stream, out)
                close(conn)
                if (again := _reopen_console(connect, name)) is None:
                    return
                conn, stream = again

    relay = threading.Thread(target=copy, name=f"console {name}", daemon=True)
    relay.start()
    return relay


def free_memory_mib(conn: Conn) -> int:
    try:
        return int(conn.getFreeMemory()) // (1 << 20)
    except libvirt.libvirtError as err:
        raise _error("read the free memory", err) from None


def cpu_seconds(conn: Conn, name: str) -> float | None:
    """The seconds a domain's vCPUs have wanted a host CPU so far: the time they ran plus the
    time they were ready to run but waited for one (libvirt's vcpu.N.delay, from the
    scheduler). On a loaded host a booting guest gets a small share of a core and waits for
    the rest: it is busy, not idle. None once the domain is gone."""
    try:
        dom = conn.lookupByName(name)
        ((_dom, stats),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_VCPU)
    except (libvirt.libvirtError, ValueError):
        return None
    count = int(stats.get("vcpu.current", 0))
    ran = [stats.get(f"vcpu.{i}.time") for i in range(count)]
    if count == 0 or None in ran:  # a hypervisor that gives no per-vCPU times
        try:
            return float(dom.info()[4]) / 1e9
        except libvirt.libvirtError:
            return None
    waited = sum(int(stats.get(f"vcpu.{i}.delay", 0)) for i in range(count))
    return (sum(int(t) for t in ran) + waited) / 1e9


DEAD = ("shut off", "crashed", "absent")  # domain_state() of a domain that will print no more


def domain_state(conn: Conn, name: str) -> str:
    dom = _lookup(conn.lookupByName, name, libvirt.VIR_ERR_NO_DOMAIN)
    if dom is None:
        return "absent"
    try:
        state = dom.state()[0]
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "absent"
        raise _error(f"read the state of {name}", err) from None
    return {
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_BLOCKED: "running",  # Xen: running, waiting for an event
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
    }.get(state, "other")


class Polled:
    """The state and CPU time of a connection's domains, asked by a thread of its own every
    `every` s, one domain after another: watchers read the last answers and never wait on
    libvirt, so a host slow to answer (a remote one under load, or one whose connection
    keepalive is closing) delays no verdict and no timeout; and one connection is asked by
    one thread at a time."""

    def __init__(self, conn: Conn, names: list[str], every: float = 1.0) -> None:
        self._conn, self._names, self._every = conn, names, every
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._cpu: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="libvirt poll", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self._names:
                try:
                    state = domain_state(self._conn, name)
                except VirtError:
                    state = "unknown"
                seconds = cpu_seconds(self._conn, name)
                with self._lock:
                    self._states[name] = state
                    if seconds is not None:
                        self._cpu[name] = (time.monotonic(), seconds)
            self._stop.wait(self._every)

    def state(self, name: str) -> str:
        """The domain's last known state; "unknown" until libvirt said one."""
        with self._lock:
            return self._states.get(name, "unknown")

    def cpu(self, name: str) -> tuple[float, float] | None:
        """(when, CPU seconds) of the domain's last sample, or None before the first."""
        with self._lock:
            return self._cpu.get(name)

    def close(self) -> None:
        """Stop asking (a call under way ends on its own: nobody waits for it)."""
        self._stop.set()


class Deaths:
    """What libvirt's lifecycle events said of the domains of one connection: a domain that
    stopped, crashed or whose guest panicked, by name, as domain_state() would name it. The
    event comes within milliseconds of the death; asking for the state is the fallback."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._seen: dict[str, str] = {}
        self._lock = threading.Lock()
        self._id: int | None = None
        self._closed = False
        self._register()
        # a libvirtd restarted: the events come on the new connection (those in between
        # are lost; the polled state tells a death then)
        conn.on_reopen(self._register)

    def _register(self) -> None:
        if self._closed:
            return
        try:
            self._id = self._conn.current().domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None)
        except libvirt.libvirtError:
            self._id = None  # no events on this connection: the state is polled

    @property
    def live(self) -> bool:
        """Whether events come on this connection."""
        return self._id is not None

    def _event(self, _conn: Conn, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            state = ("crashed (the guest kernel panicked)"
                     if detail == libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED else "crashed")
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            state = ("crashed" if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED
                     else "shut off")
        else:
            return
        with self._lock:
            self._seen.setdefault(dom.name(), state)

    def of(self, name: str) -> str | None:
        """How the domain died, if an event said so."""
        with self._lock:
            return self._seen.get(name)

    def close(self) -> None:
        self._closed = True
        if self._id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(self._id)
            self._id = None


LATENCY_FILTER = "vlab-latency"


def hold_packets(conn: Conn, name: str, ms: int) -> None:
    """A [[fault]] kind = "latency": QEMU's filter-buffer on the domain's NIC holds every
    packet, both ways, and lets them go every `ms` milliseconds (the machine's kernel may
    have no netem); through libvirt's monitor pass-through, so only this guest is touched."""
    _monitor(conn, name, f"object_add filter-buffer,id={LATENCY_FILTER},netdev=hostnet0,"
                         f"queue=all,interval={ms * 1000}")


def release_packets(conn: Conn, name: str) -> None:
    _monitor(conn, name, f"object_del {LATENCY_FILTER}")


def _monitor(conn: Conn, name: str, command: str) -> None:
    try:
        dom = conn.lookupByName(name)
        answer = libvirt_qemu.qemuMonitorCommand(
            dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    except libvirt.libvirtError as err:
        raise _error(f"{command.split()[0]} on {name}", err) from None
    if answer.strip():  # HMP says nothing when it did it
        raise VirtError(f"{command.split()[0]} on {name}", answer.strip(), "")


def destroy_domain(conn: Conn, name: str) -> bool:
    dom = _lookup(conn.lookupByName, name, libvirt.VIR_ERR_NO_DOMAIN)
    if dom is None:
        return False
    try:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise _error(f"destroy domain {name}", err) from None
    return True


def names(conn: Conn, prefix: str) -> tuple[list[str], list[str]]:
    """Names of the domains and networks that start with prefix."""
    try:
        doms = [d.name() for d in conn.listAllDomains()]
        nets = [n.name() for n in conn.listAllNetworks()]
    except libvirt.libvirtError as err:
        raise _error("list domains and networks", err) from None
    return [d for d in doms if d.startswith(prefix)], [n for n in nets if n.startswith(prefix)]


def lab_networks(conn: Conn) -> list[str]:
    """Networks vlab makes: transient (vlab never defines one), named vlab-LAB, on a bridge
    named as vlab names its bridges. A persistent vlab-something is someone else's."""
    found = []
    try:
        for net in conn.listAllNetworks():
            if (net.name().startswith("vlab-") and not net.isPersistent()
                    and re.fullmatch(r"vlab[0-9a-f]{8}", net.bridgeName())):
                found.append(net.name())
    except libvirt.libvirtError as err:
        raise _error("list networks", err) from None
    return found


def labelled_domains(conn: Conn, namespace: str) -> dict[str, str]:
    """Domain name -> lab, for every domain that carries vlab's metadata element."""
    found = {}
    try:
        for dom in conn.listAllDomains():
            try:
                xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace)
            except libvirt.libvirtError:
                continue  # not vlab's
            m = re.search(r"\blab=['\"]([^'\"]+)['\"]", xml)
            if m:
                found[dom.name()] = m.group(1)
    except libvirt.libvirtError as err:
        raise _error("list domains", err) from None
    return found


def attach_console(conn: Conn, name: str) -> None:
    """Relay the domain's serial console to this terminal until Ctrl-] (like virsh console)."""
    dom = _lookup(conn.lookupByName, name, libvirt.VIR_ERR_NO_DOMAIN)
    if dom is None or not dom.isActive():
        raise VirtError("console", f"domain {name} is not running", "start it with vlab up")
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    except libvirt.libvirtError as err:
        raise _error(f"open the console of {name}", err) from None
    done = threading.Event()  # set in the event loop's thread (event_loop)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()

    def from_guest(st: Any, events: int, _opaque: Any) -> None:
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            done.set()
            return
        data = st.recv(4096)
        if data in (b"", -1, -2) or not isinstance(data, bytes):
            if data == b"":
                done.set()
            return
        os.write(stdout, data)

    def from_user(_watch: int, fd: int, _events: int, _opaque: Any) -> None:
        data = os.read(fd, 1024)
        if not data or ESCAPE in data:
            done.set()
            return
        stream.send(data)

    stream.eventAddCallback(
        libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
        | libvirt.VIR_STREAM_EVENT_HANGUP, from_guest, None)
    watch = libvirt.virEventAddHandle(stdin, libvirt.VIR_EVENT_HANDLE_READABLE, from_user, None)
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setraw(stdin, termios.TCSANOW)  # keep what was typed before it attached
        done.wait()
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        libvirt.virEventRemoveHandle(watch)
        try:
            stream.eventRemoveCallback()
            stream.finish()
        except libvirt.libvirtError:
            pass
