"""The boot report page from recorded consoles: one row per terminal, failures first, phase
widths proportional to the measured seconds, valid HTML, nothing to fetch, the guest's text
escaped. (tests/test_report_boot.py renders real labs' reports and opens them in Chromium.)"""

from __future__ import annotations

import re
from pathlib import Path

import html5lib
import pytest

from vlab.report import html_page

CONSOLES = Path(__file__).parent / "consoles"


def _rep() -> dict:  # type: ignore[type-arg]
    return {"lab": "tiny", "scenario": "scenarios/tiny.toml", "terminals": [
        {"name": "t1", "verdict": "ok", "seconds": 8.0, "mac": "52:54:00:00:00:01",
         "ip": "10.0.0.10", "line": "VLAB-TERMINAL-UP t1 nfs4 root",
         "console_log": str(CONSOLES / "pxe-busybox-ok.log"),
         "phases": [["loader", 1.0], ["initrd", 4.0], ["dhcp", 5.0], ["nfs-mounted", 6.0]]},
        {"name": "t2", "verdict": "nfs-access-denied", "seconds": 4.0, "mac": "52:54:00:00:00:02",
         "ip": "10.0.0.11",
         "line": "mount: mounting 10.213.108.1:/tmp/cache-base/roots/busybox on /newroot "
         "failed: Permission denied", "console_log": str(CONSOLES / "access-denied.log"),
         "cause": "the NFS server refused 10.0.0.11: <the export admits 10.0.2.0/24 only>",
         "phases": [["initrd", 1.0], ["dhcp", 2.0]],
         "seen": ["14:13:40 dhcp: DHCPACK(vlabce6d6dff) 10.0.0.11 52:54:00:00:00:02 <t2>\x1b"]},
    ]}


def test_segments_run_from_each_phase_to_the_next_and_the_last_to_the_verdict() -> None:
    segs = html_page.segments([["loader", 1.0], ["initrd", 4.0], ["nfs-mounted", 6.0]], 8.0)
    assert [(s.phase, s.start, s.end) for s in segs] == [
        ("firmware", 0.0, 1.0), ("loader", 1.0, 4.0), ("initrd", 4.0, 6.0),
        ("userspace", 6.0, 8.0)]
    assert html_page.segments([], 3.0)[0].phase == "firmware"


def test_the_page_is_valid_html_with_a_row_per_terminal_failures_first() -> None:
    page = html_page.page(_rep())
    html5lib.HTMLParser(strict=True).parse(page)  # raises on any parse error
    rows = re.findall(r'<tr class="terminal (\w+)" id="row-(\w+)"', page)
    assert rows == [("failed", "t2"), ("ok", "t1")]
    # Widths proportional to the seconds, on one axis (the longest boot: BAR_WIDTH px).
    widths = {(m[0], m[1]): float(m[2]) for m in re.findall(
        r'data-phase="(\w+)" data-start="([\d.]+)" data-end="[\d.]+" x="[\d.]+" y="2" '
        r'width="([\d.]+)"', page)}
    scale = html_page.BAR_WIDTH / 8.0
    assert widths[("loader", "1.0")] == pytest.approx(3.0 * scale, abs=0.1)
    assert widths[("userspace", "6.0")] == pytest.approx(2.0 * scale, abs=0.1)
    # Phase names in text, not colour alone; the decisive line marked in the console.
    assert "loader 1.0–4.0 s" in page and '<mark id="decisive-t2">' in page
    assert 'id="t1-dhcp"' in page


def test_nothing_is_fetched_and_the_guests_text_is_only_text(tmp_path: Path) -> None:
    evil = tmp_path / "evil.log"
    evil.write_text('<script src="http://example.com/x.js"></script>\n<img src=x onerror=1>\n'
                    "vlab-initrd: kernel command line: <b>x</b>\n")
    rep = _rep()
    rep["terminals"][1]["console_log"] = str(evil)
    rep["terminals"][1]["line"] = "<img src=x onerror=1>"
    page = html_page.page(rep)
    assert "<script" not in page and "<img" not in page and "&lt;script" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "&lt;the export admits" in page  # a cause is text too


def test_each_terminal_shows_what_the_lab_servers_saw_of_it() -> None:
    page = html_page.page(_rep())
    t2 = page[page.index('<details id="servers-t2" open>'):]
    assert "1 line(s)" in t2 and "found by MAC 52:54:00:00:00:02" in t2
    assert "DHCPACK(vlabce6d6dff) 10.0.0.11 52:54:00:00:00:02 &lt;t2&gt;</pre>" in t2
    t1 = page[page.index('<details id="servers-t1">'):]
    assert "logged nothing about this terminal" in t1.split("</details>")[0]


def test_the_timeline_marks_when_each_fault_began_and_ended() -> None:
    rep = _rep()
    t = rep["terminals"][0]
    t["booted_at"] = 1.0
    t["faults"] = [{"kind": "dhcp-restart", "began": 8.0, "ended": 18.2, "verdict": "ok",
                    "resumed_after": 0.8, "renewed_after": 12, "line": ""},
                   {"kind": "packet-loss", "began": 20.0, "ended": 30.0, "verdict": "nfs-hung",
                    "resumed_after": None, "line": "did not answer"}]
    page = html_page.page(rep)
    assert ('class="fault f-ok" data-kind="dhcp-restart" data-start="7.0" data-end="17.2"'
            in page)
    assert 'class="fault f-failed" data-kind="packet-loss" data-start="19.0"' in page
    assert ("fault dhcp-restart 7.0–17.2 s: ok, its NFS root answered 0.8 s after the fault "
            "ended; it renewed its DHCP lease 12 s after" in page)
    assert "timeline (0 to 29.0 s)" in page  # the axis reaches the last fault's end
