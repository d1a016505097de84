"""Every failure verdict, provoked for real: a real libvirtd boots a real kernel against a real
nfs-ganesha, and the verdict is read off the real console. Where the fault cannot be written
in a scenario (a server that exports to another subnet, an initrd without the NIC driver, a
network without DHCP), the test passes `up` a plan changed in that one place, in process;
everything downstream of the plan is real. Needs root."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from browser import seen
from lxml import etree
from test_boot import leftovers, plan_for, up_until, vlab

from vlab import scenario
from vlab.build import nfsroot
from vlab.plan.lab import Dirs, LabPlan
from vlab.scenario.model import LOCAL, NicDriver
from vlab.serve import nfsserver
from vlab.verbs.check import check
from vlab.verbs.claim import claim
from vlab.verbs.up import start_lab_host

pytestmark = pytest.mark.boot


def _scenario(tmp_path: Path, name: str, body: str, lab_down: list[str]) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[lab]\nname = "{name}"\n{body}')
    lab_down.append(str(path))
    return str(path)


def _boots_to(verdict: str, path: str,
              change: Callable[[LabPlan], LabPlan] | None = None,
              cause: str | None = None, look: Callable[..., Any] | None = None
              ) -> dict[str, Any]:
    """vlab check, in this process with its plan changed when `change` is given, else as
    the command: the one terminal's report with the verdict (and the cause both ends saw)
    asserted, in the JUnit report too, the boot report page vlab wrote opened in a browser
    (`look`), and nothing left."""
    plan = plan_for(path)
    junit, page = Path(path).with_suffix(".xml"), Path(path).with_suffix(".html")
    if change is not None:
        sc = scenario.load(Path(path))
        dirs = Dirs.from_env()
        rep = check(sc, change(claim(sc, dirs)), dirs, lambda _text: None,
                    junit=junit, page=page)
    else:
        proc = vlab("check", path, "--json", "--junit", str(junit), "--report", str(page))
        assert proc.returncode == 1, proc.stderr
        rep = json.loads(proc.stdout)
    (t,) = rep["terminals"]
    assert t["verdict"] == verdict, t
    failure = etree.parse(str(junit)).getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.get("type") == verdict, etree.tostring(failure)
    if cause is not None:
        assert cause in (t["cause"] or ""), t
        assert failure.get("message") == f"{verdict}: {t['cause']}"
        if look is not None:
            seen(rep, f"{verdict}-{plan.name}", look, page)
    assert leftovers(plan) == []
    return t


TERMINAL = '[[terminal]]\nname = "t1"\n'


def test_export_to_another_subnet_is_nfs_access_denied(tmp_path: Path, lab_down: list[str],
                                                       browser: Any) -> None:
    # NFSv3: its MOUNT protocol answers "access denied"; NFSv4 hides an export from a client
    # it is not for, so the same fault there reads as nfs-no-such-export.
    path = _scenario(tmp_path, "denied", 'nfs_version = "3"\n' + TERMINAL, lab_down)
    other = ipaddress.IPv4Network("10.213.251.0/24")
    t = _boots_to("nfs-access-denied", path, lambda plan: replace(plan, nfs_clients=(other,)),
                  cause="the export admits only 10.213.251.0/24", look=browser)
    assert t["cause"].startswith("the NFS server refused 10.213.")
    assert "Permission denied" in t["line"]
    # What the lab's DHCP server saw of it: its lease, found by its MAC.
    assert any("DHCPACK(" in s and t["mac"] in s for s in t["seen"]), t["seen"]


def test_a_minor_version_nobody_has_is_nfs_version_unsupported(tmp_path: Path,
                                                               lab_down: list[str]) -> None:
    path = _scenario(tmp_path, "minor", 'nfs_version = "4.2"\n' + TERMINAL, lab_down)

    def asks_4_3(plan: LabPlan) -> LabPlan:
        (t,) = plan.terminals
        return replace(plan, terminals=(replace(t, cmdline=t.cmdline.replace(
            "rootflags=vers=4.2", "rootflags=vers=4.3")),))

    _boots_to("nfs-version-unsupported", path, asks_4_3)


DEBIAN = '[root]\nsource = "debian"\nsuite = "bookworm"\n[kernel]\nsource = "root"\n'


@pytest.mark.parametrize(("builder", "line"), [
    ("vlab", "no DHCP lease"),
    # klibc's ipconfig, in initramfs-tools' rounds: the 6 s round after 2, 3 and 4 s
    ("initramfs-tools", "IP-Config: no response after 6 secs"),
    # its dhclient says "dhcp for interface ... failed" after 60 s, silent until then: the
    # silence after dracut's "dhcp: PREINIT" decides
    ("dracut", "after asking for a DHCP lease"),
])
def test_a_network_without_dhcp_is_dhcp_failed(tmp_path: Path, lab_down: list[str],
                                               builder: str, line: str, browser: Any) -> None:
    """The terminal joins a bridge of the lab host's namespace that no DHCP server serves;
    the Debian roots are the ones test_roots boots (cached)."""
    nfs3 = 'nfs_version = "3"\n' if builder == "initramfs-tools" else ""
    body = TERMINAL if builder == "vlab" else (
        f'timeout = 300\n{nfs3}{DEBIAN}[initrd]\nbuilder = "{builder}"\n{TERMINAL}memory = 512\n')
    path = _scenario(tmp_path, "nodhcp", body, lab_down)
    bridge = "vlabnodhcp"

    def on_a_bare_bridge(plan: LabPlan) -> LabPlan:
        netns = start_lab_host(plan, Dirs.from_env(), lambda _text: None)
        assert netns is not None
        for argv in (["link", "add", bridge, "type", "bridge"], ["link", "set", bridge, "up"]):
            subprocess.run(["ip", "-n", netns, *argv], check=True)
        bare = replace(plan.node(LOCAL), bridge=bridge)  # its network stays the lab's
        return replace(plan, nodes=(bare, *plan.nodes[1:]))

    try:
        t = _boots_to("dhcp-failed", path, on_a_bare_bridge,
                      cause="DHCP server never heard a DISCOVER from", look=browser)
    finally:
        subprocess.run(["ip", "-n", "vlab-host", "link", "del", bridge], capture_output=True)
    assert line in t["line"], t


def test_an_initrd_without_the_nic_driver_is_nic_driver_missing(tmp_path: Path,
                                                                lab_down: list[str]) -> None:
    path = _scenario(tmp_path, "nonic", TERMINAL, lab_down)
    t = _boots_to("nic-driver-missing", path,  # a virtio NIC, an initrd with e1000 only
                  lambda plan: replace(plan, nic_drivers=(NicDriver.E1000,)))
    assert "no network interface appeared" in t["line"]


def test_a_server_address_where_nothing_answers_is_nfs_unreachable(
    tmp_path: Path, lab_down: list[str]
) -> None:
    path = _scenario(tmp_path, "nobody", 'subnet = "10.213.249.0/24"\n' + TERMINAL
                     + 'export = "10.213.249.200:/srv/root"\n', lab_down)
    _boots_to("nfs-unreachable", path)


def test_a_root_path_that_is_a_file_is_nfs_mount_failed(tmp_path: Path,
                                                        lab_down: list[str]) -> None:
    """No errno vlab names (a file, not a folder): the mount's own failure line decides."""
    busybox = Dirs.from_env().cache / "roots" / "busybox"
    path = _scenario(tmp_path, "afile", TERMINAL + f'export = "{busybox}/bin/busybox"\n',
                     lab_down)
    t = _boots_to("nfs-mount-failed", path)
    assert "failed" in t["line"]


