"""A terminal's outcome of a [[fault]] from its heartbeat, and its place in the JUnit report
(pure; the real faults are in tests/test_resilience.py)."""

from __future__ import annotations

import dataclasses
import time

from conftest import plan_of
from lxml import etree

from vlab.report.junit import report_to_junit
from vlab.verbs.faults import DHCP_NOT_RENEWED, NFS_HUNG, NFS_IO_ERROR, judge_beats, renewals

BEGAN, ENDED = 100.0, 110.0  # a fault from 100 s to 110 s on vlab's clock


def beats(*spans: tuple[float, float, bool]) -> list[tuple[float, bool]]:
    """A beat every half second over each (from, to, answered) span."""
    out = []
    for start, stop, ok in spans:
        at = start
        while at < stop:
            out.append((at, ok))
            at += 0.5
    return out


def test_a_terminal_that_answers_again_soon_after_carried_on() -> None:
    r = judge_beats(beats((90, 100.2, True), (111.5, 120, True)), BEGAN, ENDED, 60)
    assert r["verdict"] == "ok" and r["resumed_after"] == 1.5


def test_one_that_never_stopped_resumed_at_once() -> None:
    r = judge_beats(beats((90, 120, True)), BEGAN, ENDED, 60)
    assert r["verdict"] == "ok" and r["resumed_after"] == 0.0


def test_one_that_answers_only_after_its_window_is_hung_and_says_when() -> None:
    r = judge_beats(beats((90, 100.2, True), (125.0, 130, True)), BEGAN, ENDED, 5)
    assert r["verdict"] == NFS_HUNG and r["resumed_after"] == 15.0
    assert "did not answer within 5 s after the fault ended (it did 15.0 s after)" in r["line"]


def test_one_never_heard_from_is_hung() -> None:
    r = judge_beats([], BEGAN, ENDED, 60)
    assert r["verdict"] == NFS_HUNG and r["resumed_after"] is None


def test_a_read_that_failed_is_an_io_error_even_if_it_came_back() -> None:
    r = judge_beats(beats((90, 103, True), (103, 105, False), (111, 115, True)),
                    BEGAN, ENDED, 60)
    assert r["verdict"] == NFS_IO_ERROR and r["resumed_after"] == 1.0
    assert "failed 3.0 s into the fault" in r["line"]


def test_junit_has_a_testcase_per_terminal_and_fault_and_the_probes_again() -> None:
    fault = {"kind": "nfs-restart", "what": "the NFS server stopped for 10 s", "began": 7.0,
             "ended": 17.2}
    probe = {"name": "root is NFS", "run": "stat -f -c %T /", "ok": True, "status": 0,
             "output": "nfs"}
    rep = {"lab": "faults", "terminals": [
        {"name": "t1", "verdict": "ok", "seconds": 4.0, "console_log": "/nonexistent",
         "faults": [{**fault, "verdict": "ok", "resumed_after": 0.8, "line": ""}],
         "probes": [probe], "probes_after": [probe]},
        {"name": "t2", "verdict": "ok", "seconds": 4.1, "console_log": "/nonexistent",
         "faults": [{**fault, "verdict": NFS_HUNG, "resumed_after": None,
                     "line": "its NFS root did not answer within 60 s"}],
         "probes": [probe], "probes_after": [{**probe, "ok": False, "status": -1}]}]}
    suite = etree.fromstring(report_to_junit(rep).encode())[0]
    cases = {(c.get("classname"), c.get("name")): c for c in suite}
    assert suite.get("tests") == str(len(cases)) == "8" and suite.get("failures") == "2"
    ok = cases[("vlab.faults.t1", "fault 1 nfs-restart: the NFS server stopped for 10 s")]
    assert ok.find("failure") is None and "0.8 s after" in ok.findtext("system-out")
    hung = cases[("vlab.faults.t2", "fault 1 nfs-restart: the NFS server stopped for 10 s")]
    assert hung.find("failure").get("type") == NFS_HUNG
    assert cases[("vlab.faults.t2", "root is NFS (after the faults)")].find("failure") is not None


def test_a_fault_not_made_is_a_failure_without_a_place_on_the_timeline() -> None:
    from vlab.report import html_page

    fault = {"kind": "nfs-restart", "what": "the NFS server stopped for 10 s",
             "after": "nfs-mounted", "began": None, "ended": None, "verdict": "not-made",
             "resumed_after": None, "line": "not made: not every terminal's console showed "
                                            "its NFS root mounted"}
    t = {"name": "t1", "verdict": "dhcp-failed", "seconds": 30.0, "console_log": "/nonexistent",
         "faults": [fault]}
    suite = etree.fromstring(report_to_junit({"lab": "x", "terminals": [t]}).encode())[0]
    case = next(c for c in suite if c.get("name", "").startswith("fault 1"))
    assert case.find("failure").get("type") == "not-made"
    assert html_page.fault_marks(t) == []


