"""Scenario files: the model (model.py, the words every other module imports), read from
TOML once (read.py, table.py), with the `[[libvirt_host]]` nodes (nodes.py) and the `[[host]]`
machines (machines.py)."""

from vlab.scenario.model import Scenario
from vlab.scenario.read import load, parse

__all__ = ["Scenario", "load", "parse"]