def _root_with_init(tmp_path: Path, init: str) -> Path:
    """A copy of the busybox root whose /sbin/init is the given script."""
    busybox = Dirs.from_env().cache / "roots" / "busybox"
    nfsroot.build_busybox(busybox)
    root = tmp_path / "root"
    shutil.copytree(busybox, root, symlinks=True)
    (root / "sbin" / "init").unlink()
    (root / "sbin" / "init").write_text(init)
    (root / "sbin" / "init").chmod(0o755)
    root.chmod(0o755)
    tmp_path.chmod(0o755)
    return root


def test_an_init_that_exits_is_init_failed(tmp_path: Path, lab_down: list[str]) -> None:
    _root_with_init(tmp_path, "#!/bin/sh\necho 'this init gives up'\nexit 3\n")
    path = _scenario(tmp_path, "initexits", '[root]\nsource = "dir"\npath = "root"\n'
                     '[kernel]\nsource = "debian"\n' + TERMINAL, lab_down)
    t = _boots_to("init-failed", path)
    assert "Attempted to kill init" in t["line"]


def test_a_kernel_that_cannot_start_its_initrd_is_kernel_panic(
    tmp_path: Path, lab_down: list[str]
) -> None:
    path = _scenario(tmp_path, "panic", TERMINAL + 'cmdline = "rdinit=/no/such/init"\n',
                     lab_down)
    t = _boots_to("kernel-panic", path)
    assert "Kernel panic - not syncing" in t["line"]


def _systemd_root(tmp_path: Path, init: str) -> None:
    """A busybox root whose init vlab takes for systemd (/sbin/init -> /lib/systemd/systemd),
    so it waits for a multi-user.target line that this one never prints."""
    root = _root_with_init(tmp_path, init)
    (root / "lib" / "systemd").mkdir(parents=True, exist_ok=True)
    (root / "sbin" / "init").rename(root / "lib" / "systemd" / "systemd")
    (root / "sbin" / "init").symlink_to("/lib/systemd/systemd")


DIR_ROOT = '[root]\nsource = "dir"\npath = "root"\n[kernel]\nsource = "debian"\n'


