from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlab import scenario
from vlab.plan.lab import Dirs, LabPlan
from vlab.plan.make import make_plan

HERE = Path(__file__).parent
ROOT = HERE.parent
GOLDEN = HERE / "golden"
# Fixed folders so golden files do not depend on who runs the tests.
GOLDEN_TESTS = {"test_render.py", "test_pxe.py"}  # the files whose tests read golden files
GOLDEN_DIRS = Dirs(cache=Path("/var/cache/vlab"), state=Path("/var/lib/vlab"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regenerate", action="store_true",
                     help="rewrite golden files from the current output (then read the diff)")


# Golden files the tests compared this session, and whether every test that reads them ran.
_READ: set[str] = set()
_SKIPPED_GOLDEN = False


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Compare text with tests/golden/NAME; (re)write it only under --regenerate."""
    regenerate = request.config.getoption("--regenerate")

    def compare(name: str, text: str) -> None:
        path = GOLDEN / name
        _READ.add(name)
        if regenerate:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"{name} has no golden file: write it with make golden, read it"
        assert text == path.read_text(), f"{name} differs from its golden file (make golden)"

    return compare


def pytest_deselected(items: list[pytest.Item]) -> None:
    global _SKIPPED_GOLDEN
    if any("golden" in getattr(item, "fixturenames", ()) for item in items):
        _SKIPPED_GOLDEN = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Golden files no test reads are stale: reported (removed under --regenerate), and the
    run fails, once every golden test has run and passed."""
    ran = {Path(str(item.path)).name for item in session.items
           if "golden" in getattr(item, "fixturenames", ())}
    if exitstatus != 0 or _SKIPPED_GOLDEN or not GOLDEN_TESTS.issubset(ran):
        return
    stale = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*")
                   if p.is_file() and str(p.relative_to(GOLDEN)) not in _READ)
    if not stale:
        return
    if session.config.getoption("--regenerate"):
        for name in stale:
            (GOLDEN / name).unlink()
        print(f"\nremoved {len(stale)} stale golden file(s): {', '.join(stale)}")
        return
    print(f"\nstale golden files (no test reads them; make golden removes them): "
          f"{', '.join(stale)}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def plan_of(name: str) -> LabPlan:
    path = ROOT / "scenarios" / f"{name}.toml"
    return make_plan(scenario.load(path.relative_to(ROOT)), GOLDEN_DIRS)


@pytest.fixture(scope="session")
def browser():  # type: ignore[no-untyped-def]
    """browser.look(page, name): a real headless Chromium in a namespace of its own, which
    goes when the session ends."""
    import browser as chromium

    yield chromium.look
    chromium.close()


@pytest.fixture
def lab_down():  # type: ignore[no-untyped-def]
    """Scenario paths appended here are brought down after the test, even when it fails."""
    used: list[str] = []
    yield used
    for path in used:
        subprocess.run([sys.executable, "-m", "vlab", "down", path], cwd=ROOT,
                       capture_output=True, timeout=300)


@pytest.fixture
def cpu_hogs():  # type: ignore[no-untyped-def]
    """A loaded host: one busy process per core for the length of the test (each also
    ends by itself after 15 minutes, should the test's teardown never run); their pids."""
    spin = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        yield [h.pid for h in hogs]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
