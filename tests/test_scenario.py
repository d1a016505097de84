"""Scenario validation: every bad file in tests/bad/ gives exactly the message in its header."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HERE, ROOT

from vlab import scenario
from vlab.cli import main
from vlab.errors import ScenarioError
from vlab.scenario import HostMode, Hypervisor, NfsVersion

BAD = sorted((HERE / "bad").glob("*.toml"))


def expected(path: Path) -> str:
    lines = [ln[len("# expect: "):] for ln in path.read_text().splitlines()
             if ln.startswith("# expect: ")]
    return "\n".join(lines).replace("{file}", str(path.relative_to(ROOT)))


def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_scenario_message(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(ScenarioError) as err:
        scenario.load(path.relative_to(ROOT))
    assert err.value.message() == expected(path)


@pytest.mark.parametrize("path", BAD[:5], ids=[p.stem for p in BAD[:5]])
def test_bad_scenario_exits_2_and_writes_nothing(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["render", str(path), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("vlab: ") and "fix: " in err


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        scenario.load(tmp_path / "nope.toml")


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "x"\n[[terminal]]\nname = "t1"\n')
    s = scenario.load(path)
    assert s.lab.hypervisor is Hypervisor.QEMU
    assert s.lab.host is HostMode.AUTO
    assert s.lab.nfs_version is NfsVersion.V4_2
    assert s.terminals[0].memory == 256 and s.terminals[0].mac is None


def test_nfs_version_as_number(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "x"\nnfs_version = 4.1\n[[terminal]]\nname = "t1"\n')
    assert scenario.load(path).lab.nfs_version is NfsVersion.V4_1


def test_shipped_scenarios_are_valid() -> None:
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        scenario.load(path)
