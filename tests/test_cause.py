"""A failure's cause from both ends: the verdict and what the lab's servers saw (recorded
dnsmasq lines in its real format; tests/test_verdicts.py provokes each for real)."""

from __future__ import annotations

from vlab.watch.cause import Facts, addresses_of, explain, seen_by_servers

MAC = "52:54:00:25:4b:95"
HEARD = (f"Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 DHCPDISCOVER(vlabce6d6dff) {MAC} \n"
         "Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 tags: known, vlabce6d6dff\n")
OFFERED = (f"Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 DHCPOFFER(vlabce6d6dff) "
           f"10.0.0.11 {MAC} \n")


def _facts(**changed: object) -> Facts:
    base = {"export_path": "/var/cache/vlab/roots/busybox", "nfs_clients": ("10.213.1.0/24",),
            "nfs_running": True, "dhcp": True, "dnsmasq_log": HEARD + OFFERED,
            "tftp_dir": "/srv/tftp"}
    return Facts(**{**base, **changed})  # type: ignore[arg-type]


def test_access_denied_names_the_address_and_what_the_export_admits() -> None:
    t = {"mac": MAC, "ip": "10.213.1.10", "line": "mount: ... Permission denied"}
    assert explain("nfs-access-denied", t, _facts(nfs_clients=("10.213.251.0/24",))) == (
        "the NFS server refused 10.213.1.10: the export admits only 10.213.251.0/24")
    assert explain("nfs-access-denied", t, _facts()) is None  # admitted: the servers say nothing


def test_no_such_export_names_what_was_asked_and_what_is_exported() -> None:
    t = {"mac": MAC, "ip": "10.213.1.10", "line": "mount: mounting 10.213.1.2:/srv/nothere on "
         "/newroot failed: No such file or directory"}
    assert explain("nfs-no-such-export", t, _facts()) == (
        "the terminal asked for /srv/nothere; the NFS server exports "
        "/var/cache/vlab/roots/busybox only")


def test_no_dhcp_says_whether_the_server_heard_the_terminal() -> None:
    t = {"mac": MAC, "ip": "", "line": "udhcpc: no lease"}
    assert explain("dhcp-failed", t, _facts(dnsmasq_log="")) == (
        f"DHCP: the lab network's DHCP server never heard a DISCOVER from {MAC} (the request "
        "did not reach it)")
    assert explain("dhcp-failed", t, _facts(dnsmasq_log=HEARD)).startswith(
        f"DHCP DISCOVER from {MAC} seen, no lease offered")
    assert explain("dhcp-failed", t, _facts(dhcp=False)) is None  # another host's network


def test_a_missing_tftp_file_is_named_relative_to_the_tree() -> None:
    log = ("Dec  3 14:20:01 dnsmasq-tftp[4242]: sent /srv/tftp/vmlinuz to 10.213.77.50\n"
           "Dec  3 14:20:02 dnsmasq-tftp[4242]: file /srv/tftp/initrd.img not found for "
           "10.213.77.50\n")
    t = {"mac": MAC, "ip": "10.213.77.50", "line": "Loading initrd.img failed"}
    assert explain("tftp-file-not-found", t, _facts(dnsmasq_log=log)) == (
        "TFTP: initrd.img is not in the tree the lab serves (the server said: not found)")
    assert explain("tftp-file-not-found", {**t, "ip": "10.213.77.51"},
                   _facts(dnsmasq_log=log)) is None  # another machine's request


def test_a_file_the_web_server_has_not_is_named_from_its_log() -> None:
    """lighttpd's access log, as the twins' web server writes it: the terminal's own request
    that got 404 (or 403) is named; another machine's, or a path with quotes and spaces a
    guest chose, never makes the sentence."""
    log = ('10.213.80.50 10.213.80.1 - [06/Dec/2026:23:21:04 +0000] "HEAD /vlab/http/x.img '
           'HTTP/1.1" 404 0 "-" "UefiHttpBoot/1.0"\n'
           '10.213.80.9 10.213.80.1 - [06/Dec/2026:23:21:05 +0000] "GET /vlab/other '
           'HTTP/1.1" 404 0 "-" "iPXE/1.0"\n'
           '10.213.80.50 10.213.80.1 - [06/Dec/2026:23:21:06 +0000] "GET /vlab/a" 404 b" '
           'HTTP/1.1" 400 0 "-" "x"\n')
    t = {"mac": MAC, "ip": "10.213.80.50", "line": "  Client Error: 404 Not Found"}
    assert explain("http-file-not-found", t, _facts(web_log=log)) == (
        "HTTP: /vlab/http/x.img is not in the tree the lab serves (the web server answered 404)")
    assert explain("http-file-not-found", {**t, "ip": "10.213.80.51"},
                   _facts(web_log=log)) is None  # another machine's request
    forbidden = log.replace('HTTP/1.1" 404 0 "-" "Uefi', 'HTTP/1.1" 403 0 "-" "Uefi')
    assert explain("http-file-not-found", t, _facts(web_log=forbidden)) == (
        "HTTP: the web server may not read /vlab/http/x.img (it answered 403: the tree must "
        "be readable by all)")
    assert explain("http-file-not-found", t, _facts()) is None  # no log: nothing to add


def test_a_server_that_is_gone_is_named_and_ok_has_no_cause() -> None:
    t = {"mac": MAC, "ip": "10.213.1.10", "line": "[ OK ] Started Journal Service."}
    assert "nfs-ganesha) is not running" in (explain("stalled", t, _facts(nfs_running=False))
                                             or "")
    assert explain("ok", t, _facts(nfs_running=False)) is None


def test_what_the_servers_saw_of_one_terminal_is_its_dhcp_and_its_tftp() -> None:
    other = "52:54:00:aa:bb:cc"
    log = (f"Dec  3 14:13:39 dnsmasq[32004]: started, version 2.90 cachesize 150\n{HEARD}"
           "Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 vendor class: <evil>\n"
           "Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 requested options: 17:root-path\n"
           f"{OFFERED}"
           "Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 next server: 10.0.0.2\n"
           "Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 sent size: 21 option: 17 "
           "root-path  10.0.0.2:/srv/root\n"
           f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 77 DHCPDISCOVER(vlabce6d6dff) {other} \n"
           "Dec  3 14:13:41 dnsmasq-dhcp[32004]: 77 next server: 10.0.0.2\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: sent /srv/tftp/pxelinux.0 to 10.0.0.11\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: file /srv/tftp/pxelinux.cfg/01-x not found "
           "for 10.0.0.11\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: sent /srv/tftp/pxelinux.0 to 10.0.0.110\n")
    assert seen_by_servers(MAC, "10.0.0.11", log) == (
        f"14:13:40 dhcp: DHCPDISCOVER(vlabce6d6dff) {MAC}",
        f"14:13:40 dhcp: DHCPOFFER(vlabce6d6dff) 10.0.0.11 {MAC}",
        "14:13:40 dhcp: next server: 10.0.0.2",
        "14:13:40 dhcp: sent size: 21 option: 17 root-path  10.0.0.2:/srv/root",
        "14:13:42 tftp: sent /srv/tftp/pxelinux.0 to 10.0.0.11",
        "14:13:42 tftp: file /srv/tftp/pxelinux.cfg/01-x not found for 10.0.0.11")
    assert seen_by_servers(MAC, "", "") == ()


def test_a_twin_without_a_planned_address_is_followed_by_the_lease_dhcp_gave_it() -> None:
    log = (HEARD + OFFERED
           + "Dec  3 14:13:42 dnsmasq-tftp[32004]: sent /srv/tftp/pxelinux.0 to 10.0.0.11\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: sent /srv/tftp/pxelinux.0 to 10.0.0.12\n")
    assert seen_by_servers(MAC, "", log)[-1] == (
        "14:13:42 tftp: sent /srv/tftp/pxelinux.0 to 10.0.0.11")
    assert len(seen_by_servers(MAC, "", log)) == 3  # DISCOVER, OFFER, its TFTP file
    # A guest's vendor class that reads like a lease is not one: only dnsmasq's own line is.
    forged = ("Dec  3 14:13:40 dnsmasq-dhcp[32004]: 3631986009 vendor class: "
              f"DHCPACK(vlabce6d6dff) 10.0.0.12 {MAC}\n")
    assert addresses_of(MAC, "", forged + log) == {"10.0.0.11"}
    assert not any("to 10.0.0.12" in s for s in seen_by_servers(MAC, "", forged + log))


