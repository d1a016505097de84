"""vlab pxe: the files for physical hosts (golden), the lint, the TFTP tree's bookkeeping, and
the proof: virtual twins PXE-boot through the very files vlab wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from browser import seen
from conftest import GOLDEN_DIRS, ROOT, plan_of
from test_boot import tree_digest, vlab

from vlab import scenario
from vlab.artifacts import pxe_config, templates
from vlab.build import efi
from vlab.errors import ScenarioError, UsageError
from vlab.plan.cmdline import nfs_client_id
from vlab.plan.lab import Dirs
from vlab.plan.make import make_plan
from vlab.plan.site import Site
from vlab.scenario.model import Firmware, Netboot
from vlab.serve import nfsserver, tftp
from vlab.watch.judge import ANSI


def site_of(name: str) -> Site:
    site = plan_of(name).site
    assert site is not None
    return site


@pytest.mark.parametrize("name", ["site", "site-uefi", "site-own-server", "site-http",
                                  "site-arm64", "site-ipv6"])
def test_golden_twin_network_and_domains(golden, name: str) -> None:  # type: ignore[no-untyped-def]
    twins = make_plan(scenario.load(ROOT / "scenarios" / f"{name}.toml"), GOLDEN_DIRS,
                      twins=True)
    golden(f"{name}/check/network.xml", templates.network_xml(twins, Path("/srv/tftp")))
    for t in twins.terminals:
        golden(f"{name}/check/{t.name}.xml", templates.domain_xml(twins, t))


def test_uefi_twins_boot_under_ovmf_and_each_firmware_has_a_default_twin() -> None:
    twins = make_plan(scenario.load(ROOT / "scenarios" / "site-uefi.toml"), GOLDEN_DIRS,
                      twins=True)
    by = {t.name: t for t in twins.terminals}
    assert set(by) == {"pxe-efi1", "pxe-sb1", "pxe-default-uefi", "pxe-default-uefi-secure"}
    assert by["pxe-sb1"].firmware == "uefi-secure" and by["pxe-efi1"].firmware == "uefi"
    secure = templates.domain_xml(twins, by["pxe-sb1"])
    assert "OVMF_CODE_4M.secboot.fd" in secure and "OVMF_VARS_4M.ms.fd" in secure
    assert "<smm state='on'/>" in secure and "machine='q35'" in secure
    plain = templates.domain_xml(twins, by["pxe-efi1"])
    assert "OVMF_CODE_4M.fd" in plain and "<smm" not in plain and "<bios" not in plain
    net = templates.network_xml(twins, Path("/srv/tftp"))
    assert "dhcp-boot=tag:efi-x86_64,shimx64.efi" in net and "<bootp" not in net


def test_arm64_twins_boot_under_aavmf_and_get_the_arm64_loader_by_option_93() -> None:
    """An arm64 site: its twins are aarch64 `virt` machines under AAVMF (Secure Boot by the
    enrolled keys of AAVMF_VARS.ms.fd; no SMM, which is x86's), DHCP hands shimaa64.efi to
    client architecture 11, and the tree has no pxelinux or iPXE file."""
    twins = make_plan(scenario.load(ROOT / "scenarios" / "site-arm64.toml"), GOLDEN_DIRS,
                      twins=True)
    by = {t.name: t for t in twins.terminals}
    assert set(by) == {"pxe-arm1", "pxe-armsb1", "pxe-default-uefi", "pxe-default-uefi-secure"}
    secure = templates.domain_xml(twins, by["pxe-armsb1"])
    assert "arch='aarch64' machine='virt'" in secure and "AAVMF_VARS.ms.fd" in secure
    assert "<smm" not in secure and "cortex-a57" in secure
    assert "AAVMF_VARS.fd" in templates.domain_xml(twins, by["pxe-arm1"])
    net = templates.network_xml(twins, Path("/srv/tftp"))
    assert "option:client-arch,11" in net and "dhcp-boot=tag:efi-arm64,shimaa64.efi" in net
    assert "client-arch,7" not in net and "pxelinux.0" not in net
    files = pxe_config.tree_files(site_of("site-arm64"))
    assert "grub/grub.cfg-01-52-54-00-81-00-01" in files
    assert not [f for f in files if f.startswith("pxelinux.cfg") or f.endswith(".ipxe")]
    assert "console=ttyAMA0" in files["grub/grub.cfg-01-52-54-00-81-00-01"]
    assert "client-arch,11" in files["vlab-site/dnsmasq.conf"]
    assert "option arch = 00:0b" in files["vlab-site/dhcpd.conf"]


def test_grub_reads_its_config_from_the_prefix_built_into_its_image() -> None:
    from vlab.build import efi

    assert efi.loaders().grub_dir == "grub"  # Debian's signed network GRUB: -p /grub
    with pytest.raises(Exception, match="not a PE image"):
        efi.grub_prefix(b"MZ" + b"\0" * 0x3A + b"\x40\0\0\0" + b"XX\0\0" + b"\0" * 64, "x")


def test_grub_files_use_the_commands_debians_grub_has() -> None:
    """`linuxefi`/`initrdefi` are a Fedora patch, not in Debian's (or upstream's) GRUB, whose
    `linux` and `initrd` boot EFI and BIOS both: a config with them stops at "can't find
    command" on every UEFI host."""
    site = site_of("site-uefi")
    texts = [t for rel, t in pxe_config.shared_files(site).items() if rel.startswith("grub/")]
    texts += [t for m in site.machines for rel, t in pxe_config.machine_files(m, "grub").items()
              if rel.startswith("grub/")]
    assert texts
    for text in texts:
        words = {line.split()[0] for line in text.splitlines() if line.strip()}
        assert not words & {"linuxefi", "initrdefi", "linux16", "initrd16"}, text
        assert "linux" in text and "initrd" in text


