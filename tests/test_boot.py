"""Real boots: a real libvirtd boots a real Debian kernel over a real nfs-ganesha, and vlab
reads the verdict off the real console. Needs root; `make test` and CI run these."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from browser import seen
from conftest import ROOT

from vlab import procs, scenario
from vlab.build import busybox, cache, initrd, kernel
from vlab.build.cpio import read_names
from vlab.build.pvh import has_pvh_entry
from vlab.plan.lab import Dirs, LabPlan
from vlab.scenario.model import NicDriver
from vlab.serve import firewall, nfsserver
from vlab.verbs.claim import plan_for as lab_plan_for
from vlab.watch.judge import ANSI

pytestmark = pytest.mark.boot

VLAB = [sys.executable, "-m", "vlab"]
# A lab host started with `vlab lab-host up` stays after the last lab's down, by design. On CI
# (and any machine without one) the tests' labs start it on demand, and it must go away.
HOST_KEPT = (Path("/run/netns/vlab-host").exists()
             and not (Dirs.from_env().state / "host.json").exists())


def vlab(*args: str, timeout: float = 600,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m vlab ARGS` from the checkout, its output captured as text."""
    return subprocess.run([*VLAB, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def plan_for(path: str) -> LabPlan:
    """The lab's plan as vlab makes it on this machine (its lease, clear of other labs')."""
    return lab_plan_for(scenario.load(ROOT / path), Dirs.from_env())


def other_labs_up(plan: LabPlan, dirs: Dirs) -> list[str]:
    """Labs of this state folder other than plan's that are up (their lease is recorded): the
    on-demand lab host rightly stays for them, as vlab's down decides (a run killed
    half-way leaves its lab up, and the next run's downs must keep that lab's host)."""
    return [p.parent.name for p in (dirs.state / "labs").glob("*/state.json")
            if p.parent.name != plan.name]


def leftovers(plan: LabPlan) -> list[str]:
    """Everything of the lab that is still there: should be nothing after vlab down."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")  # any process's: not necessarily UTF-8
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie holds nothing; this machine's pid 1 does not reap them
        if str(plan.nfs_server_dir) in cmd or any(t.domain in cmd for t in plan.terminals):
            found.append(f"process {pid}: {cmd.strip()}")
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {ln}" for ln in mounts.splitlines() if str(plan.lab_dir) in ln
              or f"{plan.export_path}/" in ln.split()[1]]
    if plan.root_image is not None:
        loops = subprocess.run(["losetup", "--noheadings", "--associated",
                                str(plan.root_image)], capture_output=True, text=True).stdout
        found += [f"loop device {ln}" for ln in loops.splitlines()]
    dirs = Dirs.from_env()
    host_goes = not HOST_KEPT and not other_labs_up(plan, dirs)  # vlab's down decides so
    if host_goes and (dirs.state / "rpcbind.pid").exists():
        pid = procs.read_pid(dirs.state / "rpcbind.pid", "rpcbind")
        if pid is not None:
            found.append(f"rpcbind {pid}")
    if plan.nfs_netns and Path(f"/run/netns/{plan.nfs_netns}").exists():
        found.append(f"network namespace {plan.nfs_netns}")
    if Path(f"/run/netns/{plan.netns}").exists():
        links = subprocess.run(["ip", "-n", plan.netns, "-o", "link"], capture_output=True,
                               text=True).stdout
        found += [f"link {ln}" for ln in links.splitlines()
                  # the bridge, its guests' taps, and taps cut loose (another lab's have theirs)
                  if plan.bridge in ln or ("vnet" in ln and " master " not in ln)]
        if host_goes:
            found.append(f"network namespace {plan.netns}")
    found += [f"half-built {p}" for p in cache.leftovers(dirs.cache)]
    if plan.lab_dir.exists():
        found += [f"temp file {p}" for p in plan.lab_dir.rglob("*")
                  if p.name.endswith((".new", ".tmp"))]
    found += [f"lease of {plan.name}" for _ in [0] if (plan.lab_dir / "state.json").exists()]
    status = json.loads(vlab("status", str(plan.scenario), "--json").stdout)
    found += [f"domain {t['domain']}" for t in status["terminals"] if t["state"] != "absent"]
    if status.get("network"):
        found.append(f"network {status['network']}")
    if status.get("nfs_server_pid"):
        found.append(f"nfs server {status['nfs_server_pid']}")
    return found


def up_until(path: str, text: str, env: dict[str, str] | None = None,
             args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str]:
    """Start `vlab up` (with `args`) and return once a progress line contains text (with
    the lines so far); its stdout and stderr stay open for the rest."""
    proc = subprocess.Popen([*VLAB, "up", path, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return proc, "".join(seen)


def up(path: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    # A guard against a hung vlab only: a first Debian up bootstraps, builds and boots.
    proc = vlab("up", path, "--json", timeout=1200)
    assert proc.stdout, proc.stderr
    rep = json.loads(proc.stdout)
    proc.stderr += failed_consoles(rep)  # read now: the lab may be down when a test fails
    return proc, rep


def why(proc: subprocess.CompletedProcess[str], t: dict[str, Any]) -> str:
    """A failed assertion's message on one terminal, whole (pytest cuts a tuple's repr at 240
    characters: the verdict went missing from a CI log that way)."""
    return (f"{t.get('name')}: verdict {t.get('verdict')}, line {t.get('line')!r}, "
            f"cause {t.get('cause')}, exit {proc.returncode}\n{proc.stderr}")


BOOTING = re.compile(r"^\[\s*[\d.]+s\] (boot \S+:|watching )")


def failed_consoles(rep: dict[str, Any], lines: int = 60) -> str:
    """The console tails of a report's terminals that were not ok, read before the lab goes
    down (a failure in CI is then read from its log, not guessed at)."""
    out = []
    for t in rep.get("terminals", []):
        if t.get("verdict") == "ok" or not t.get("console_log"):
            continue
        try:
            text = Path(t["console_log"]).read_text(errors="replace")
        except OSError:
            continue
        tail = "\n".join(ANSI.sub("", text).replace("\r", "\n").splitlines()[-lines:])
        out.append(f"---- console of {t['name']} ({t.get('verdict')}), last {lines} lines ----"
                   f"\n{tail}\n")
    return "".join(out)


def up_side_by_side(paths: list[str], at_once: int = 2, stagger: bool = False,
                    keep: tuple[str, ...] = ()
                    ) -> dict[str, tuple[float, subprocess.CompletedProcess[str], dict[str, Any]]]:
    """`vlab up --json` of several labs, at most at_once running (two cores: two booting
    TCG guests keep both busy), each timed, and each down as soon as its verdicts are in
    (a systemd root keeps its vCPU busy after its verdict: the next lab would boot against
    it), unless it is in `keep`. stagger: each lab starts once the one before it has built
    everything and begun to boot (labs that share an artifact build it once)."""
    slots = threading.Semaphore(at_once)
    results: dict[str, tuple[float, subprocess.CompletedProcess[str], dict[str, Any]]] = {}
    threads = []

    def run_one(path: str, built: threading.Event) -> None:
        start = time.monotonic()
        try:
            with tempfile.TemporaryFile("w+") as out:
                proc = subprocess.Popen([*VLAB, "up", path, "--json"], cwd=ROOT, stdout=out,
                                        stderr=subprocess.PIPE, text=True)
                assert proc.stderr is not None
                err = []
                for line in proc.stderr:
                    err.append(line)
                    if BOOTING.match(line):
                        built.set()
                proc.wait(timeout=1200)
                out.seek(0)
                report = out.read()
            rep = json.loads(report) if report else {}
            done = subprocess.CompletedProcess(proc.args, proc.returncode, report,
                                               "".join(err) + failed_consoles(rep))
            results[path] = (time.monotonic() - start, done, rep)
            if path not in keep:  # the caller's own down checks it is gone
                vlab("down", path)
        finally:
            built.set()
            slots.release()

    for path in paths:
        slots.acquire()
        built = threading.Event()
        thread = threading.Thread(target=run_one, args=(path, built))
        thread.start()
        threads.append(thread)
        if stagger:
            built.wait(timeout=1200)
    for thread in threads:
        thread.join(timeout=1500)
    return results


def test_tiny_boots_both_terminals_over_nfs_and_down_leaves_nothing(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append("scenarios/tiny.toml")
    plan = plan_for("scenarios/tiny.toml")
    proc, rep = up("scenarios/tiny.toml")
    assert proc.returncode == 0, proc.stderr
    assert rep["lab"] == "tiny"
    assert [t["name"] for t in rep["terminals"]] == ["t1", "t2"]
    for t, tp in zip(rep["terminals"], plan.terminals, strict=True):
        assert t["verdict"] == "ok", t
        assert t["mac"] == tp.mac and t["ip"] == tp.ip
        assert t["state"] == "running"
        proof = t["proof"]
        assert proof["server"] == plan.nfs_address
        assert proof["export"] == str(plan.export_path)
        assert proof["fstype"] == "nfs4"
        assert proof["options"].split(",")[0] == "ro"
        assert "vers=4.2" in proof["options"].split(",")
        assert f"clientaddr={tp.ip}" in proof["options"].split(",")
        assert Path(t["console_log"]).read_text().count("VLAB-NFSROOT-OK") == 1

    status = json.loads(vlab("status", "scenarios/tiny.toml", "--json").stdout)
    assert [t["verdict"] for t in status["terminals"]] == ["ok", "ok"]
    assert status["network"] == plan.network and status["nfs_server_pid"]
    assert status["firewall"] == "in place"

    again = vlab("up", "scenarios/tiny.toml")
    assert again.returncode == 0 and "already up" in again.stderr
    # Someone flushed the lab's firewall rule: status says so, an up puts it back.
    netns = status["lab_host"].split("network namespace ")[-1].split()[0]
    rule = next(r for r in firewall.rules(netns) if "vlab lab tiny" in r)
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *shlex.split(rule)[1:]],
                   check=True)
    assert "firewall rule: missing" in vlab("status", "scenarios/tiny.toml").stdout
    again = vlab("up", "scenarios/tiny.toml")
    assert again.returncode == 0 and "firewall rule was gone: put back" in again.stderr
    assert any("vlab lab tiny" in r for r in firewall.rules(netns))
    # QEMU boots the PVH ELF vlab extracted (its direct entry), not the bzImage.
    for tp in plan.terminals:
        booted = Path(_qemu_argument(tp.domain, "-kernel"))
        assert has_pvh_entry(booted.read_bytes()), booted

    down = vlab("down", "scenarios/tiny.toml")
    assert down.returncode == 0, down.stderr
    assert leftovers(plan) == []
    assert vlab("down", "scenarios/tiny.toml").returncode == 0  # idempotent


def test_a_firewall_rule_that_cannot_be_put_in_place_fails_up_before_anything_answers(
        tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    """iptables refuses the lab's rule (a recording fake at the program seam, in PATH: it
    refuses vlab's INPUT rule and passes everything else to the real iptables, libvirt's
    own rules included): vlab up exits 3 naming it, before the NFS server, the network or a
    guest was started, and vlab down leaves nothing."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "iptables").write_text(
        '#!/bin/sh\ncase "$*" in *"-I INPUT"*"vlab lab one"*) '
        'echo "iptables: refused by the test" >&2; exit 4;; esac\nexec /usr/sbin/iptables "$@"\n')
    (fake / "iptables").chmod(0o755)
    lab_down.append("tests/scenarios/one.toml")
    plan = plan_for("tests/scenarios/one.toml")
    proc = vlab("up", "tests/scenarios/one.toml",
                env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 3, proc.stderr
    assert "refused by the test" in proc.stderr and "firewall" in proc.stderr, proc.stderr
    assert "export: nfs-ganesha" not in proc.stderr and "boot t1" not in proc.stderr
    assert not any(str(plan.lab_dir) in p for p in _commands()), "something of the lab runs"
    down = vlab("down", "tests/scenarios/one.toml")
    assert down.returncode == 0, down.stderr
    assert leftovers(plan) == []


def _commands() -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                       .decode(errors="replace"))
    return out


