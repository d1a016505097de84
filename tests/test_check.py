"""vlab check: the CI mode. JUnit rendering (pure) and a real check of a failing lab."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import ROOT
from lxml import etree
from test_boot import leftovers, plan_for, vlab

from vlab.report.junit import report_to_junit
from vlab.watch.follow import Follower
from vlab.watch.judge import Judge
from vlab.watch.sshkeys import host_key_from_console


def test_junit_has_a_testcase_per_terminal_and_the_decisive_line(tmp_path: Path) -> None:
    log = tmp_path / "t2.log"
    log.write_text("booting\x1b[0m\nmount: mounting s:/x on /newroot failed: No such file\n")
    rep = {"lab": "l", "terminals": [
        {"name": "t1", "verdict": "ok", "seconds": 4.2, "line": "VLAB-TERMINAL-UP",
         "console_log": str(tmp_path / "missing.log")},
        {"name": "t2", "verdict": "nfs-no-such-export", "seconds": 3.1,
         "line": "mount: mounting s:/x on /newroot failed: No such file", "console_log": str(log)},
    ]}
    suite = etree.fromstring(report_to_junit(rep).encode())[0]
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    t1, t2 = suite.findall("testcase")
    assert t1.find("failure") is None and t1.get("time") == "4.2"
    failure = t2.find("failure")
    assert failure is not None and failure.get("type") == "nfs-no-such-export"
    assert "No such file" in failure.get("message", "")
    assert "booting" in (t2.findtext("system-out") or "")


@pytest.mark.boot
def test_check_of_a_failing_lab_exits_1_writes_junit_and_leaves_nothing(
        tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/wrong-export.toml"
    junit, page = tmp_path / "out.xml", tmp_path / "report.html"
    proc = vlab("check", path, "--junit", str(junit), "--report", str(page), "--json",
                "--timeout", "60", timeout=300)
    assert proc.returncode == 1, proc.stderr
    (t,) = json.loads(proc.stdout)["terminals"]
    assert t["verdict"] == "nfs-no-such-export"
    # Both ends: the terminal asked for a path the server does not export.
    assert t["cause"] and t["cause"].startswith("the terminal asked for /no/such/export; the "
                                                "NFS server exports /"), t
    assert f"cause: {t['cause']}" in proc.stderr
    case = etree.parse(str(junit)).getroot()[0].find("testcase")
    assert case is not None and case.find("failure") is not None
    assert case.find("failure").get("message") == f"nfs-no-such-export: {t['cause']}"  # type: ignore[union-attr]
    assert leftovers(plan_for(path)) == []
    # The report, as a person sees it: one row, the cause, the console with its line marked.
    dom, asked = browser(page, "check-wrong-export")
    assert asked == [], asked
    assert dom.count('class="terminal failed"') == 1 and t["cause"] in dom
    assert 'data-verdict="nfs-no-such-export"' in dom and '<mark id="decisive-t1">' in dom


def test_check_of_a_bad_scenario_exits_2(tmp_path: Path) -> None:
    proc = vlab("check", str(ROOT / "tests/bad/bad-uri.toml"), timeout=60)
    assert proc.returncode == 2 and "lab.uri" in proc.stderr


# The console is the guest's: random bytes are data, never a crash (seeded: reproducible).

def _noise(rng: random.Random, n: int) -> bytes:
    pieces = [rng.randbytes(rng.randint(0, 64)),
              b"VLAB-SSH-HOSTKEY t1 ssh-ed25519 " + rng.randbytes(rng.randint(0, 80)) + b"\n",
              b"VLAB-SSH-HOSTKEY t1 ssh-ed25519 AAAA" + bytes(rng.choice(b"AZaz09+/=")
                                                           for _ in range(rng.randint(0, 90))),
              b"VLAB-NFSROOT-OK " + rng.randbytes(20), b"\x1b[" + rng.randbytes(4),
              "\ufffe\ud7ff\u2028é".encode(), b"\r\n", b"\x00\x0b\x0c\x7f"]
    return b"".join(rng.choice(pieces) for _ in range(n))


def test_random_console_bytes_feed_the_reader_the_key_reader_and_junit(tmp_path: Path) -> None:
    rng = random.Random(1302)
    for i in range(200):
        log = tmp_path / f"t{i}.log"
        data = _noise(rng, rng.randint(1, 60))
        log.write_bytes(data)
        follower = Follower(log)
        lines = follower.lines()
        judge = Judge(started=0.0, timeout=60.0, stall=30.0)
        for line in lines:
            judge.feed(line, 1.0)
        host_key_from_console(log)  # a key or None; never an exception
        decisive = lines[-1] if lines else data.decode(errors="replace")
        rep = {"lab": "fuzz", "terminals": [
            {"name": "t1", "verdict": "stalled", "seconds": 1.0, "line": decisive,
             "console_log": str(log),
             "probes": [{"name": "c\x1b", "run": decisive, "status": 1, "ok": False,
                         "output": data.decode(errors="surrogateescape")}]}]}
        etree.fromstring(report_to_junit(rep).encode())  # well-formed, whatever came in