def test_a_secure_boot_host_with_an_unsigned_kernel_is_refused_before_writing(
        tmp_path: Path) -> None:
    """Lint: shim starts no unsigned kernel under Secure Boot (the boot test provokes the
    refusal itself); Debian's signed PE images pass, the same image unsigned does not."""
    from vlab.build import efi

    signed = efi.LOADERS[efi.SHIM][0]
    _unsigned(signed, tmp_path / "unsigned")
    unsigned = (tmp_path / "unsigned").read_bytes()
    assert efi.signed(signed.read_bytes()) and not efi.signed(unsigned)
    assert not efi.signed(b"MZ" + b"\0" * 200) and not efi.signed(b"")
    s = scenario.load(ROOT / "scenarios" / "site-uefi.toml")
    site = site_of("site-uefi")
    pxe_config.refuse_unsigned_kernel(s.path, site, signed.read_bytes(), "6.1.0-1-amd64")
    with pytest.raises(ScenarioError) as err:
        pxe_config.refuse_unsigned_kernel(s.path, site, unsigned, "6.1.0-1-amd64")
    assert str(err.value).startswith(f"{s.path}: machine[1].firmware: Secure Boot for sb1, but "
                                     "the kernel (6.1.0-1-amd64) carries no signature")
    assert 'firmware = "uefi"' in str(err.value)
    plain = scenario.load(ROOT / "scenarios" / "site.toml")  # no Secure Boot host: fine
    pxe_config.refuse_unsigned_kernel(plain.path, site_of("site"), unsigned, "6.1.0-1-amd64")


def test_a_secure_boot_host_is_not_handed_an_unsigned_ipxe(tmp_path: Path) -> None:
    """Lint: OVMF with Secure Boot refuses Debian's iPXE ("Access Denied", HOST-NOTES): a
    uefi-secure host with netboot = "ipxe" is named before anything is written; the others
    (BIOS and UEFI iPXE hosts) are fine with it."""
    snponly = tftp.IPXE[Firmware.UEFI_SECURE][1].read_bytes()
    assert not efi.signed(snponly)
    pxe_config.refuse_unsigned_ipxe(ROOT / "scenarios/site-http.toml", site_of("site-http"),
                                    snponly)
    path = _scenario(tmp_path, '[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\n'
                               'firmware = "uefi-secure"\nnetboot = "ipxe"\n')
    site = make_plan(scenario.load(path), Dirs(tmp_path, tmp_path)).site
    assert site is not None
    with pytest.raises(ScenarioError) as err:
        pxe_config.refuse_unsigned_ipxe(path, site, snponly)
    assert str(err.value).startswith(f"{path}: machine[0].netboot: Secure Boot for a, but "
                                     "iPXE (/usr/lib/ipxe/snponly.efi) carries no signature, "
                                     "and their firmware starts no unsigned loader"), err.value
    out = tmp_path / "tftp"
    proc = vlab("pxe", str(path), "--tftp-dir", str(out))
    assert proc.returncode == 2 and "machine[0].netboot" in proc.stderr and not out.exists()