def test_a_twin_without_a_planned_address_is_told_its_own_missing_file() -> None:
    other = "52:54:00:aa:bb:cc"
    log = (HEARD + OFFERED
           + f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 DHCPOFFER(vlabce6d6dff) 10.0.0.12 {other}\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: file /srv/tftp/grubx64.efi not found for "
           "10.0.0.11\n"
           "Dec  3 14:13:43 dnsmasq-tftp[32004]: file /srv/tftp/ipxe.efi not found for "
           "10.0.0.12\n")
    t = {"mac": MAC, "ip": "", "line": "PXE-E32: TFTP open timeout"}
    assert explain("tftp-file-not-found", t, _facts(dnsmasq_log=log)) == (
        "TFTP: grubx64.efi is not in the tree the lab serves (the server said: not found)")
    assert explain("tftp-file-not-found", {**t, "mac": other}, _facts(dnsmasq_log=log)) == (
        "TFTP: ipxe.efi is not in the tree the lab serves (the server said: not found)")


def test_a_guest_cannot_move_lines_between_terminals() -> None:
    """Issue 27: the attacker (another MAC, 10.0.0.12) sends a vendor class carrying the
    victim's MAC and asks TFTP for files whose names end like another peer's line. None of
    it lands in the victim's section or cause: a terminal is found by dnsmasq's own fields
    (the MAC after the message name, the peer after the file name), never by a search over
    text the guest chose."""
    attacker = "52:54:00:aa:bb:cc"
    log = (HEARD + OFFERED
           + f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 DHCPDISCOVER(vlabce6d6dff) {attacker}\n"
           f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 vendor class: {MAC}\n"
           f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 DHCPOFFER(vlabce6d6dff) 10.0.0.12 "
           f"{attacker}\n"
           "Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 next server: 10.6.6.6\n"
           "Dec  3 14:13:42 dnsmasq-tftp[32004]: sent /srv/tftp/evil to 10.0.0.11 to 10.0.0.12\n"
           "Dec  3 14:13:43 dnsmasq-tftp[32004]: file /srv/tftp/lie for 10.0.0.11 not found "
           "for 10.0.0.12\n")
    seen = seen_by_servers(MAC, "10.0.0.11", log)
    assert not any("10.6.6.6" in s or "evil" in s or "lie" in s for s in seen), seen
    assert any("next server: 10.6.6.6" in s for s in seen_by_servers(attacker, "", log))
    t = {"mac": MAC, "ip": "10.0.0.11", "line": "Loading initrd.img... failed"}
    assert explain("tftp-file-not-found", t, _facts(dnsmasq_log=log)) is None
    assert explain("tftp-file-not-found", {**t, "mac": attacker, "ip": ""},
                   _facts(dnsmasq_log=log)) == (
        "TFTP: lie for 10.0.0.11 is not in the tree the lab serves (the server said: "
        "not found)")
    # dhcp-failed's cause reads the MAC's own messages too: the forged vendor class is not
    # the victim's DISCOVER
    quiet = f"Dec  3 14:13:41 dnsmasq-dhcp[32004]: 78 vendor class: DHCPDISCOVER {MAC}\n"
    assert "never heard a DISCOVER" in (explain("dhcp-failed", t, _facts(dnsmasq_log=quiet))
                                        or "")


