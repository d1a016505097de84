"""Scenario files: the model (model.py), read from TOML (read.py, table.py) with the
`[[libvirt_host]]` nodes (nodes.py) and `[[host]]` machines (machines.py)."""

from vlab.scenario.model import (
    LOCAL,
    MAC_PREFIX,
    SHIP_DIR,
    AfterBoot,
    Boot,
    Check,
    Hypervisor,
    Initrd,
    InitrdBuilder,
    Kernel,
    KernelSource,
    Lab,
    LabHostMode,
    Machine,
    NfsVersion,
    NicDriver,
    Node,
    Pxe,
    Root,
    RootSource,
    RootVia,
    Scenario,
    Terminal,
    Writable,
)
from vlab.scenario.read import filesystem_of, load, parse

__all__ = [
    "LOCAL", "MAC_PREFIX", "SHIP_DIR", "AfterBoot", "Boot", "Check", "Hypervisor", "Initrd",
    "InitrdBuilder", "Kernel", "KernelSource", "Lab", "LabHostMode", "Machine", "NfsVersion",
    "NicDriver", "Node", "Pxe", "Root", "RootSource", "RootVia", "Scenario", "Terminal",
    "Writable", "filesystem_of", "load", "parse",
]
