"""What vlab has created for a lab, recorded before it is created, and the per-lab lock."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlab.errors import LabBusy

STATE = "state.json"
RESULTS = "results.json"


def load(lab_dir: Path, name: str = STATE) -> dict[str, Any]:
    try:
        data = json.loads((lab_dir / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(lab_dir: Path, data: dict[str, Any], name: str = STATE) -> None:
    lab_dir.mkdir(parents=True, exist_ok=True)
    tmp = lab_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, lab_dir / name)


def update(lab_dir: Path, **changes: Any) -> dict[str, Any]:
    data = load(lab_dir)
    data.update(changes)
    save(lab_dir, data)
    return data


def remove(lab_dir: Path, name: str = STATE) -> None:
    (lab_dir / name).unlink(missing_ok=True)


@contextmanager
def locked(lab_dir: Path, lab: str) -> Iterator[None]:
    """One vlab process at a time works on a lab."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with (lab_dir / "lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabBusy(f"another vlab process is working on lab {lab!r}; "
                          "fix: wait for it to finish") from None
        yield
