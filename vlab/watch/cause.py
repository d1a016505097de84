"""A failed boot's cause in one sentence, when the two ends of the wire say it together: the
terminal's verdict and what the lab's servers saw (the network's dnsmasq log for DHCP and
TFTP, whether nfs-ganesha still runs, what its export admits). Pure: facts in, a sentence
out (or None when the servers say nothing the verdict does not)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from vlab.watch.guesttext import pattern

# The console's and dnsmasq's text is guest-influenced (a TFTP file name, a vendor class, a
# host name): matched in linear time, and a terminal is found by dnsmasq's own fields only,
# never by a search over text the guest chose.
MOUNTING_RE = pattern(r"mount(?:ing)? (?:of )?(?:nfs4?:)?(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:]+\]):"
                      r"(/\S*)")
# dnsmasq's "file NAME not found[ for PEER]": the peer is its last field, after a name the
# guest chose (which may hold spaces and "for")
TFTP_MISSING_RE = pattern(r"^file (.+) not found"
                          r"(?: for (\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+))?$")


@dataclass(frozen=True)
class Facts:
    """What the lab's own side knows and saw during the boot."""

    export_path: str
    nfs_clients: tuple[str, ...]  # the networks the export admits
    nfs_running: bool  # the lab's nfs-ganesha still runs
    dhcp: bool  # the lab network's dnsmasq serves the terminal (not another host's network)
    dnsmasq_log: str  # what its dnsmasq logged ("" if nothing)
    tftp_dir: str = ""  # the tree the network serves, if any
    web_log: str = ""  # what the twins' web server logged of each request ("" if none)


def _admitted(ip: str, clients: tuple[str, ...]) -> bool:
    try:
        return any(ipaddress.ip_address(ip) in ipaddress.ip_network(c) for c in clients)
    except ValueError:
        return True  # not an address vlab can judge: say nothing about it


def _dhcp(mac: str, log: str) -> list[str]:
    """dnsmasq's DHCP messages about one MAC: those whose own MAC field is it."""
    return [m.group(3) for m in map(DNSMASQ_LINE_RE.match, log.splitlines())
            if m is not None and m.group(2) == "dnsmasq-dhcp" and _about(mac, m.group(3))]


def _about(mac: str, text: str) -> bool:
    """A dnsmasq-dhcp message ("[XID ]DHCPxxx(BRIDGE) [ADDRESS ]MAC ...") is about `mac`."""
    m = MESSAGE_MAC_RE.match(text)
    return m is not None and bool(mac) and m.group(1).lower() == mac.lower()


def _solicited(mac: str, log: str) -> list[str]:
    """The prefixes dnsmasq advertised in answer to `mac`'s router solicitations (each
    RTR-SOLICIT line names the MAC; the RTR-ADVERT after it, the prefix)."""
    out = []
    asked = False
    for m in map(DNSMASQ_LINE_RE.match, log.splitlines()):
        if m is None or m.group(2) != "dnsmasq-dhcp":
            continue
        if (r := ROUTER_RE.match(m.group(3))) is not None:
            if r.group(1) == "SOLICIT":
                asked = bool(mac) and r.group(2).lower() == mac.lower()
            elif asked:
                out.append(r.group(2))
                asked = False
    return out


def _tftp_missing(log: str) -> list[tuple[str, str]]:
    """(file, peer) of each TFTP file dnsmasq did not find ("" when it names no peer)."""
    out = []
    for m in map(DNSMASQ_LINE_RE.match, log.splitlines()):
        if m is not None and m.group(2) == "dnsmasq-tftp" and (
                f := TFTP_MISSING_RE.match(m.group(3))) is not None:
            out.append((f.group(1), f.group(2) or ""))
    return out


