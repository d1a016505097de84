"""A fault's outcome for a terminal, in words: the same in vlab's output, the JUnit and the
boot report. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def carried_on(f: Mapping[str, Any]) -> str:
    """How a terminal carried on after a fault ("" if it did not, or nothing was measured)."""
    if f.get("verdict") != "ok":
        return ""
    said = []
    if f.get("resumed_after") is not None:
        said.append(f"its NFS root answered {f['resumed_after']} s after the fault ended")
    if f.get("renewed_after") is not None:
        said.append(f"it renewed its DHCP lease {f['renewed_after']} s after")
    return "; ".join(said)
