"""The lab host's firewall: nothing of a lab answers but on the lab's own bridge.

A lab's dnsmasq (DHCP, TFTP, DNS) listens on the bridge's address, and Linux takes a packet
for any of its addresses in on any interface: with `lab_host = "system"`, a machine on the
workstation's LAN that routes the lab's subnet through it could reach that dnsmasq. So each
lab gets one rule in the lab host's INPUT chain that drops what is addressed to the lab's
subnet and does not come in on the lab's bridge (and the same for its IPv6 subnet, which a
PXE lab's network has), tagged with a comment naming the lab; `vlab down` removes it. What is
forwarded into the lab network, where its NFS server is, libvirt's own rules for an isolated
network already reject. In the isolated lab host the rule is there too (one code path), in
that namespace's own table. A lab with other hypervisor hosts gets none: their terminals reach
its NFS server at the bridge's address from outside the bridge (docs/security.md).
"""

from __future__ import annotations

from vlab import run
from vlab.errors import HostError
from vlab.plan.lab import LabPlan


def _rules(plan: LabPlan) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", f"vlab lab {plan.name}"]
    drop = ["!", "-i", plan.bridge, *tag, "-j", "DROP"]
    return [["iptables", "-w", "5", "{op}", "INPUT", "-d", str(plan.subnet), *drop],
            ["ip6tables", "-w", "5", "{op}", "INPUT", "-d", plan.ipv6_subnet, *drop]]


def _with(rule: list[str], op: str) -> list[str]:
    return [op if word == "{op}" else word for word in rule]


def guard(plan: LabPlan, netns: str | None, ipv6: bool) -> bool:
    """Put the lab's rules in place (the IPv6 one if its network has IPv6) before anything
    of the lab answers, and check they are; True if one was missing (a second up adds
    nothing; an up of a lab that is up puts back a rule someone removed). A rule that cannot
    be put in place fails the command: a lab is never up without it."""
    added = False
    for rule in _rules(plan)[:2 if ipv6 else 1]:
        if _present(rule, netns):
            continue
        run.run(_with(rule, "-I"), netns=netns, hint="the lab host's firewall (iptables)")
        added = True
        if not _present(rule, netns):
            raise HostError(f"the firewall rule of lab {plan.name} ({' '.join(rule[3:])}) is "
                            "not in the INPUT chain after adding it; nothing of the lab was "
                            "started; fix: check iptables -S INPUT on the lab host")
    return added


def missing(plan: LabPlan, netns: str | None) -> bool:
    """The lab's IPv4 rule (every lab with an NFS namespace has one) is not in place."""
    return not _present(_rules(plan)[0], netns)


def _present(rule: list[str], netns: str | None) -> bool:
    return run.run(_with(rule, "-C"), netns=netns, check=False).returncode == 0


def unguard(plan: LabPlan, netns: str | None) -> bool:
    """Remove the lab's rules, every copy; True if there was one. Never fails on a rule, a
    table or a namespace that is not there."""
    removed = False
    for rule in _rules(plan):
        for _ in range(8):
            if run.run(_with(rule, "-D"), netns=netns, check=False).returncode != 0:
                break
            removed = True
    return removed


def rules(netns: str | None) -> list[str]:
    """Every vlab rule in the lab host's INPUT chains (for tests and `vlab lab-host status`)."""
    found = []
    for tool in ("iptables", "ip6tables"):
        listed = run.run([tool, "-w", "5", "-S", "INPUT"], netns=netns, check=False).stdout
        found += [ln for ln in listed.splitlines() if "vlab lab " in ln]
    return found


def _loss_rules(plan: LabPlan, percent: int) -> list[list[str]]:
    """A [[fault]] kind = "packet-loss": a random share of what the lab's NFS server sends
    and receives dropped, in its own namespace's tables (iptables' statistic match; the
    machine's kernel may have no netem), so nothing outside the lab is touched."""
    chance = ["-m", "statistic", "--mode", "random", "--probability", f"{percent / 100:.2f}",
              "-m", "comment", "--comment", f"vlab fault {plan.name}", "-j", "DROP"]
    tools = ("iptables", "ip6tables") if plan.ipv6 else ("iptables",)
    return [[tool, "-w", "5", "{op}", chain, *chance] for tool in tools
            for chain in ("INPUT", "OUTPUT")]


def lose_packets(plan: LabPlan, percent: int) -> None:
    assert plan.nfs_netns is not None
    for rule in _loss_rules(plan, percent):
        run.run(_with(rule, "-I"), netns=plan.nfs_netns, hint="the NFS server's iptables")


def stop_losing_packets(plan: LabPlan, percent: int) -> None:
    """Take the packet-loss rules away (vlab down removes them with the namespace anyway)."""
    assert plan.nfs_netns is not None
    for rule in _loss_rules(plan, percent):
        run.run(_with(rule, "-D"), netns=plan.nfs_netns, check=False)