def explain(verdict: str, terminal: Mapping[str, object], facts: Facts) -> str | None:
    mac = str(terminal.get("mac") or "")
    ip = str(terminal.get("ip") or "")
    line = str(terminal.get("line") or "")
    if verdict in ("ok", None):
        return None
    if not facts.nfs_running and verdict in ("stalled", "nfs-unreachable", "timeout"):
        return ("the lab's NFS server (nfs-ganesha) is not running: it stopped while the "
                "terminal booted, so its NFS requests go unanswered")
    if verdict == "nfs-access-denied" and ip and not _admitted(ip, facts.nfs_clients):
        return (f"the NFS server refused {ip}: the export admits only "
                f"{', '.join(facts.nfs_clients)}")
    if verdict == "nfs-no-such-export":
        m = MOUNTING_RE.search(line)
        asked = m.group(2) if m else ""
        if asked and asked.rstrip("/") != facts.export_path.rstrip("/"):
            return (f"the terminal asked for {asked}; the NFS server exports "
                    f"{facts.export_path} only")
    if verdict == "dhcp-failed" and "SLAAC" in line:
        if not facts.dhcp:
            return None
        advertised = _solicited(mac, facts.dnsmasq_log)
        if not advertised:
            return (f"IPv6: the lab network's router (dnsmasq) never heard a router "
                    f"solicitation from {mac} (the request did not reach it)")
        return (f"IPv6: dnsmasq answered {mac}'s router solicitation with an advertisement of "
                f"{advertised[-1]}, and the terminal took no address from it")
    if verdict == "dhcp-failed":
        if not facts.dhcp:
            return None  # another host's network: its DHCP server's log is not vlab's
        seen = _dhcp(mac, facts.dnsmasq_log)
        if not any("DHCPDISCOVER" in ln for ln in seen):
            return (f"DHCP: the lab network's DHCP server never heard a DISCOVER from {mac} "
                    "(the request did not reach it)")
        if not any("DHCPOFFER" in ln for ln in seen):
            why = next((ln.split(": ", 1)[-1] for ln in seen if "no address" in ln
                        or "ignored" in ln), "")
            return (f"DHCP DISCOVER from {mac} seen, no lease offered"
                    + (f" (dnsmasq: {why.strip()})" if why else ""))
    if verdict == "tftp-file-not-found":
        own = addresses_of(mac, ip, facts.dnsmasq_log)  # a twin's own lease, if unplanned
        missing = [name for name, peer in _tftp_missing(facts.dnsmasq_log)
                   if not own or not peer or peer in own]
        if missing:
            rel = missing[-1]
            if facts.tftp_dir and rel.startswith(facts.tftp_dir):
                rel = rel[len(facts.tftp_dir):].lstrip("/")
            return f"TFTP: {rel} is not in the tree the lab serves (the server said: not found)"
    if verdict == "http-file-not-found":
        own = addresses_of(mac, ip, facts.dnsmasq_log)
        refused = [(path, status) for peer, path, status in _web_requests(facts.web_log)
                   if status in ("403", "404") and peer in own]
        if refused:
            path, status = refused[-1]
            return (f"HTTP: {path} is not in the tree the lab serves (the web server answered "
                    f"404)" if status == "404" else f"HTTP: the web server may not read {path} "
                    "(it answered 403: the tree must be readable by all)")
    return None


def _web_requests(log: str) -> list[tuple[str, str, str]]:
    """(peer, path, status) of each request in lighttpd's access log."""
    return [(m.group(1), m.group(2), m.group(3))
            for m in map(WEB_LINE_RE.match, log.splitlines()) if m is not None]


DNSMASQ_LINE_RE = pattern(
    r"^\w{3} [ \d]\d (\d\d:\d\d:\d\d) (dnsmasq-(?:dhcp|tftp))\[\d+\]: (.*)$")
# what a DHCP transaction gave: its messages, the root path and boot file sent, the next server
DHCP_KEPT_RE = pattern(r"DHCP[A-Z]+\(|no address|ignored|next server|bootfile name|"
                          r"option:\s+(?:17 root-path|67 bootfile|59 bootfile-url)")
# IPv6 router discovery: "RTR-SOLICIT(BRIDGE) MAC", then "RTR-ADVERT(BRIDGE) PREFIX"
ROUTER_RE = pattern(r"RTR-(SOLICIT|ADVERT)\(\S+\) (\S+)$")
# a DHCPv6 transaction's client, by the MAC dnsmasq found for it
CLIENT_MAC_RE = pattern(r"\d+ client MAC address: ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})$")
# the address a DHCPv6 REPLY gave (the client is named by DUID after it)
LEASE6_RE = pattern(r"DHCPREPLY\(\S+\) ([0-9a-f]*:[0-9a-f:]+) ")
# dnsmasq's OFFER or ACK, from the message's start (a guest's vendor class or name, later in
# some other line, cannot make one): the address, then the MAC it went to
LEASE_RE = pattern(r"(?:\d+ )?DHCP(?:OFFER|ACK)\(\S+\) (\d+\.\d+\.\d+\.\d+) (\S+)")
# a DHCPACK, from the message's start (whose MAC _about reads)
ACK_RE = pattern(r"(?:\d+ )?DHCPACK\(")
# the MAC a DHCP message is about: dnsmasq writes it right after the message name and the
# address, if any (a vendor class or a host name holding a MAC is on lines of their own)
MESSAGE_MAC_RE = pattern(r"(?:\d+ )?DHCP[A-Z]+\(\S+\) (?:\d+\.\d+\.\d+\.\d+ )?"
                         r"([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})(?: |$)")