def test_wrong_export_fails_with_the_nfs_verdict_not_the_timeout(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/wrong-export.toml"
    lab_down.append(path)
    proc, rep = up(path)
    assert proc.returncode == 1
    (t,) = rep["terminals"]
    assert t["verdict"] == "nfs-no-such-export"
    assert "/no/such/export" in t["line"]
    assert t["seconds"] < plan_for(path).timeout / 2
    assert "did not mount the NFS root" in proc.stderr
    assert vlab("down", path).returncode == 0
    assert leftovers(plan_for(path)) == []


def test_e1000_and_virtio_terminals_in_one_lab(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append("scenarios/e1000.toml")
    proc, rep = up("scenarios/e1000.toml")
    assert proc.returncode == 0, proc.stderr
    pc1, pc2 = rep["terminals"]
    assert pc1["verdict"] == pc2["verdict"] == "ok"
    assert pc1["mac"] == "52:54:00:0e:10:00"
    assert "vers=4.1" in pc1["proof"]["options"].split(",")
    for t, driver in ((pc1, "e1000"), (pc2, "virtio_net")):
        log = Path(t["console_log"]).read_text()
        loading = [ln for ln in log.splitlines() if ln.startswith("vlab-initrd: loading")]
        assert loading and {"e1000", "virtio_net"} <= set(loading[0].split())
        assert driver in console(t["name"], "scenarios/e1000.toml",
                                 "basename $(readlink /sys/class/net/eth0/device/driver)")


def test_root_path_from_dhcp_in_several_forms_with_options_reaching_the_mount(
    tmp_path: Path, lab_down  # type: ignore[no-untyped-def]
) -> None:
    # The shipped example names the default cache folder: follow VLAB_CACHE_DIR if it is set.
    example = ROOT / "scenarios/dhcp-root.toml"
    path = str(tmp_path / "dhcp-root.toml")
    Path(path).write_text(example.read_text().replace(
        "/var/cache/vlab/roots/busybox", str(plan_for(str(example)).export_path)))
    lab_down.append(path)
    plan = plan_for(path)
    assert all("root=" not in t.cmdline for t in plan.terminals)
    proc, rep = up(path)
    assert proc.returncode == 0, proc.stderr
    by_name = {t["name"]: t for t in rep["terminals"]}
    for t in by_name.values():
        assert t["verdict"] == "ok" and t["proof"]["export"] == str(plan.export_path)
        log = Path(t["console_log"]).read_text()
        assert "vlab-initrd: root path from DHCP: " in log
    assert "wsize=4096" in by_name["options"]["proof"]["options"].split(",")
    assert "vers=4.1" in by_name["options"]["proof"]["options"].split(",")
    assert "rsize=8192" in by_name["nopath"]["proof"]["options"].split(",")
    assert by_name["nopath"]["proof"]["server"] == plan.nfs_address  # DHCP's next server


def test_nfs3_terminal_mounts_through_the_labs_own_rpcbind_which_goes_with_down(lab_down) -> None:  # type: ignore[no-untyped-def]
    """Like a site's: no port words; the kernel asks the lab's rpcbind (111, in the server's
    namespace, not the machine's) for NFS and mountd."""
    lab_down.append("scenarios/nfs3.toml")
    plan = plan_for("scenarios/nfs3.toml")
    assert "port=" not in plan.terminals[0].cmdline
    proc, rep = up("scenarios/nfs3.toml")
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    options = t["proof"]["options"].split(",")
    assert t["verdict"] == "ok" and t["proof"]["fstype"] == "nfs"
    # No port anywhere: the kernel found NFS and mountd through the lab's rpcbind.
    assert {"vers=3", "nolock", f"mountaddr={plan.nfs_address}"} <= set(options), options
    assert not any(o.startswith(("port=", "mountport=")) for o in options), options
    rpcbind = procs.read_pid(plan.nfs_server_dir / "rpcbind.pid", "rpcbind")
    assert rpcbind is not None and plan.nfs_netns is not None
    assert procs.netns_of(rpcbind) == procs.netns_of(nfsserver.pid(plan) or 0) \
        != procs.netns_of(1)
    assert not (Dirs.from_env().state / "rpcbind.pid").exists()  # the machine's: not used
    server = nfsserver.pid(plan)
    assert server is not None  # ganesha is process 1 of a PID namespace of its own
    assert os.readlink(f"/proc/{server}/ns/pid") != os.readlink("/proc/self/ns/pid")
    nspid = Path(f"/proc/{server}/status").read_text().split("NSpid:")[1].split("\n")[0]
    assert nspid.split()[-1] == "1", nspid
    forged_handles_reach_nothing_outside_the_export(plan)
    assert vlab("down", "scenarios/nfs3.toml").returncode == 0
    assert leftovers(plan) == []
    assert not procs.alive(rpcbind) and not Path(f"/run/netns/{plan.nfs_netns}").exists()


def _inode(path: Path) -> list[str]:
    """A file's inode and generation (FS_IOC_GETVERSION), as its ext4 handle names them."""
    import fcntl
    import struct

    fd = os.open(path, os.O_RDONLY)
    try:
        generation = struct.unpack("l", fcntl.ioctl(fd, 0x80087601, b"\0" * 8))[0]
        return [str(os.fstat(fd).st_ino), str(generation)]
    finally:
        os.close(fd)


def forged_handles_reach_nothing_outside_the_export(plan: LabPlan) -> None:
    """Issue 27, finding 9, as an attacker on the lab network (in the lab host's namespace,
    an address of the lab's subnet): the export's own handle with the kernel's ext4 handle
    in it replaced by that of a folder and a file of the machine's filesystem (where vlab's
    roots lie), and of /etc/shadow, claiming group 42 over AUTH_SYS; over NFSv3 (READDIR,
    READ) and NFSv4.0 (PUTFH, LOOKUP). On the old layout each reached the machine's files;
    the export is now an image of its own (exportfs.py), where those inodes are not them."""
    secret = "vlab-host-secret-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        os.chmod(folder, 0o755)
        (Path(folder) / "host-secret").write_text(secret + "\n")
        (Path(folder) / "host-secret").chmod(0o644)
        ran = subprocess.run(
            ["ip", "netns", "exec", plan.netns or "", sys.executable,
             str(ROOT / "tests/nfsforge.py"), plan.nfs_address, str(plan.nfs_port),
             str(plan.mount_port), str(plan.export_path), *_inode(Path(folder)),
             *_inode(Path(folder) / "host-secret"), *_inode(Path("/etc/shadow")), secret],
            capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert set(seen["export_names"]) - {".", ".."} == set(os.listdir(plan.export_path))
    assert "host-secret" not in seen["folder"]["names"], seen
    assert not seen["file"]["secret"], seen
    assert seen["shadow"]["status"] != 0 and seen["shadow"]["bytes"] == 0, seen
    assert seen["v4"]["export"] == 0 and seen["v4"]["folder"] != 0, seen["v4"]


def console(terminal: str, path: str, command: str, timeout: float = 60) -> str:
    """Run one shell command on a terminal's serial console through `vlab console`."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [*VLAB, "console", path, terminal])
    seen = b""
    deadline = time.monotonic() + timeout
    os.write(fd, b"\r")
    time.sleep(0.5)
    os.write(fd, f"echo BEGIN-$((6*7)); {command}; echo END-$((6*7))\r".encode())
    while b"END-42" not in seen.split(b"BEGIN-42")[-1] or b"BEGIN-42" not in seen:
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    os.write(fd, b"\x1d")  # Ctrl-] leaves
    _, code = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(code) == 0
    out = seen.decode(errors="replace").split("BEGIN-42")[-1].split("END-42")[0]
    return out.replace("\r", "")


def tree_digest(root: Path) -> str:
    """Names, modes, link targets and contents of a tree: any write into it changes this."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)} {st.st_mode:o}".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_console_gives_a_shell_on_the_nfs_root_and_tmpfs_where_it_must_write(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append("scenarios/tiny.toml")
    plan = plan_for("scenarios/tiny.toml")
    proc, _ = up("scenarios/tiny.toml")
    assert proc.returncode == 0, proc.stderr
    before = tree_digest(plan.export_path)
    out = console("t2", "scenarios/tiny.toml",
                  "awk '$2==\"/\"{print $3}' /proc/mounts; hostname; "
                  "echo hi > /tmp/x && cat /tmp/x; echo no > /etc/x || echo read-only")
    assert out.split()[:3] == ["nfs4", "t2", "hi"], out
    assert "Read-only file system" in out and out.split()[-1] == "read-only", out
    assert tree_digest(plan.export_path) == before


def test_overlay_makes_the_whole_root_writable_and_the_export_stays_unchanged(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append("scenarios/overlay.toml")
    plan = plan_for("scenarios/overlay.toml")
    proc, rep = up("scenarios/overlay.toml")
    assert proc.returncode == 0, proc.stderr
    assert rep["terminals"][0]["proof"]["fstype"] == "nfs4"
    before = tree_digest(plan.export_path)
    out = console("t1", "scenarios/overlay.toml",
                  "awk '$2==\"/\"{print $3}' /proc/mounts; echo changed > /etc/motd && "
                  "cat /etc/motd; rm /bin/vi && echo removed")
    assert out.split() == ["overlay", "changed", "removed"], out
    assert tree_digest(plan.export_path) == before


def test_initrd_holds_exactly_the_nic_and_nfs_modules() -> None:
    dirs = Dirs.from_env()
    k = kernel.fetch("linux-image-amd64", dirs.cache)
    for nic, must in (("virtio_net", "virtio_net.ko"), ("e1000", "e1000.ko"),
                      ("xen-netfront", "xen-netfront.ko")):
        plan = replace(plan_for("scenarios/tiny.toml"), nic_drivers=(NicDriver(nic),))
        names = read_names(initrd.contents(k, plan, busybox.binary()).gzipped())
        modules = [n for n in names if n.endswith(".ko")]
        assert any(n.endswith("/" + must) for n in modules)
        assert any(n.endswith("/nfsv4.ko") for n in modules)
        assert "dev/console" in names and "init" in names
        others = {"virtio_net.ko", "e1000.ko", "xen-netfront.ko"} - {must}
        assert not any(n.rsplit("/", 1)[-1] in others for n in modules)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_while_watching_then_down_leaves_nothing(lab_down, sig: int) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM (a CI job cancelled) and SIGHUP (its shell closed) end vlab as Ctrl-C does:
    what was started is on record, the exit code is the shell's 128 + the signal's number."""
    path = "tests/scenarios/wrong-export.toml"
    lab_down.append(path)
    proc, _seen = up_until(path, "watching")
    proc.send_signal(sig)
    rest = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.wait(timeout=30) == 128 + sig, rest
    assert f"by {signal.Signals(sig).name}; `vlab down {path}` removes what was started" in rest
    assert "internal error" not in rest
    assert vlab("down", path).returncode == 0
    assert leftovers(plan_for(path)) == []


def _qemu_argument(domain: str, option: str) -> str:
    """What the running QEMU of a domain was given after `option`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "qemu-system" in argv[0] and f"guest={domain}" in " ".join(argv):
            return argv[argv.index(option) + 1]
    raise AssertionError(f"no QEMU runs {domain}")


def test_ten_terminals_boot_side_by_side(lab_down, browser) -> None:  # type: ignore[no-untyped-def]
    path = "scenarios/ten.toml"
    lab_down.append(path)
    plan = plan_for(path)
    libvirtd_log = Dirs.from_env().state / "host" / "libvirtd.log"  # the lab host's
    seen_before = libvirtd_log.stat().st_size if libvirtd_log.exists() else 0
    proc, rep = up(path)
    assert proc.returncode == 0, proc.stderr
    terms = rep["terminals"]
    assert [t["verdict"] for t in terms] == ["ok"] * 10
    assert len({t["mac"] for t in terms}) == 10 and len({t["ip"] for t in terms}) == 10
    # In parallel: every domain was started before the first one reached its verdict.
    assert max(t["booted_at"] for t in terms) < min(t["booted_at"] + t["seconds"] for t in terms)
    # Their boot report: ten rows read at a glance, every phase of each measured.
    dom = seen(rep, "ten-terminals", browser)
    assert dom.count('data-phase="DHCP"') == 10 and dom.count('data-phase="userspace"') == 10
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []
    # Ten domains started and destroyed side by side on one connection, and libvirtd never
    # stopped reading it (at its max_client_requests it reads no keepalive answer either,
    # and drops the client under load: "Connection reset by peer").
    with libvirtd_log.open("rb") as log:
        log.seek(seen_before if log.seek(0, os.SEEK_END) >= seen_before else 0)
        assert b"hit max requests limit" not in log.read()