def test_the_http_boot_image_holds_debians_signed_loaders_the_hosts_config_kernel_and_initrd(
        tmp_path: Path) -> None:
    """The RAM disk image UEFI HTTP boot loads: shim as the removable-media loader, the
    signed monolithic GRUB beside it, the host's grub.cfg where that GRUB reads it (its
    built-in prefix), the kernel and initrd at the paths grub.cfg names; built once."""
    from vlab.build import httpboot

    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 1000)
    m = site_of("site-http").by(Netboot.HTTP)[0]
    cfg = pxe_config.grub_config(m)
    assert "linux /vmlinuz " in cfg and "initrd /initrd.img" in cfg and "vlab.pxe=http1" in cfg
    made = httpboot.image(tmp_path / "cache", cfg, kernel, initrd)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def read(rel: str) -> bytes:
        return subprocess.run(["mtype", "-i", str(made), f"::/{rel}"], env=env, check=True,
                              capture_output=True).stdout

    assert read("EFI/BOOT/BOOTX64.EFI") == efi.LOADERS[efi.SHIM][0].read_bytes()
    assert read("EFI/BOOT/grubx64.efi") == httpboot.GRUB[0].read_bytes()
    assert efi.grub_prefix(httpboot.GRUB[0].read_bytes(), "grub") == "EFI/debian"
    assert read("EFI/debian/grub.cfg").decode() == cfg
    assert read("vmlinuz") == kernel.read_bytes() and read("initrd.img") == initrd.read_bytes()
    stamp = made.stat().st_mtime_ns
    assert httpboot.image(tmp_path / "cache", cfg, kernel, initrd) == made
    assert made.stat().st_mtime_ns == stamp
    other = httpboot.image(tmp_path / "cache", cfg.replace("http1", "http2"), kernel, initrd)
    assert other != made and sorted(p.name for p in (tmp_path / "cache/httpboot").iterdir()) \
        == sorted([made.name, other.name])  # nothing half-built left


@pytest.mark.parametrize("name", ["site", "site-uefi", "site-own-server", "site-http",
                                  "site-arm64"])
def test_the_dhcp_snippets_are_what_dhcpd_and_dnsmasq_take(tmp_path: Path, name: str) -> None:
    """The snippets as the site's servers read them: ISC dhcpd's own check (`dhcpd -t`, the
    snippet in a subnet declaration as a site has) and dnsmasq's (`--test`). The twins prove
    the dnsmasq lines' meaning with the lab's dnsmasq; these prove both files parse."""
    files = pxe_config.shared_files(site_of(name))
    conf = tmp_path / "dhcpd.conf"
    conf.write_text("subnet 10.0.0.0 netmask 255.0.0.0 { range 10.0.0.100 10.0.0.200; }\n"
                    + files["vlab-site/dhcpd.conf"])
    checked = subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr
    broken = conf.read_text().replace("filename", "filenam", 1)
    conf.write_text(broken)  # the check can fail
    assert subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True,
                          timeout=30).returncode != 0
    snippet = tmp_path / "dnsmasq.conf"
    snippet.write_text(files["vlab-site/dnsmasq.conf"])
    checked = subprocess.run(["dnsmasq", "--test", "--conf-file=" + str(snippet)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "syntax check OK" in checked.stderr, checked.stderr


def test_mac_and_hex_ip_file_names_as_the_page_and_pxelinux_want() -> None:
    pc1, pc2 = site_of("site").machines
    assert pc1.pxelinux_name == "01-52-54-00-77-00-01"
    assert pc1.hexip_name == "0AD54D32"  # 10.213.77.50
    assert pc2.hexip_name is None
    assert "loglevel=4" in pc2.append.split() and pc2.append.startswith("initrd=initrd.img ")
    assert "vlab.pxe=pc2" in pc2.append.split()


def _scenario(tmp_path: Path, hosts: str, extra: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'[lab]\nname = "lint"\n{extra}{hosts}')
    return path


@pytest.mark.parametrize(("hosts", "message"), [
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:zz"\n', "is not a MAC address"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\n[[machine]]\nname = "b"\n'
     'mac = "00:11:22:33:44:55"\n', "is also the MAC of machine[0]"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\nip = "10.0.0.5"\n[[machine]]\n'
     'name = "b"\nmac = "00:11:22:33:44:56"\nip = "10.0.0.5"\n',
     "10.0.0.5 is also the address of machine[0]"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\n[[machine]]\nname = "a"\n'
     'mac = "00:11:22:33:44:56"\n', "'a' is also the name of machine[0]"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\nexport = "nfsserver:/srv/root"\n',
     "the server 'nfsserver' is a name"),
    ('[[machine]]\nname = "../../etc/passwd"\nmac = "00:11:22:33:44:55"\n', "is not a valid name"),
    ('[[machine]]\nname = "a"\n', "machine[0].mac: is missing"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\nnetboot = "http"\n',
     "machine[0].netboot: HTTP boot is UEFI's"),
    ('[pxe]\nnetboot = "http"\n[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\n'
     'firmware = "bios"\n', "machine[0].firmware: HTTP boot is UEFI's"),
    ('[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\nnetboot = "nfs"\n',
     "machine[0].netboot: 'nfs' is not supported"),
    ('[pxe]\nhttp_url = "https://10.0.0.5/x/"\n', "pxe.http_url: 'https://10.0.0.5/x/' is not"),
    ('[pxe]\nhttp_url = "http://10.0.0.5/a b,c"\n', "pxe.http_url: 'http://10.0.0.5/a b,c'"),
])
def test_lint_errors(tmp_path: Path, hosts: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace(".", r"\.")):
        scenario.load(_scenario(tmp_path, hosts))


def test_command_line_longer_than_linux_takes_is_refused_before_writing(tmp_path: Path) -> None:
    long = " ".join(f"x{i}=y" for i in range(600))
    path = _scenario(tmp_path, f'[[machine]]\nname = "a"\nmac = "00:11:22:33:44:55"\n'
                               f'cmdline = "{long}"\n')
    s = scenario.load(path)
    with pytest.raises(ScenarioError, match="Linux takes at most 2047"):
        make_plan(s, Dirs(tmp_path, tmp_path))
    out = tmp_path / "tftp"
    proc = vlab("pxe", str(path), "--tftp-dir", str(out))
    assert proc.returncode == 2 and "2047" in proc.stderr and not out.exists()


def test_tree_is_written_once_and_hosts_that_leave_are_removed(tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel")
    root = tmp_path / "tftp"
    first = tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n", "pxelinux.cfg/01-bb": "b\n"},
                            {"vmlinuz": kernel})
    assert sorted(first.written) == ["pxelinux.cfg/01-aa", "pxelinux.cfg/01-bb", "vmlinuz"]
    (root / "mine.txt").write_text("not vlab's")
    again = tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n", "pxelinux.cfg/01-bb": "b\n"},
                            {"vmlinuz": kernel})
    assert again.written == [] and again.unchanged == 3
    changed = tftp.write_tree(root, {"pxelinux.cfg/01-aa": "A\n"}, {"vmlinuz": kernel})
    assert changed.written == ["pxelinux.cfg/01-aa"] and changed.removed == ["pxelinux.cfg/01-bb"]
    assert not (root / "pxelinux.cfg/01-bb").exists()
    assert (root / "mine.txt").read_text() == "not vlab's"
    assert (root / "pxelinux.cfg/01-aa").stat().st_mode & 0o777 == 0o644
    assert not list(root.rglob(".*vlab-tmp"))


