"""JUnit XML for CI: one testsuite per lab, one testcase per terminal (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lxml import etree

from vlab.report.outcome import carried_on
from vlab.watch.guesttext import tail

MAX_LOG = 200_000  # characters of console log kept in system-out


def report_to_junit(rep: dict[str, Any]) -> str:
    terminals = rep["terminals"]
    failed = [t for t in terminals if t["verdict"] != "ok"]
    suite = etree.Element("testsuite", name=f"vlab.{rep['lab']}", tests=str(len(terminals)),
                          failures=str(len(failed)), errors="0",
                          time=f"{max((t['seconds'] or 0) for t in terminals):.1f}")
    for t in terminals:
        case = etree.SubElement(suite, "testcase", classname=f"vlab.{rep['lab']}",
                                name=_xml_text(t["name"]), time=f"{t['seconds'] or 0:.1f}")
        if t["verdict"] != "ok":
            line = _xml_text(t.get("line") or "")
            why = _xml_text(t.get("cause") or "")
            failure = etree.SubElement(case, "failure", type=t["verdict"] or "no-verdict",
                                       message=f"{t['verdict']}: {why or line}")
            failure.text = f"{why}\n{line}" if why else line
        out = etree.SubElement(case, "system-out")
        out.text = _console(t["console_log"])
        if units := t.get("failed_units"):  # booted, but these units of the image failed
            err = etree.SubElement(case, "system-err")
            err.text = _xml_text("systemd units that failed: " + ", ".join(units))
        for c in t.get("probes", []):  # post-boot probes run over SSH: a testcase each
            check = etree.SubElement(suite, "testcase",
                                     classname=_xml_text(f"vlab.{rep['lab']}.{t['name']}"),
                                     name=_xml_text(c["name"]), time="0")
            if not c["ok"]:
                fail = etree.SubElement(check, "failure", type="check-failed",
                                        message=_xml_text(f"{c['run']}: exit {c['status']}"))
                fail.text = _xml_text(c["output"])
                failed.append(c)
            etree.SubElement(check, "system-out").text = _xml_text(c["output"])
        for i, f in enumerate(t.get("faults", []), 1):  # a testcase per terminal and fault
            case = etree.SubElement(suite, "testcase",
                                    classname=_xml_text(f"vlab.{rep['lab']}.{t['name']}"),
                                    name=_xml_text(f"fault {i} {f['kind']}: {f['what']}"),
                                    time=f"{(f['ended'] or 0) - (f['began'] or 0):.1f}")
            if f["verdict"] != "ok":
                fail = etree.SubElement(case, "failure", type=f["verdict"],
                                        message=_xml_text(f"{f['verdict']}: {f['line']}"))
                fail.text = _xml_text(f["line"])
                failed.append(f)
            elif how := carried_on(f):
                etree.SubElement(case, "system-out").text = how
        for c in t.get("probes_after", []):  # the probes again, after the faults
            check = etree.SubElement(suite, "testcase",
                                     classname=_xml_text(f"vlab.{rep['lab']}.{t['name']}"),
                                     name=_xml_text(f"{c['name']} (after the faults)"), time="0")
            if not c["ok"]:
                fail = etree.SubElement(check, "failure", type="check-failed",
                                        message=_xml_text(f"{c['run']}: exit {c['status']}"))
                fail.text = _xml_text(c["output"])
                failed.append(c)
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(len(failed)))
    root = etree.Element("testsuites")
    root.append(suite)
    return etree.tostring(root, pretty_print=True, xml_declaration=True,
                          encoding="UTF-8").decode()


def _console(path: str) -> str:
    try:
        text = tail(Path(path), 4 * MAX_LOG).decode(errors="replace")
    except OSError:
        return ""
    return _xml_text(text)[-MAX_LOG:]


def _xml_text(text: str) -> str:
    """What XML 1.0 can carry of a text (the console has escape sequences, and a guest can
    print anything): no C0 controls but tab and newline, no surrogates, no U+FFFE/U+FFFF."""
    return "".join(c for c in str(text) if c in "\t\n" or (
        c >= " " and not "\ud800" <= c <= "\udfff" and c not in "\ufffe\uffff"))
