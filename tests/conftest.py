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


# Golden files the tests compared this session, and whether every test that reads them ran
# (with pytest-xdist: in this worker; each sends its own to the controller, which decides).
_READ: set[str] = set()
_SKIPPED_GOLDEN = False
_WORKERS: list[dict[str, object]] = []  # the controller's: what each worker sent

# make test runs the tests in two steps: those not marked `alone` on two pytest-xdist workers,
# a module (or a group below) to a worker, then the `alone` ones by themselves. Modules that
# boot labs of the same name (tiny, one, wrong-export) share a worker: one lab per name.
GROUPS = {"test_boot.py": "labs-one-tiny", "test_ssh.py": "labs-one-tiny",
          "test_check.py": "labs-one-tiny", "test_resilience.py": "labs-one-tiny"}
# The longest first, so that both workers finish together (seconds measured in a clean run,
# `--durations`); the rest in pytest's order.
FIRST = ("test_resilience.py", "test_roots.py", "test_verdicts.py", "test_pxe.py",
         "test_arm64.py", "test_trixie.py", "test_images.py", "test_boot.py", "test_ipv6.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first, each module's tests in their order."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).name, len(FIRST)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile`, a module's tests to one worker (its module-scoped labs boot once),
    with the modules of a group in GROUPS to the same one. (pytest-xdist's own loadgroup reads
    its marks into the node id, which pytest 9 no longer takes.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ByGroup(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return GROUPS.get(name, name)

    return ByGroup(config, log)


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


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """The controller's (pytest-xdist): a worker's golden files read, sent when it ended."""
    _WORKERS.append(getattr(node, "workeroutput", {}))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Golden files no test reads are stale: reported (removed under --regenerate), and the
    run fails, once every golden test has run and passed."""
    ran = {Path(str(item.path)).name for item in session.items
           if "golden" in getattr(item, "fixturenames", ())}
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller decides
        workeroutput.update(read=sorted(_READ), skipped=_SKIPPED_GOLDEN, ran=sorted(ran))
        return
    read, skipped = set(_READ), _SKIPPED_GOLDEN
    for sent in _WORKERS:
        read |= set(sent.get("read", ()))  # type: ignore[call-overload]
        skipped = skipped or bool(sent.get("skipped"))
        ran |= set(sent.get("ran", ()))  # type: ignore[call-overload]
    if exitstatus != 0 or skipped or not GOLDEN_TESTS.issubset(ran):
        return
    stale = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*")
                   if p.is_file() and str(p.relative_to(GOLDEN)) not in read)
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