@pytest.mark.boot
def test_virtual_twins_pxe_boot_through_the_written_tree(lab_down, browser) -> None:  # type: ignore[no-untyped-def]
    lab_down.append("scenarios/site.toml")
    tftp_dir = Path("/var/lib/vlab/test-tftp/site")
    proc = vlab("pxe", "scenarios/site.toml", "--tftp-dir", str(tftp_dir), "--twins",
                "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    twins = {t["name"]: t for t in rep["twins"]["terminals"]}
    assert set(twins) == {"pxe-pc1", "pxe-pc2", "pxe-default"}
    # The twins boot through up's own sequence: their lab got its firewall rule (issue 28).
    assert rep["twins"]["firewall"] == "in place", rep["twins"]
    for t in twins.values():
        assert t["verdict"] == "ok", t
        assert t["proof"]["fstype"] == "nfs4"
        # Each names itself to the NFSv4 server by its MAC (pxe-pc2 and pxe-default get no
        # host name by DHCP: by name alone both were "(none)", one client to the server).
        assert t["proof"]["client"].startswith(nfs_client_id(t["mac"]) + "/"), t["proof"]
    log1 = console_text(twins["pxe-pc1"]["console_log"])
    log2 = console_text(twins["pxe-pc2"]["console_log"])
    assert "vlab.pxe=pc1" in log1 and "vlab.pxe=pc2 loglevel=4" in log2
    assert "Filename: pxelinux.0" in log1 and "PXELINUX" in log1
    assert twins["pxe-pc1"]["proof"]["options"].count("clientaddr=10.213.77.50") == 1
    assert "loglevel=4" in Path(tftp_dir / "pxelinux.cfg/01-52-54-00-77-00-02").read_text()
    assert log2
    # The twin whose MAC has no file of its own booted through pxelinux.cfg/default, and
    # the lab's TFTP server saw it so: its own file asked for, not found, default sent.
    assert twins_default_ok(rep)
    heard = twins["pxe-default"]["seen"]
    own = "pxelinux.cfg/01-" + twins["pxe-default"]["mac"].replace(":", "-")
    assert any(own in s and "not found for" in s for s in heard), heard
    assert any("tftp: sent" in s and "/pxelinux.cfg/default to " in s for s in heard), heard
    # The check's boot report shows where a PXE boot's time goes: firmware, then the loader.
    dom = seen(rep["twins"], "pxe-twins", browser)
    assert dom.count('data-phase="loader"') == 3, dom[:2000]

    # A broken tree (the initrd removed): a clear verdict, long before the timeout.
    (tftp_dir / "initrd.img").unlink()
    proc = vlab("pxe", "scenarios/site.toml", "--tftp-dir", str(tftp_dir), "--twins-only",
                "--json")
    assert proc.returncode == 1, proc.stderr
    broken = json.loads(proc.stdout)["twins"]
    seen(broken, "pxe-twins-initrd-missing", browser)
    for t in broken["terminals"]:
        assert t["verdict"] == "tftp-file-not-found", t
        assert t["seconds"] < 60
        # What the TFTP server said, joined by the twin's address.
        assert t["cause"] == ("TFTP: initrd.img is not in the tree the lab serves (the server "
                              "said: not found)"), t


@pytest.mark.boot
def test_twins_of_a_site_with_its_own_nfs_server_mount_what_the_files_name(lab_down) -> None:  # type: ignore[no-untyped-def]
    """[pxe] nfs_server: the files name the site's server, the twins boot those very files,
    and in the lab vlab's own server answers at that address: the proof names it."""
    path = "scenarios/site-own-server.toml"
    lab_down.append(path)
    tftp_dir = Path("/var/lib/vlab/test-tftp/site-own-server")
    shutil.rmtree(tftp_dir, ignore_errors=True)
    proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "vlab's own server answers at 10.0.0.5" in proc.stderr, proc.stderr
    assert "root=10.0.0.5:" in (tftp_dir / "pxelinux.cfg/01-52-54-00-79-00-01").read_text()
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert set(twins) == {"pxe-pc1", "pxe-default"}
    for t in twins.values():
        assert t["verdict"] == "ok", t
        assert t["proof"]["server"] == "10.0.0.5" and "addr=10.0.0.5" in t["proof"]["options"]
    assert not [ns for ns in nfsserver.namespaces() if ns.endswith("-siteown")]


def _unsigned(kernel: Path, out: Path) -> None:
    """The kernel with its Authenticode signature taken off (the PE certificate table entry
    zeroed): the same kernel, signed by nobody."""
    data = bytearray(kernel.read_bytes())
    pe = int.from_bytes(data[0x3C:0x40], "little")
    assert data[pe:pe + 4] == b"PE\0\0" and data[pe + 24:pe + 26] == b"\x0b\x02"  # PE32+
    entry = pe + 24 + 112 + 4 * 8  # data directory 4: the certificate table
    assert int.from_bytes(data[entry + 4:entry + 8], "little") > 0, "the kernel is not signed"
    data[entry:entry + 8] = bytes(8)
    out.write_bytes(bytes(data))


@pytest.mark.boot
def test_uefi_and_secure_boot_twins_boot_through_shim_and_grub(lab_down) -> None:  # type: ignore[no-untyped-def]
    """OVMF -> Debian's signed shim -> signed network GRUB -> the host's grub.cfg-01-<mac> (or
    the default in grub/grub.cfg) -> Debian's signed kernel -> initrd -> NFS root, on each
    twin's serial console; with Secure Boot enforced, an unsigned kernel is refused."""
    path = "scenarios/site-uefi.toml"
    lab_down.append(path)
    tftp_dir = Path("/var/lib/vlab/test-tftp/site-uefi")
    # A GRUB configuration of the site's own where vlab would write its own: refused, and
    # the check that would have followed leaves nothing recorded (a second try is not
    # refused as "a lab that is up").
    shutil.rmtree(tftp_dir, ignore_errors=True)
    (tftp_dir / "grub").mkdir(parents=True)
    (tftp_dir / "grub/grub.cfg").write_text("# the site's own\n")
    refused = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins")
    assert refused.returncode == 2 and "grub/grub.cfg" in refused.stderr, refused.stderr
    assert not (Dirs.from_env().state / "labs/uefisite/state.json").exists()
    (tftp_dir / "grub/grub.cfg").unlink()
    proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert set(twins) == {"pxe-efi1", "pxe-sb1", "pxe-default-uefi", "pxe-default-uefi-secure"}
    for name, t in twins.items():
        assert t["verdict"] == "ok", t
        log = Path(t["console_log"]).read_text(errors="replace")
        host = name.removeprefix("pxe-")
        assert f"vlab.pxe={'default' if host.startswith('default') else host}" in log, log[-3000:]
    assert (tftp_dir / "shimx64.efi").is_file() and (tftp_dir / "grubx64.efi").is_file()

    # The same tree with an unsigned kernel: Secure Boot twins are refused by name (so it was
    # enforced), the others boot it.
    twins_of_an_unsigned_kernel(path, tftp_dir, ("pxe-sb1", "pxe-default-uefi-secure"),
                                ("pxe-efi1", "pxe-default-uefi"))


def twins_of_an_unsigned_kernel(path: str, tftp_dir: Path, refused: tuple[str, ...],
                                booted: tuple[str, ...]) -> None:
    """The twins again through the tree as written but for its kernel, whose signature is
    taken off for the run: the Secure Boot twins `refused` by name, the others `booted`."""
    kernel = tftp_dir / "vmlinuz"
    signed = kernel.read_bytes()
    _unsigned(kernel, kernel)
    try:
        proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins-only", "--json",
                    timeout=900)
    finally:
        kernel.write_bytes(signed)
    assert proc.returncode == 1, proc.stderr
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    for name in refused:
        assert twins[name]["verdict"] == "secure-boot-refused", twins[name]
    for name in booted:
        assert twins[name]["verdict"] == "ok", twins[name]


