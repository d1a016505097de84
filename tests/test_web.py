"""The PXE twins' web server (vlab/serve/web.py), for real: Debian's lighttpd, confined like
the NFS server, in a network namespace the test makes, tried as a hostile client would. That
twins boot through it: test_pxe.py's
test_http_boot_and_ipxe_twins_fetch_over_http_from_a_real_web_server."""

from __future__ import annotations

import os
import pwd
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from conftest import ROOT

from vlab import procs, scenario
from vlab.nodes import labhost
from vlab.plan.lab import Dirs
from vlab.plan.make import make_plan
from vlab.serve import web
from vlab.serve.confine import WEB_CAPS
from vlab.verbs import gc

NETNS = "vlab-test-web"


def _get(url: str) -> str:
    """The status code of a GET, from inside the namespace (no redirect followed)."""
    return subprocess.run(["ip", "netns", "exec", NETNS, "curl", "-s", "--path-as-is", "-o",
                           "/dev/null", "-w", "%{http_code}", "--max-time", "10", url],
                          capture_output=True, text=True, timeout=30).stdout


def test_the_web_server_serves_the_tree_only_confined_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = Dirs(tmp_path / "state", tmp_path / "cache")
    plan = make_plan(scenario.load(ROOT / "scenarios/site-http.toml"), dirs, twins=True)
    assert web.needed(plan)
    tree = tmp_path / "tree"
    (tree / "vlab-site").mkdir(parents=True)
    for d in (tmp_path, tree, tree / "vlab-site"):
        d.chmod(0o755)
    (tree / "vmlinuz").write_bytes(b"kernel")
    (tree / "vlab-site/lighttpd.conf").write_text(
        f'server.modules += ("mod_alias")\nalias.url += ("/vlab/" => "{tree}/")\n')
    (tree / "passwd").symlink_to("/etc/passwd")  # planted: never followed
    secret = tmp_path / "secret"
    secret.write_text("host file")
    secret.chmod(0o644)
    for f in (tree / "vmlinuz", tree / "vlab-site/lighttpd.conf"):
        f.chmod(0o644)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "lab0", "type", "bridge"],
                    ["addr", "add", f"{plan.gateway}/24", "dev", "lab0"],
                    ["link", "set", "lab0", "up"]):
            subprocess.run(["ip", "-n", NETNS, *cmd], check=True)
        pid = web.start(plan, NETNS, tree)
        assert web.start(plan, NETNS, tree) == pid  # a second start keeps it
        status = Path(f"/proc/{pid}/status").read_text()
        fields = {ln.split(":")[0]: ln.split(":", 1)[1].split() for ln in status.splitlines()}
        www = pwd.getpwnam("www-data")
        assert fields["Uid"] == [str(www.pw_uid)] * 4 and fields["CapEff"] == ["0" * 16]
        assert int(fields["CapBnd"][0], 16) == sum(1 << c for c in WEB_CAPS)
        for ns in ("mnt", "pid", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        base = f"http://{plan.gateway}"
        assert plan.http_url == f"{base}/vlab/"
        assert _get(f"{base}/vlab/vmlinuz") == "200"
        for hostile in ("/vlab/../secret", "/vlab/%2e%2e/secret", "/vlab/passwd", "/secret",
                        "/vlab/..%2fsecret", f"/vlab/{urllib.parse.quote(str(secret))}",
                        "/vmlinuz", "/etc/passwd"):
            assert _get(base + hostile) in ("403", "404", "400"), hostile
        # Only on the lab network's address: not on the namespace's loopback.
        assert _get("http://127.0.0.1/vlab/vmlinuz") == "000"
        # A lab whose state is gone: vlab gc finds its server by the lab folder on its
        # command line (the machine's own lab host is not this test's to look at).
        monkeypatch.setattr(labhost, "status", lambda _ns: labhost.HostStatus("down", None, None))
        removed = gc.gc(dirs, lambda _text: None)
        assert [r for r in removed if r.startswith(f"process {pid} (lab httpsite): lighttpd")]
        assert not procs.alive(pid)
    finally:
        web.stop(plan)
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    assert not (plan.lab_dir / "web").exists()
    assert "GET /vlab/vmlinuz" in (plan.lab_dir / "console/web-access.log").read_text()
    assert not web.stop(plan)  # nothing left to stop: no failure
    assert not (plan.lab_dir / "web").exists()