# the TFTP peer: dnsmasq's last field ("sent NAME to PEER", "file NAME not found for PEER"),
# after a file name the guest chose
TFTP_PEER_RE = pattern(r" (?:to|for|from) (\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+)$")
# lighttpd's access log: "PEER HOST - [TIME] "METHOD PATH HTTP/1.x" STATUS ..." (the path is
# the guest's: it holds no space, and the status follows the quote that ends the request)
WEB_LINE_RE = pattern(r'^(\d+\.\d+\.\d+\.\d+) \S+ \S+ \[[^\]]*\] "(?:GET|HEAD) (\S+) '
                      r'HTTP/1\.[01]" (\d{3}) ')
MAX_SEEN = 80  # lines per terminal: a PXE boot's DHCP rounds and TFTP files fit


def addresses_of(mac: str, ip: str, dnsmasq_log: str) -> set[str]:
    """A terminal's addresses: its planned one and those DHCP offered its MAC (a PXE twin
    without a planned address has only the lease)."""
    out = {ip} if ip else set()
    for m in map(DNSMASQ_LINE_RE.match, dnsmasq_log.splitlines()):
        if m is not None and m.group(2) == "dnsmasq-dhcp" and (
                lease := _lease(mac, m.group(3))) is not None:
            out.add(lease)
    return out


def acks_of(mac: str, dnsmasq_log: str) -> list[int]:
    """When dnsmasq acknowledged a lease of `mac` (each DHCPACK): seconds into the day, on
    dnsmasq's clock (its log has no date)."""
    out = []
    for m in map(DNSMASQ_LINE_RE.match, dnsmasq_log.splitlines()):
        if m is None or m.group(2) != "dnsmasq-dhcp":
            continue
        if ACK_RE.match(m.group(3)) is not None and _about(mac, m.group(3)):
            hours, minutes, seconds = map(int, m.group(1).split(":"))
            out.append(hours * 3600 + minutes * 60 + seconds)
    return out


def _v6_client(mac: str, text: str) -> bool:
    """dnsmasq's "XID client MAC address: MAC" of a DHCPv6 transaction (whose messages name
    the client by its DUID) is about `mac`."""
    m = CLIENT_MAC_RE.match(text)
    return m is not None and bool(mac) and m.group(1).lower() == mac.lower()


def _lease(mac: str, text: str) -> str | None:
    """The address a dnsmasq-dhcp message ("XID DHCPACK(BRIDGE) ADDRESS MAC") gave `mac`."""
    m = LEASE_RE.match(text)
    return m.group(1) if m is not None and mac and m.group(2).lower() == mac.lower() else None


def seen_by_servers(mac: str, ip: str, dnsmasq_log: str) -> tuple[str, ...]:
    """What the lab network's dnsmasq logged about one terminal, as "HH:MM:SS dhcp|tftp:
    text": its DHCP transactions (found by its MAC, then the lines of those transactions
    that say what it got: lease, root path, next server, boot file) and the TFTP files sent
    to its address or not found for it (its planned address, or the one DHCP gave it: a PXE
    twin's own). The last MAX_SEEN lines."""
    xids: set[str] = set()
    addresses = {ip} if ip else set()
    out = []
    asked = False  # the last router solicitation was this terminal's
    for raw in dnsmasq_log.splitlines():
        m = DNSMASQ_LINE_RE.match(raw)
        if m is None:
            continue
        clock, who, text = m.groups()
        if who == "dnsmasq-dhcp":
            if (r := ROUTER_RE.match(text)) is not None:  # IPv6 router discovery (SLAAC)
                if r.group(1) == "SOLICIT":
                    asked = bool(mac) and r.group(2).lower() == mac.lower()
                if asked:
                    out.append(f"{clock} ra: {text.strip()}")
                    asked = r.group(1) == "SOLICIT"
                continue
            xid, _, rest = text.partition(" ")
            if _about(mac, text) or _v6_client(mac, text):
                xids.add(xid)
                if (lease := _lease(mac, text)) is not None:
                    addresses.add(lease)  # before the TFTP lines it explains: time order
            if xid in xids and (v6 := LEASE6_RE.match(rest)) is not None:
                addresses.add(v6.group(1))  # a DHCPv6 REPLY names the client by DUID
            if xid not in xids or not DHCP_KEPT_RE.search(rest):
                continue
            out.append(f"{clock} dhcp: {rest.strip()}")
        elif (to := TFTP_PEER_RE.search(text)) is not None and to.group(1) in addresses:
            out.append(f"{clock} tftp: {text.strip()}")
    return tuple(out[-MAX_SEEN:])