@pytest.mark.boot
def test_http_boot_and_ipxe_twins_fetch_over_http_from_a_real_web_server(lab_down) -> None:  # type: ignore[no-untyped-def]
    """UEFI HTTP boot (OVMF, with and without Secure Boot): DHCP's HTTPClient answer -> the
    host's RAM disk image over HTTP -> Debian's signed shim, GRUB and kernel from it -> NFS
    root; iPXE: BIOS (the NIC's iPXE) and UEFI (OVMF's PXE -> snponly.efi over TFTP) -> the
    host's script, kernel and initrd over HTTP. All served by the lab's lighttpd through the
    snippet vlab wrote for the site's; with an unsigned kernel in the image, Secure Boot
    refuses it."""
    path = "scenarios/site-http.toml"
    lab_down.append(path)
    tftp_dir = Path("/var/lib/vlab/test-tftp/site-http")
    shutil.rmtree(tftp_dir, ignore_errors=True)
    proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert set(twins) == {"pxe-http1", "pxe-httpsb1", "pxe-ipxe1", "pxe-ipxeefi1"}
    planned = make_plan(scenario.load(ROOT / path), GOLDEN_DIRS, twins=True).terminals
    mac = {t.name: t.mac.replace(":", "-") for t in planned}
    console = {name: console_text(t["console_log"]) for name, t in twins.items()}
    for name, t in twins.items():
        assert t["verdict"] == "ok", t
        assert f"vlab.pxe={name.removeprefix('pxe-')}" in console[name], console[name][-3000:]
    for name in ("pxe-http1", "pxe-httpsb1"):
        assert "Start HTTP Boot over IPv4" in console[name]
        assert f"URI: http://10.213.80.1/vlab/http/{mac[name]}.img" in console[name]
    assert "vlab: iPXE i386/pcbios on 52:54:00:80:00:03" in console["pxe-ipxe1"]
    assert "vlab: iPXE x86_64/efi on 52:54:00:80:00:04" in console["pxe-ipxeefi1"]
    logs = Path(twins["pxe-http1"]["console_log"]).parent
    # The firmware's PXE got snponly.efi over TFTP; everything else came over HTTP.
    assert re.search(r"dnsmasq-tftp\[\d+\]: sent \S*/snponly\.efi to ",
                     (logs / "dnsmasq.log").read_text()), "snponly.efi was not sent"
    served = (logs / "web-access.log").read_text()
    for name in ("pxe-http1", "pxe-httpsb1"):
        assert f'"GET /vlab/http/{mac[name]}.img HTTP/1.1" 200 ' in served, served
    for name in ("pxe-ipxe1", "pxe-ipxeefi1"):
        for rel in (f"{mac[name]}.ipxe", "vmlinuz", "initrd.img"):
            assert f'"GET /vlab/{rel} HTTP/1.1" 200 ' in served, (rel, served)
    assert (tftp_dir / "vlab-site/lighttpd.conf").is_file()

    # Each failure by name, in one more boot of the same tree: the Secure Boot twin's image
    # with the kernel's signature taken off (so Secure Boot was enforced on the image's
    # kernel), the other HTTP boot twin's image and the BIOS iPXE twin's script gone (the
    # web server answers 404, and the cause says which file); the UEFI iPXE twin boots.
    image = tftp_dir / f"http/{mac['pxe-httpsb1']}.img"
    script = tftp_dir / f"{mac['pxe-ipxe1']}.ipxe"
    gone = tftp_dir / f"http/{mac['pxe-http1']}.img"
    kept = tftp_dir.parent / "kept"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir()
    _unsigned(tftp_dir / "vmlinuz", kept / "vmlinuz.unsigned")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    try:
        for f in (image, script, gone):
            shutil.copyfile(f, kept / f.name)
        subprocess.run(["mcopy", "-o", "-i", str(image), str(kept / "vmlinuz.unsigned"),
                        "::/vmlinuz"], env=env, check=True)
        script.unlink()
        gone.unlink()
        proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins-only", "--json",
                    timeout=900)
    finally:
        for f in (image, script, gone):
            shutil.copyfile(kept / f.name, f)
        shutil.rmtree(kept)
    assert proc.returncode == 1, proc.stderr
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert twins["pxe-httpsb1"]["verdict"] == "secure-boot-refused", twins["pxe-httpsb1"]
    assert twins["pxe-ipxeefi1"]["verdict"] == "ok", twins["pxe-ipxeefi1"]
    for name, rel in (("pxe-http1", f"http/{mac['pxe-http1']}.img"),
                      ("pxe-ipxe1", f"{mac['pxe-ipxe1']}.ipxe")):
        t = twins[name]
        assert t["verdict"] == "http-file-not-found", t
        assert t["cause"] == (f"HTTP: /vlab/{rel} is not in the tree the lab serves (the web "
                              "server answered 404)"), t
        assert t["seconds"] < 60, t  # at the 404, not at the timeout