def test_a_guest_that_falls_silent_is_stalled(tmp_path: Path, lab_down: list[str]) -> None:
    """Its init says nothing after the NFS root is mounted: stalled on any machine."""
    _systemd_root(tmp_path, "#!/bin/sh\nexec sleep 100000\n")
    path = _scenario(tmp_path, "silent", 'stall = 10\n' + DIR_ROOT + TERMINAL, lab_down)
    t = _boots_to("stalled", path)
    assert t["seconds"] >= 10 and t["proof"] is not None


BUSY_SILENT_SYSTEMD = """#!/bin/sh
end=$(( $(date +%s) + 35 ))
while [ "$(date +%s)" -lt "$end" ]; do :; done
echo "[  OK  ] Reached target multi-user.target - Multi-User System."
echo "VLAB-TERMINAL-UP terminal systemd multi-user.target failed="
exec sleep 100000
"""


def test_a_guest_silent_but_busy_is_not_stalled(tmp_path: Path, lab_down: list[str]) -> None:
    """Its init works for 35 s without a word (as systemd does on a loaded host), then
    reaches multi-user: ok, though the console was silent for three stall windows."""
    _systemd_root(tmp_path, BUSY_SILENT_SYSTEMD)
    path = _scenario(tmp_path, "busysilent", 'stall = 10\ntimeout = 240\n' + DIR_ROOT
                     + TERMINAL, lab_down)
    proc = vlab("up", path, "--json")
    assert proc.returncode == 0, proc.stderr
    (t,) = json.loads(proc.stdout)["terminals"]
    assert t["verdict"] == "ok" and t["seconds"] >= 35 and "multi-user" in t["line"], t
    assert vlab("down", path).returncode == 0


LOOPING_SYSTEMD = """#!/bin/sh
while :; do echo "still starting"; sleep 1; done
"""


def test_a_boot_slower_than_the_timeout_is_timeout(tmp_path: Path, lab_down: list[str]) -> None:
    """An init that vlab takes for systemd, talking but never reaching multi-user: the time
    runs out first on any machine (output never pauses long enough to be a stall)."""
    _systemd_root(tmp_path, LOOPING_SYSTEMD)
    path = _scenario(tmp_path, "slow", 'timeout = 10\n' + DIR_ROOT + TERMINAL, lab_down)
    t = _boots_to("timeout", path)
    assert 10 <= t["seconds"] < 15


def test_a_guest_that_powers_off_is_domain_stopped_at_once(tmp_path: Path,
                                                          lab_down: list[str]) -> None:
    """Its init powers the machine off after the NFS root is mounted: libvirt says the
    domain is shut off (its lifecycle event), and the verdict comes within a second or two,
    not after the stall window or the timeout."""
    _systemd_root(tmp_path, "#!/bin/sh\necho 'this init powers off'\nexec poweroff -f\n")
    path = _scenario(tmp_path, "poweroff", 'stall = 60\ntimeout = 300\n' + DIR_ROOT + TERMINAL,
                     lab_down)
    t = _boots_to("domain-stopped", path)
    # libvirt's lifecycle event tells it, not the state polled as a fallback.
    assert re.search(r"the domain is shut off \(libvirt event\), after: .*Power down",
                     t["line"]), t
    log = Path(t["console_log"]).read_text()
    assert "this init powers off" in log
    assert t["proof"] is not None and t["seconds"] < 60, t


PROBING_SYSTEMD = """#!/bin/sh
i=0
while :; do
    ls /vlab-probe-$i 2>/dev/null  # a name never looked up before: an NFS LOOKUP each time
    echo "probe $i answered"
    i=$((i + 1))
    sleep 1
done
"""


def test_a_root_whose_nfs_server_died_is_stalled_within_its_stall(tmp_path: Path,
                                                                   lab_down: list[str]) -> None:
    """A real hang: the NFS server dies under a terminal that reads its root every second
    (the hard mount then waits forever, silent and idle). The verdict is stalled, within
    the stall window of the last answer, long before the timeout."""
    _systemd_root(tmp_path, PROBING_SYSTEMD)
    path = _scenario(tmp_path, "deadserver", 'stall = 15\ntimeout = 600\n' + DIR_ROOT
                     + TERMINAL, lab_down)
    plan = plan_for(path)
    proc, _seen = up_until(path, "t1: nfs-mounted", args=("--json",))
    time.sleep(5)  # a few probes answered
    pid = nfsserver.server_pid(plan.nfs_server_dir / "ganesha.pid")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    waited = time.monotonic() - killed
    (t,) = json.loads(out)["terminals"]
    assert t["verdict"] == "stalled", t
    assert re.search(r"probe \d+ answered", t["line"]), t
    assert "the lab's NFS server (nfs-ganesha) is not running" in (t["cause"] or ""), t
    # The window counts from the last answer, which came up to a second before the kill.
    assert 15 - 1.5 <= waited < 15 + 30, (waited, t)
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []
