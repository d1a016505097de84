"""Scenario files: the model (model.py, the words every other module imports), read from
TOML once (read.py, table.py), with the `[[terminal]]`, `[[node]]` and `[[machine]]` tables
(terminal_tables.py, node_tables.py, machine_tables.py)."""

from vlab.scenario.model import Scenario
from vlab.scenario.read import load, parse

__all__ = ["Scenario", "load", "parse"]
