"""Rendered artifacts: golden files, schema validation, and libvirt's test driver accepts them."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from conftest import plan_of

from vlab.artifacts import templates
from vlab.artifacts.catalog import all_artifacts
from vlab.scenario.model import InitrdBuilder, RootSource
from vlab.verbs.render import artifacts

SCENARIOS = ["tiny", "e1000", "nfs3", "overlay", "debian-initramfs-tools", "debian-dracut",
             "dhcp-root", "pxe-terminal", "uefi", "xen", "xen-host", "many-hosts", "site",
             "site-uefi", "site-own-server", "site-http", "arm64", "site-arm64", "ipv6",
             "site-ipv6", "dual-stack", "faults"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_artifacts(name: str, golden) -> None:  # type: ignore[no-untyped-def]
    for rel, text in artifacts(plan_of(name)).items():
        golden(f"{name}/{rel}", text)


def test_e1000_sets_the_nic_model() -> None:
    plan = plan_of("e1000")
    assert "<model type='e1000'/>" in templates.domain_xml(plan, plan.terminals[0])


def test_names_are_escaped_in_xml() -> None:
    plan = plan_of("tiny")
    t = plan.terminals[0]
    evil = type(t)(**{**t.__dict__, "cmdline": "a<b & 'c'"})
    xml = templates.domain_xml(plan, evil)
    assert "a&lt;b &amp; &#39;c&#39;" in xml


@pytest.fixture
def test_driver(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh libvirt test driver per test (not the shared test:///default)."""
    node = tmp_path / "node.xml"
    node.write_text("<node/>\n")
    conn = libvirt.open(f"test://{node}")
    yield conn
    conn.close()


@pytest.mark.parametrize("name", SCENARIOS)
def test_libvirt_accepts_every_rendered_domain_and_network(name: str, test_driver) -> None:  # type: ignore[no-untyped-def]
    plan = plan_of(name)
    net = test_driver.networkDefineXML(templates.network_xml(plan))
    assert net.name() == plan.network
    for t in plan.terminals:
        dom = test_driver.defineXML(templates.domain_xml(plan, t))
        assert dom.name() == t.domain
        assert t.mac in dom.XMLDesc()
        dom.undefine()
    net.undefine()
    assert test_driver.listDefinedDomains() == []


@pytest.mark.parametrize(("name", "builder"), [
    ("debian-initramfs-tools", InitrdBuilder.INITRAMFS_TOOLS),
    ("debian-dracut", InitrdBuilder.DRACUT),
])
def test_distro_scenarios_build_their_initrd_with_the_builder_they_name(
        name: str, builder: InitrdBuilder) -> None:
    """The scenarios tests/test_roots.py boots: a Debian root whose own builder runs in it."""
    plan = plan_of(name)
    assert plan.builder is builder and plan.root_source is RootSource.DEBIAN
    assert builder.value in plan.debian_packages
    command = artifacts(plan)["initrd/command"].split()
    assert command[:3] == ["chroot", str(plan.export_path), builder.value.replace(
        "initramfs-tools", "mkinitramfs")]


def test_a_document_that_passed_its_check_is_remembered_and_a_broken_one_still_fails(
        tmp_path: Path) -> None:
    """Rendering is pure (issue 28): the lab's claim step validates, and remembers a passed
    check in the cache folder it is given."""
    from vlab.verbs.claim import validated

    plan = plan_of("tiny")
    files = all_artifacts(plan)
    assert not (tmp_path / "checked").exists()
    validated(files, tmp_path)
    # The lab's network and its two domains, each remembered.
    assert len(list((tmp_path / "checked").iterdir())) == 3
    validated(files, tmp_path)  # answered from the cache
    assert len(list((tmp_path / "checked").iterdir())) == 3
    xml = files["domains/t1.xml"]
    broken = xml.replace("<vcpu>1</vcpu>", "<vcpu>one</vcpu>")
    with pytest.raises(templates.RenderError, match="fails libvirt's domain.rng"):
        validated({"domains/t1.xml": broken}, tmp_path)
    with pytest.raises(templates.RenderError, match="not well-formed"):
        templates.validate(xml.replace("</domain>", ""), "domain")
    assert len(list((tmp_path / "checked").iterdir())) == 3


def test_rendering_reads_no_environment_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28: templates.validate wrote a cache mark under VLAB_CACHE_DIR."""
    plan = plan_of("tiny")
    monkeypatch.setenv("VLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VLAB_STATE_DIR", str(tmp_path / "state"))
    from vlab.verbs.claim import validated

    validated(all_artifacts(plan), None)  # as `vlab render` does
    assert list(tmp_path.iterdir()) == []


def test_nfsv4_0_terminals_get_a_client_block_of_their_own_before_the_read_only_one(
        tmp_path: Path) -> None:
    """ganesha's RO check answers an NFSv4.0 OPEN for writing before its seqid bookkeeping
    (the client then hangs), so terminals that mount v4.0 get RW there, read-only in the
    kernel (vlab/serve/confine.py); every other client keeps RO, whose ACCESS answers say "no
    write" as a site's read-only export does."""
    from conftest import GOLDEN_DIRS

    from vlab import scenario
    from vlab.plan.make import make_plan

    path = tmp_path / "v40.toml"
    path.write_text('[lab]\nname = "v40"\n[[terminal]]\nname = "a"\n'
                    '[[terminal]]\nname = "b"\ncmdline = "rootflags=vers=4.0"\n'
                    '[[terminal]]\nname = "c"\ncmdline = "rootflags=vers=4.1"\n')
    plan = make_plan(scenario.load(path), GOLDEN_DIRS)
    b = next(t for t in plan.terminals if t.name == "b")
    assert plan.nfs40_clients == (b.ip,)
    conf = templates.ganesha_conf(plan)
    rw, ro = conf.index(f"Clients = {b.ip};"), conf.index(f"Clients = {plan.subnet};")
    assert rw < ro  # ganesha takes the first CLIENT block that matches
    assert conf[rw:ro].count("Access_Type = RW;") == 1
    assert conf[ro:].split("}")[0].count("Access_Type = RO;") == 1
    assert templates.ganesha_conf(plan_of("tiny")).count("Access_Type = RW;") == 0
