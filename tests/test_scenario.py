"""Scenario validation: every bad file in tests/bad/ gives exactly the message in its header."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HERE, ROOT

from vlab import scenario
from vlab.cli import main
from vlab.errors import ScenarioError
from vlab.plan.lease import lab_subnet
from vlab.scenario.model import Hypervisor, LabHostMode, NfsVersion

BAD = sorted((HERE / "bad").glob("*.toml"))


def expected(path: Path) -> str:
    lines = [ln[len("# expect: "):] for ln in path.read_text().splitlines()
             if ln.startswith("# expect: ")]
    return "\n".join(lines).replace("{file}", str(path.relative_to(ROOT))).replace(
        "{root}", str(ROOT))


def found_at_up(path: Path) -> bool:
    """Some bad input shows only when vlab looks at the world (a URI that does not answer)."""
    return "# stage: up" in path.read_text().splitlines()


LOADED = [p for p in BAD if not found_at_up(p)]


def test_every_bad_file_expects_one_message_of_its_own() -> None:
    """The corpus is a set of classes: each file says the one line vlab must answer (a key,
    a value, a fix), and no two files expect the same line."""
    headers = {}
    for path in BAD:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("# expect: ")]
        assert len(lines) == 1 and "{file}" in lines[0] and "; fix: " in lines[0], path
        assert lines[0] not in headers, (path, headers.get(lines[0]))
        headers[lines[0]] = path
    assert len(BAD) >= 90


@pytest.mark.parametrize("path", LOADED, ids=[p.stem for p in LOADED])
def test_bad_scenario_message(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(ScenarioError) as err:
        scenario.load(path.relative_to(ROOT))
    assert err.value.message() == expected(path)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_vlab_up_of_a_bad_scenario_exits_2_with_one_line_and_creates_nothing(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VLAB_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(Path("/run/netns").glob("*")) if Path("/run/netns").exists() else []
    assert main(["up", str(path.relative_to(ROOT))]) == 2
    err = capsys.readouterr().err
    assert err == f"vlab: {expected(path)}\n"
    assert "\n" not in err.rstrip("\n") and "; fix: " in err
    assert list(tmp_path.iterdir()) == []
    assert (sorted(Path("/run/netns").glob("*")) if Path("/run/netns").exists() else []) == before


def test_render_of_a_bad_scenario_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["render", str(LOADED[0]), "--out", str(out)]) == 2
    assert not out.exists()


def test_no_subprocess_runs_through_a_shell() -> None:
    """Programs get argument lists, never a shell command line (no quoting bugs, no injection)."""
    offenders = []
    for path in sorted((ROOT / "vlab").rglob("*.py")):
        text = path.read_text()
        for needle in ("shell=True", "os.system(", "os.popen(", "getoutput(", "getstatusoutput("):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []
    run_users = [p.name for p in (ROOT / "vlab").glob("*.py")
                 if "import subprocess" in p.read_text()]
    assert run_users == ["run.py"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        scenario.load(tmp_path / "nope.toml")


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "x"\n[[terminal]]\nname = "t1"\n')
    s = scenario.load(path)
    assert s.lab.hypervisor is Hypervisor.QEMU
    assert s.lab.lab_host is LabHostMode.AUTO
    assert s.lab.nfs_version is NfsVersion.V4_1
    assert s.terminals[0].memory == 256 and s.terminals[0].mac is None


def test_nfs_version_as_number(tmp_path: Path) -> None:
    """A major version may be a TOML integer; a minor one must be a string (issue 27: TOML
    reads 4.10 as the float 4.1, which vlab took for NFSv4.1)."""
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "x"\nnfs_version = 4\n[[terminal]]\nname = "t1"\n')
    assert scenario.load(path).lab.nfs_version is NfsVersion.V4
    for number in ("4.1", "4.10"):
        path.write_text(f'[lab]\nname = "x"\nnfs_version = {number}\n[[terminal]]\nname = "t1"\n')
        with pytest.raises(ScenarioError, match='write the version as a string: nfs_version '
                                                '= "4.1"'):
            scenario.load(path)


def test_shipped_scenarios_are_valid() -> None:
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        scenario.load(path)


def test_no_scenario_lab_picks_the_subnet_another_one_names() -> None:
    """A lab without a subnet takes one derived from its name; were that the subnet another
    scenario names, the two could not be up at once (make test runs labs side by side: a
    lab `nfs3one` took 10.213.79.0/24 and `vlab pxe` of site-own-server.toml was refused)."""
    scenarios = [scenario.load(p) for p in sorted([*(ROOT / "scenarios").glob("*.toml"),
                                                   *(HERE / "scenarios").glob("*.toml")])]
    named = {str(sc.lab.subnet): sc.lab.name for sc in scenarios if sc.lab.subnet is not None}
    derived = {sc.lab.name: str(lab_subnet(sc.lab.name)) for sc in scenarios
               if sc.lab.subnet is None}
    assert not {lab: named[s] for lab, s in derived.items() if s in named}