def twins_default_ok(rep: dict) -> bool:  # type: ignore[type-arg]
    (t,) = [t for t in rep["twins"]["terminals"] if t["name"] == "pxe-default"]
    return t["verdict"] == "ok" and "vlab.pxe=default" in console_text(t["console_log"])


def console_text(path: str) -> str:
    """A console log as the judge reads it: the firmware's cursor escapes out (SeaBIOS's
    serial console once cut PXELINUX's banner as "PXELIN\\x1b[25;06H...UX")."""
    return ANSI.sub("", Path(path).read_text(errors="replace"))


@pytest.mark.boot
def test_a_terminal_with_boot_pxe_reaches_the_same_verdict(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "scenarios/pxe-terminal.toml"
    lab_down.append(path)
    proc = vlab("up", path, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    t1, t2 = json.loads(proc.stdout)["terminals"]
    assert t1["verdict"] == t2["verdict"] == "ok"
    assert t1["proof"]["export"] == t2["proof"]["export"]
    log2 = console_text(t2["console_log"])
    assert "PXELINUX" in log2 and "vlab.pxe=t2" in log2
    assert "PXELINUX" not in console_text(t1["console_log"])
    # The PXE-booted terminal got the lab's SSH key through its pxelinux file too.
    for name in ("t1", "t2"):
        ran = vlab("ssh", path, name, "--", "hostname", timeout=60)
        assert ran.returncode == 0 and ran.stdout.strip() == name, ran.stderr


@pytest.mark.boot
def test_uefi_terminals_boot_their_kernel_directly_and_through_shim(lab_down) -> None:  # type: ignore[no-untyped-def]
    """[[terminal]] firmware: t1 under OVMF starts its kernel directly (the bzImage's EFI
    stub), t2 PXE-boots with Secure Boot enforced, through shim and GRUB and its own
    grub.cfg-01-<mac> in the lab's TFTP tree, to the same verdict."""
    path = "scenarios/uefi.toml"
    lab_down.append(path)
    proc = vlab("up", path, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    t1, t2 = json.loads(proc.stdout)["terminals"]
    assert t1["verdict"] == t2["verdict"] == "ok", (t1, t2)
    log1 = Path(t1["console_log"]).read_text(errors="replace")
    log2 = Path(t2["console_log"]).read_text(errors="replace")
    assert "GRUB" not in log1 and "vlab.pxe=t2" in log2 and "PXELINUX" not in log2

    def dmesg(name: str) -> str:  # the kernel's own word on its firmware (and the SSH key)
        ran = vlab("ssh", path, name, "--", "dmesg", timeout=60)
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    k1, k2 = dmesg("t1"), dmesg("t2")
    assert re.search(r"efi: EFI v\S+ by EDK II", k1) and "Secure boot disabled" in k1, k1[:3000]
    assert re.search(r"efi: EFI v\S+ by EDK II", k2) and "Secure boot enabled" in k2, k2[:3000]
    assert vlab("down", path, timeout=120).returncode == 0
    assert not (Dirs.from_env().state / "labs/uefi/nvram").exists()


# An operator's TFTP tree: files vlab did not write are not vlab's.

def _kernel(tmp_path: Path) -> Path:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"kernel")
    return kernel


def test_an_operators_files_are_never_replaced_and_nothing_is_written(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    (root / "pxelinux.cfg").mkdir(parents=True)
    (root / "pxelinux.0").write_bytes(b"the operator's own loader")
    (root / "pxelinux.cfg/default").write_text("DEFAULT local\n")
    before = tree_digest(root)
    with pytest.raises(UsageError, match="pxelinux.0.*pxelinux.cfg/default: vlab did not write"):
        tftp.write_tree(root, {"pxelinux.cfg/default": "vlab\n", "pxelinux.cfg/01-aa": "a\n"},
                        {"pxelinux.0": _kernel(tmp_path)})
    assert tree_digest(root) == before  # not even the new host's file, nor a manifest


def test_a_tree_on_a_file_system_without_unnamed_files_is_written_through_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O_TMPFILE (a file that gets its name only once whole) is not on every file system (an
    NFS-mounted TFTP root): there vlab writes a temporary name and renames it."""
    import errno
    import os

    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    root = tmp_path / "tftp"
    tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {"vmlinuz": _kernel(tmp_path)})
    tftp.write_tree(root, {"pxelinux.cfg/01-aa": "b\n"}, {"vmlinuz": _kernel(tmp_path)})
    assert (root / "pxelinux.cfg/01-aa").read_text() == "b\n"
    assert (root / "pxelinux.cfg/01-aa").stat().st_mode & 0o777 == 0o644
    assert not list(root.rglob("*.vlab-tmp"))


def test_folder_modes_the_operator_set_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    (root / "pxelinux.cfg").mkdir(parents=True)
    root.chmod(0o2775)
    (root / "pxelinux.cfg").chmod(0o750)
    tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n", "new/x": "x\n"}, {})
    assert root.stat().st_mode & 0o7777 == 0o2775
    assert (root / "pxelinux.cfg").stat().st_mode & 0o7777 == 0o750
    assert (root / "new").stat().st_mode & 0o7777 == 0o755


def test_a_file_changed_since_vlab_wrote_it_stays_when_its_host_leaves(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n", "pxelinux.cfg/01-bb": "b\n"}, {})
    (root / "pxelinux.cfg/01-bb").write_text("the operator's now\n")
    changes = tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {})
    assert changes.removed == []
    assert (root / "pxelinux.cfg/01-bb").read_text() == "the operator's now\n"
    with pytest.raises(UsageError, match="01-bb: vlab did not write"):
        tftp.write_tree(root, {"pxelinux.cfg/01-bb": "b\n"}, {})


def test_planted_links_are_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "pxelinux.cfg").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="pxelinux.cfg is not a folder"):
        tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {})
    assert list(elsewhere.iterdir()) == []
    (root / "pxelinux.cfg").unlink()
    (root / "pxelinux.cfg").mkdir()
    (root / "pxelinux.cfg/.01-aa.vlab-tmp").symlink_to(victim)  # the temporary file's name
    tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {})
    assert victim.read_text() == "precious\n"
    assert (root / "pxelinux.cfg/01-aa").read_text() == "a\n"


@pytest.mark.parametrize("manifest", [
    '{"files": {"../victim": "x"}, "groups": {}}',
    '{"files": {"/etc/hostname": "x"}, "groups": {}}',
    '{"files": {"a": "x"}, "groups": {"h": ["k", ["../../victim"]]}}',
    '{"files": [], "groups": {}}', "not json", '{"files": {}}',
])
def test_a_manifest_vlab_cannot_trust_is_named_and_nothing_is_removed(
        tmp_path: Path, manifest: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    root = tmp_path / "tftp"
    root.mkdir()
    (root / tftp.MANIFEST).write_text(manifest)
    with pytest.raises(UsageError, match="is not a manifest vlab can trust"):
        tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {})
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in root.iterdir()) == [tftp.MANIFEST]


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero"])
def test_a_manifest_that_is_a_fifo_or_a_device_link_is_named_not_read(
        tmp_path: Path, kind: str) -> None:
    """Issue 27, finding 10: a FIFO named like the manifest hung `vlab pxe`; a link to
    /dev/zero would read without end. Neither is opened for reading."""
    root = tmp_path / "tftp"
    root.mkdir()
    if kind == "fifo":
        os.mkfifo(root / tftp.MANIFEST)
    else:
        (root / tftp.MANIFEST).symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="is not a manifest vlab can trust"):
        tftp.write_tree(root, {"pxelinux.cfg/01-aa": "a\n"}, {})
    assert sorted(p.name for p in root.iterdir()) == [tftp.MANIFEST]
