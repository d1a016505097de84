"""`vlab check`, the CI mode: up, every verdict, down, then what a CI job keeps (the JUnit
report, the boot report page). `vlab up` shares its first step and its page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlab import scenario
from vlab.errors import ScenarioError, UsageError
from vlab.plan.lab import Dirs, LabPlan
from vlab.progress import Say
from vlab.report import html_page
from vlab.verbs.down import down
from vlab.verbs.up import up


def up_or_nothing(sc: scenario.Scenario, plan: LabPlan, dirs: Dirs, say: Say) -> dict[str, Any]:
    """up(); bad input that only shows once vlab looks inside the root (a kernel version
    the image lacks) still leaves nothing: what was made for it is taken down again."""
    try:
        return up(sc, plan, dirs, say)
    except ScenarioError:
        down(plan, dirs, lambda _text: None)
        raise


def check(sc: scenario.Scenario, plan: LabPlan, dirs: Dirs, say: Say, *,
          junit: Path | None = None, page: Path | None = None,
          keep: bool = False) -> dict[str, Any]:
    """Boot the lab, wait for every verdict, take it down (unless `keep`), then write the
    JUnit report and the boot report page where asked. Returns the lab's report."""
    try:
        rep = up_or_nothing(sc, plan, dirs, say)
    finally:
        if not keep:
            down(plan, dirs, say)
    if junit is not None:
        from vlab.report import junit as junit_xml  # lxml (~5 MiB) only where JUnit is written

        _write(junit, "--junit", junit_xml.report_to_junit(rep))
        say(f"JUnit report: {junit}")
    write_page(rep, page, say)
    return rep


def write_page(rep: dict[str, Any], path: Path | None, say: Say) -> None:
    """The boot report page of `rep` at `path` (nothing when None)."""
    if path is None:
        return
    _write(path, "--report", html_page.page(rep))
    say(f"boot report: {path}")


def _write(path: Path, option: str, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as err:
        raise UsageError(f"{option} {path}: {err.strerror}; fix: name a file in a folder "
                         "that exists and you may write") from None
