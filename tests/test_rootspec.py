"""The root= forms of vlab's initrd, parsed by the very shell functions the initrd runs
(busybox sh, as in the initrd); the boots that prove them are in test_verdicts.py."""

from __future__ import annotations

import subprocess

import pytest

from vlab.artifacts import templates
from vlab.build import busybox


def _parse(root: str = "", nfsroot: str = "", flags: str = "", ip: str = "",
           dhcp: str = "") -> str:
    script = ('fail() { echo "FAIL $1: $2"; exit 1; }\n'
              + templates.template("initrd/rootspec.sh.j2")
              + f'\nipconf="{ip}"\nroot_from_cmdline "{root}" "{nfsroot}" "{flags}"\n'
              f'static_ip "$ipconf"\n'
              f'[ -z "$spec" ] && [ -n "{dhcp}" ] && root_from_dhcp "{dhcp}" "{flags}"\n'
              'echo "server=$server path=$path options=$options static=$static '
              'ip_server=$ip_server"\n')
    out = subprocess.run([str(busybox.binary()), "sh", "-c", script], capture_output=True,
                         text=True, timeout=10)
    return out.stdout.strip()


@pytest.mark.parametrize(("args", "expected"), [
    ({"root": "10.0.0.5:/srv/r", "flags": "vers=4.2,port=9"},
     "server=10.0.0.5 path=/srv/r options=vers=4.2,port=9 static= ip_server="),
    ({"root": "nfs:10.0.0.5:/srv/r:vers=3,wsize=4096"},
     "server=10.0.0.5 path=/srv/r options=vers=3,wsize=4096 static= ip_server="),
    ({"root": "nfs4:10.0.0.5:/srv/r"},
     "server=10.0.0.5 path=/srv/r options=vers=4 static= ip_server="),
    ({"root": "nfs4:10.0.0.5:/srv/r:vers=4.1", "flags": "wsize=4096"},
     "server=10.0.0.5 path=/srv/r options=vers=4.1,wsize=4096 static= ip_server="),
    ({"root": "nfs:/srv/r:vers=3"}, "server= path=/srv/r options=vers=3 static= ip_server="),
    ({"root": "/dev/nfs", "nfsroot": "10.0.0.5:/srv/%s,vers=3,port=9", "ip": "dhcp"},
     "server=10.0.0.5 path=/srv/%s options=vers=3,port=9 static= ip_server="),
    ({"root": "/dev/nfs", "nfsroot": "/srv/r",
      "ip": "10.0.0.20:10.0.0.5:10.0.0.1:255.255.255.0:t1:eth0:off"},
     "server= path=/srv/r options= static=1 ip_server=10.0.0.5"),
    ({"root": "/dev/nfs", "nfsroot": "/srv/r", "ip": "10.0.0.20::::::"},
     "server= path=/srv/r options= static=1 ip_server="),
    ({"root": "dhcp", "dhcp": "nfs4:10.0.0.5:/srv/r:port=9"},
     "server=10.0.0.5 path=/srv/r options=vers=4,port=9 static= ip_server="),
    ({"root": "/dev/nfs", "dhcp": "/srv/r", "flags": "wsize=4096"},
     "server= path=/srv/r options=wsize=4096 static= ip_server="),
    ({"dhcp": "10.0.0.5:/srv/r,vers=3"},
     "server=10.0.0.5 path=/srv/r options=vers=3 static= ip_server="),
    # IPv6 servers, bracketed as dracut and the kernel take them
    ({"root": "[fd00:213:1::2]:/srv/r", "flags": "vers=4.1", "ip": "::::t1:eth0:auto6"},
     "server=fd00:213:1::2 path=/srv/r options=vers=4.1 static= ip_server="),
    ({"root": "nfs4:[fd00::2]:/srv/r:vers=4.2", "ip": "auto6"},
     "server=fd00::2 path=/srv/r options=vers=4.2 static= ip_server="),
    ({"root": "nfs:[FD00::2]:/srv/r"}, "server=FD00::2 path=/srv/r options= static= ip_server="),
    ({"root": "/dev/nfs", "nfsroot": "[fd00::2]:/srv/r,vers=3"},
     "server=fd00::2 path=/srv/r options=vers=3 static= ip_server="),
])
def test_every_form_names_its_server_path_and_options(args: dict[str, str],
                                                      expected: str) -> None:
    assert _parse(**args) == expected


@pytest.mark.parametrize(("args", "failure"), [
    ({"root": "/dev/sda1"}, "FAIL init-failed: root=/dev/sda1 is no NFS root"),
    ({"root": "UUID=1234"}, "FAIL init-failed: root=UUID=1234 is no NFS root"),
    ({"root": "nfs:server.example:/srv"}, "resolves no names, give its IPv4 address"),
    ({"root": "nfs:10.0.0.5"}, "root=nfs:10.0.0.5 is not [SERVER:]/PATH[:OPTIONS]"),
    ({"root": "10.0.0.5:/r", "ip": "off"}, "ip=off configures no network"),
    ({"root": "10.0.0.5:/r", "ip": "10.0.0.9::::::rarp"}, "asks for rarp"),
    ({"root": "10.0.0.5:/r", "ip": "10.0.0.9:::::eth1:off"}, "names the device eth1"),
    ({"root": "10.0.0.5:/r", "ip": "10.0.0.x::::::off"}, "10.0.0.x is not an IPv4 address"),
    ({"root": "dhcp", "dhcp": "cifs://x/y"}, "root path cifs://x/y is a URL, not an NFS root"),
    ({"root": "[server.example]:/srv"}, "names the server [server.example]: give an IPv6 "
     "address in brackets"),
    ({"root": "[]:/srv"}, "names the server []"),
    ({"root": "fd00::2:/srv"}, "give its IPv4 address (an IPv6 one in brackets)"),
    ({"root": "[fd00::2]:/r", "ip": "dhcp6"}, "busybox has no DHCPv6 client"),
])
def test_forms_vlab_cannot_honour_are_named_failures(args: dict[str, str], failure: str) -> None:
    assert failure in _parse(**args)