# dnsmasq's IPv6 lines as it logs them (recorded from the dual-stack site's twins)
V6 = (f"Dec  7 01:39:20 dnsmasq-dhcp[14388]: RTR-SOLICIT(vlabd13ed342) 52:54:00:82:00:02\n"
      "Dec  7 01:39:20 dnsmasq-dhcp[14388]: RTR-ADVERT(vlabd13ed342) fd00:213:52::\n"
      f"Dec  7 01:39:21 dnsmasq-dhcp[14388]: RTR-SOLICIT(vlabd13ed342) {MAC}\n"
      "Dec  7 01:39:21 dnsmasq-dhcp[14388]: RTR-ADVERT(vlabd13ed342) fd00:213:52::\n"
      f"Dec  7 01:38:58 dnsmasq-dhcp[14388]: 2582750 client MAC address: {MAC}\n"
      "Dec  7 01:38:58 dnsmasq-dhcp[14388]: 2582750 DHCPREPLY(vlabd13ed342) fd00:213:52::193 "
      "00:04:83:60:2f:bb:be:dc:e3:4f:97:a7:2b:58:f5:de:a6:21 \n"
      "Dec  7 01:38:58 dnsmasq-dhcp[14388]: 2582750 sent size: 35 option: 59 bootfile-url  "
      "tftp://[fd00:213:52::1]/shimx64.efi\n"
      "Dec  7 01:39:10 dnsmasq-tftp[14388]: sent /srv/tftp/shimx64.efi to fd00:213:52::193\n"
      "Dec  7 01:39:10 dnsmasq-tftp[14388]: sent /srv/tftp/shimx64.efi to fd00:213:52::194\n"
      "Dec  7 01:39:13 dnsmasq-tftp[14388]: file /srv/tftp/grub/grub.cfg-x not found for "
      "fd00:213:52::193\n")


def test_ipv6_router_discovery_and_dhcpv6_are_told_per_terminal() -> None:
    """SLAAC: no router solicitation heard, or one answered; DHCPv6 (whose messages name the
    client by DUID) found by the MAC dnsmasq gives its transaction, and the TFTP files sent to
    the address it leased; never another terminal's."""
    slaac = {"mac": MAC, "ip": "", "line": "VLAB-FAIL dhcp-failed: no IPv6 address on eth0 by "
             "SLAAC in 30 s (no router advertisement with a prefix came)"}
    assert explain("dhcp-failed", slaac, _facts(dnsmasq_log=V6)) == (
        f"IPv6: dnsmasq answered {MAC}'s router solicitation with an advertisement of "
        "fd00:213:52::, and the terminal took no address from it")
    assert explain("dhcp-failed", {**slaac, "mac": "52:54:00:00:00:09"},
                   _facts(dnsmasq_log=V6)).startswith(
        "IPv6: the lab network's router (dnsmasq) never heard a router solicitation from")
    seen = [line.split(" ", 1)[1] for line in seen_by_servers(MAC, "", V6)]
    assert seen == [
        "ra: RTR-SOLICIT(vlabd13ed342) 52:54:00:25:4b:95",
        "ra: RTR-ADVERT(vlabd13ed342) fd00:213:52::",
        "dhcp: DHCPREPLY(vlabd13ed342) fd00:213:52::193 "
        "00:04:83:60:2f:bb:be:dc:e3:4f:97:a7:2b:58:f5:de:a6:21",
        "dhcp: sent size: 35 option: 59 bootfile-url  tftp://[fd00:213:52::1]/shimx64.efi",
        "tftp: sent /srv/tftp/shimx64.efi to fd00:213:52::193",
        "tftp: file /srv/tftp/grub/grub.cfg-x not found for fd00:213:52::193"]
    missing = explain("tftp-file-not-found", {"mac": MAC, "ip": "fd00:213:52::193"},
                      _facts(dnsmasq_log=V6))
    assert missing == "TFTP: grub/grub.cfg-x is not in the tree the lab serves (the server " \
        "said: not found)"


def test_an_ipv6_terminal_is_judged_by_the_ipv6_networks_and_paths() -> None:
    t = {"mac": MAC, "ip": "fd00:213:6b::9", "line": "mount: mounting [fd00:213:6b::2]:/srv/x "
         "on /newroot failed: No such file or directory"}
    assert explain("nfs-no-such-export", t, _facts()) == (
        "the terminal asked for /srv/x; the NFS server exports /var/cache/vlab/roots/busybox only")
    assert explain("nfs-access-denied", t, _facts(nfs_clients=("10.213.1.0/24",))) == (
        "the NFS server refused fd00:213:6b::9: the export admits only 10.213.1.0/24")
    assert explain("nfs-access-denied", t, _facts(
        nfs_clients=("10.213.1.0/24", "fd00:213:6b::/64"))) is None
