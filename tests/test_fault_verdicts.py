"""A terminal's outcome of a [[fault]] from its heartbeat, and its place in the JUnit report
(pure; the real faults are in tests/test_resilience.py)."""

from __future__ import annotations

from lxml import etree

from vlab.report.junit import report_to_junit
from vlab.verbs.faults import NFS_HUNG, NFS_IO_ERROR, judge_beats

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
