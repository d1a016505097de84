"""Reading one TOML table key by key, so that every error names the file, `table.key`, the bad
value and the fix."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from vlab.errors import ScenarioError
from vlab.scenario.model import MAC_RE, NAME_FIX, NAME_RE

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")
# A libvirt network, a bridge or a network namespace, as `virsh net-list` or `ip` shows it.
# C0, DEL and C1 controls, and Unicode line and paragraph separators: never in a value.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CMDLINE_BAD_RE = re.compile(r"[^A-Za-z0-9 ._,:=/+@%-]")
IFACE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# Keys vlab renamed (issue 28: one word per concept), by table ("" the top level): a scenario
# that still uses one is told the new name.
RENAMED = {
    "": {"host": "machine", "libvirt_host": "node", "check": "probe"},
    "lab": {"host": "lab_host"},
    "terminal": {"host": "node", "root": "export"},
    "machine": {"root": "export"},
}


class Table:
    """One TOML table, read key by key, so every error can name `table.key`."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, Any], known: tuple[str, ...]):
        self.file, self.prefix, self.data = file, prefix, data
        renamed = RENAMED.get(prefix.split("[")[0], {})
        for key in data:
            if key in renamed and key not in known:
                new = renamed[key]
                old, now = ((f"[[{key}]]", f"[[{new}]]") if not prefix else (key, new))
                raise ScenarioError(file, self.key(key), f"{old} is now called {now}",
                                    f"rename {old} to {now}")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise ScenarioError(file, self.key(key), "unknown key", fix)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, why: str, fix: str) -> ScenarioError:
        return ScenarioError(self.file, self.key(name), why, fix)

    def get(self, name: str, kind: type[T], default: T | None = None) -> T:
        if name not in self.data:
            if default is not None:
                return default
            if kind is dict:
                raise self.error(name, "is missing", f"add a [{self.key(name)}] table")
            raise self.error(name, "is missing", f"add {name} = ... to [{self.prefix}]")
        value = self.data[name]
        # TOML booleans are ints in Python: never accept one where a number is meant.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            if kind is dict:
                fix = f"write it as a [{self.key(name)}] table"
            else:
                example = _toml(default) if default is not None else _example(kind)
                fix = f"write it as {_kind_name(kind)}, e.g. {name} = {example}"
            raise self.error(
                name, f"must be {_kind_name(kind)}, not {_kind_name(type(value))} "
                f"({_toml(value)})", fix)
        for text in (value if isinstance(value, list) else [value]):
            if isinstance(text, str) and (bad := CONTROL_RE.search(text)):
                raise self.error(name, f"{text!r} holds the control character "
                                 f"U+{ord(bad.group()):04X}", "write it on one line, without "
                                 "control characters (newline, tab, NUL, ESC, ...)")
        return value

    def choice(self, name: str, enum: type[E], default: E) -> E:
        raw = self.get(name, str, str(default.value))
        try:
            return enum(raw)
        except ValueError:
            allowed = ", ".join(f'"{e.value}"' for e in enum)
            raise self.error(name, f"{raw!r} is not supported", f"use one of {allowed}") from None

    def int_in(self, name: str, default: int, low: int, high: int, unit: str = "") -> int:
        value = self.get(name, int, default)
        if not low <= value <= high:
            raise self.error(
                name, f"{value}{unit} is out of range", f"use a value from {low} to {high}{unit}"
            )
        return value

    def name(self, name: str, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise self.error(name, f"{value!r} is not a valid name", NAME_FIX)
        return value

    def unique_name(self, seen: dict[str, int], index: int, kind: str) -> str:
        """`name`, valid and unlike the names of the kind's earlier tables."""
        name = self.name("name", self.get("name", str))
        if name in seen:
            raise self.error("name", f"{name!r} is also the name of {kind}[{seen[name]}]",
                             f"give every {kind} its own name")
        seen[name] = index
        return name

    def sub(self, name: str, default: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """A sub-table's data (the default when the table is absent)."""
        if name not in self.data and default is not None:
            return default
        return self.get(name, dict)

    def tables(self, name: str, fix: str) -> list[Mapping[str, Any]]:
        """An array of tables ([[name]]), empty when absent."""
        raw = self.data.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise ScenarioError(self.file, self.key(name), "must be an array of tables", fix)
        return raw

    def ip(self, key: str) -> ipaddress.IPv4Address | None:
        if key not in self.data:
            return None
        raw = self.get(key, str)
        try:
            address = ipaddress.IPv4Address(raw)
        except ValueError:
            raise self.error(key, f"{raw!r} is not an IPv4 address",
                             "the initrd mounts by address: write it like \"10.0.0.5\"") from None
        if (why := _not_unicast(ipaddress.IPv4Network(address))) is not None:
            raise self.error(key, f"{raw!r} is no one machine's address ({why})",
                             'give the address of one machine, e.g. "10.0.0.5"')
        return address

    def network(self, key: str, fix: str) -> ipaddress.IPv4Network:
        text = self.get(key, str)
        try:
            network = ipaddress.IPv4Network(text)
        except ValueError:
            raise self.error(key, f"{text!r} is not an IPv4 network", fix) from None
        if (why := _not_unicast(network)) is not None:
            raise self.error(key, f"{text!r} is no network of machines ({why})", fix)
        return network

    def iface_name(self, key: str, why: str, fix: str) -> str | None:
        """An optional network, bridge or namespace name ("" counts as absent)."""
        value = self.get(key, str, "") or None
        if value is not None and not IFACE_NAME_RE.fullmatch(value):
            raise self.error(key, f"{value!r} is not {why}", fix)
        return value

    def mac(self, seen: dict[str, int], index: int, kind: str = "terminal") -> str | None:
        if "mac" not in self.data:
            return None
        mac = self.get("mac", str).lower()
        if not MAC_RE.fullmatch(mac):
            raise self.error("mac", f"{mac!r} is not a MAC address", 'write six hex pairs, e.g. '
                             '"52:54:00:12:34:56", or leave it out to pin one')
        if int(mac[:2], 16) & 1:
            raise self.error("mac", f"{mac!r} is a multicast address",
                             'use a unicast MAC such as "52:54:00:12:34:56"')
        if mac in seen:
            raise self.error("mac", f"{mac!r} is also the MAC of {kind}[{seen[mac]}]",
                             "give every terminal its own MAC, or leave it out to pin one")
        seen[mac] = index
        return mac

    def export(self) -> str | None:
        """The export a terminal or a machine mounts instead of the lab's (the page's
        root=SERVER:/path override), or None."""
        root = self.get("export", str, "") or None
        if root is None:
            return None
        server, sep, path = root.rpartition(":")
        if not re.fullmatch(r"^/[A-Za-z0-9._/-]*$", path):
            raise self.error("export", f"{root!r} is not an NFS export",
                             'write it as the page does: "SERVER-IP:/path" or "/path"')
        if sep and not re.fullmatch(r"^[0-9.]+$", server):
            raise self.error("export", f"the server {server!r} is a name, but the initrd mounts "
                             "before any name service runs", "give the server's IP address")
        return root

    def cmdline(self) -> str:
        cmdline = self.get("cmdline", str, "")
        # It goes into pxelinux, GRUB (where ; { } $ | end or open a command) and iPXE files
        # and onto libvirt's <cmdline>: plain ASCII words only.
        if bad := CMDLINE_BAD_RE.search(cmdline):
            raise self.error("cmdline", f"{cmdline!r} contains {bad.group()!r}, which a kernel "
                             "command line in a GRUB, iPXE or pxelinux file cannot carry safely",
                             "use plain space-separated key=value words (letters, digits and "
                             ". _ - , : = / + @ %)")
        return cmdline


# The ranges where no one machine of a lab or a site is: one rule for addresses and networks.
NOT_UNICAST = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "0.0.0.0/8 means this host, no other"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback: every machine's own"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local: no route leads there"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved, and the broadcast address"),
)


def _not_unicast(network: ipaddress.IPv4Network) -> str | None:
    """Why an address or a network (inside one of those ranges) is none of one machine's,
    or None if it may be. (A network wider than them, such as 0.0.0.0/0, is refused by the
    rules for what an export may admit.)"""
    return next((why for span, why in NOT_UNICAST if network.subnet_of(span)), None)


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", list: "a list",
            dict: "a table", float: "a number"}.get(kind, kind.__name__)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _example(kind: type) -> str:
    return {str: '"text"', int: "1", bool: "true", list: "[...]"}.get(kind, "...")