def test_the_heartbeat_is_the_guests_text_read_as_numbers_only() -> None:
    from vlab.verbs.faults import parse_beats

    text = "ok 12.50\nerr 13.00\nok inf\nok nan\nok\n\x1b]52;c;AAAA\x07\nok 1e999\nwhat 14\n"
    assert parse_beats(text, 100.0) == [(112.5, True), (113.0, False), (114.0, False)]


# The DHCP server away in a lab with dhcp_lease = 120: times are seconds into dnsmasq's day.
DNSMASQ_LOG = """\
Dec  7 23:58:50 dnsmasq-dhcp[81]: 1290 DHCPACK(virbr5) 10.213.9.10 52:54:00:aa:00:01 t1
Dec  7 23:58:51 dnsmasq-dhcp[81]: 1291 DHCPACK(virbr5) 10.213.9.11 52:54:00:aa:00:02 t2
Dec  7 23:58:52 dnsmasq-dhcp[81]: 1292 vendor class: DHCPACK(virbr5) 10.213.9.10 52:54:00:aa:00:01
Dec  7 23:58:53 dnsmasq-dhcp[81]: 1293 client provides name: DHCPACK(x) 1.2.3.4 52:54:00:aa:00:01
Dec  8 00:00:31 dnsmasq-dhcp[95]: 1301 DHCPREQUEST(virbr5) 10.213.9.10 52:54:00:aa:00:01
Dec  8 00:00:31 dnsmasq-dhcp[95]: 1301 DHCPACK(virbr5) 10.213.9.10 52:54:00:AA:00:01 t1
"""
DAY = 86400


def test_dnsmasq_acks_are_read_per_mac_and_a_guests_words_make_none() -> None:
    from vlab.watch.cause import acks_of
    assert acks_of("52:54:00:aa:00:01", DNSMASQ_LOG) == [DAY - 70, 31]
    assert acks_of("52:54:00:aa:00:02", DNSMASQ_LOG) == [DAY - 69]
    assert acks_of("", DNSMASQ_LOG) == []


def test_a_renewal_due_while_the_server_was_away_is_found_across_midnight() -> None:
    from vlab.verbs.faults import renewal_due, renewed_after
    acks = [DAY - 70, 31]
    # the server away from 23:59:10 to 00:00:20: t1's lease (120 s) was due at 23:59:50
    assert renewal_due(acks, 120, DAY - 50, 20) == DAY - 10
    assert renewed_after(acks, 20) == 11
    # a fault over before the renewal was due, or begun after a renewal: none was due in it
    assert renewal_due(acks, 120, DAY - 65, DAY - 20) is None
    assert renewal_due(acks, 120, 40, 80) is None
    assert renewal_due(acks, 120, 40, 100) == 91
    assert renewed_after([DAY - 70], 20) is None


def _log_line(wall: float, mac: str, ip: str) -> str:
    return (time.strftime("%b %d %H:%M:%S", time.localtime(wall))
            + f" dnsmasq-dhcp[7]: 12 DHCPACK(virbr5) {ip} {mac} t\n")


def test_a_lease_due_while_the_server_was_away_and_not_renewed_is_dhcp_not_renewed(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """scenarios/faults.toml's lab (dhcp_lease = 120): t1 renewed 5 s after the server came
    back; t2's lease came due in the fault too, and the log shows no renewal of it."""
    plan = dataclasses.replace(plan_of("faults"), lab_dir=tmp_path)
    t1, t2 = plan.terminals
    now, to_wall = time.monotonic(), time.time() - time.monotonic()
    began, ended = now - 80, now - 10  # the server away for 70 s, back 10 s ago
    log = "".join(_log_line(to_wall + at, t.mac, t.ip)
                  for at, t in ((began - 20, t1), (began - 15, t2), (ended + 5, t1)))
    plan.dnsmasq_log.parent.mkdir()
    plan.dnsmasq_log.write_text(log)
    outcomes = {t.name: {"verdict": "ok", "resumed_after": 0.5, "line": ""} for t in (t1, t2)}
    renewals(plan, 120, outcomes, began, ended, within=1)
    assert outcomes["t1"]["verdict"] == "ok" and outcomes["t1"]["renewed_after"] == 5
    assert outcomes["t2"]["verdict"] == DHCP_NOT_RENEWED
    assert "its 120 s DHCP lease was due for renewal 45 s into the fault" in outcomes["t2"]["line"]
    assert "no renewal within 1 s after the server's return" in outcomes["t2"]["line"]
