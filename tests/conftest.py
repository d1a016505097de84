from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlab import scenario
from vlab.plan import Dirs, LabPlan, make_plan

HERE = Path(__file__).parent
ROOT = HERE.parent
GOLDEN = HERE / "golden"
# Fixed folders so golden files do not depend on who runs the tests.
GOLDEN_DIRS = Dirs(cache=Path("/var/cache/vlab"), state=Path("/var/lib/vlab"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regenerate", action="store_true",
                     help="rewrite golden files from the current output (then read the diff)")


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Compare text with tests/golden/NAME; write it when missing or under --regenerate."""
    regenerate = request.config.getoption("--regenerate")

    def compare(name: str, text: str) -> None:
        path = GOLDEN / name
        if regenerate or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), f"{name} differs from its golden file (make golden)"

    return compare


def plan_of(name: str) -> LabPlan:
    path = ROOT / "scenarios" / f"{name}.toml"
    return make_plan(scenario.load(path.relative_to(ROOT)), GOLDEN_DIRS)


@pytest.fixture
def lab_down():  # type: ignore[no-untyped-def]
    """Scenario paths appended here are brought down after the test, even when it fails."""
    used: list[str] = []
    yield used
    for path in used:
        subprocess.run([sys.executable, "-m", "vlab", "down", path], cwd=ROOT,
                       capture_output=True, timeout=300)
