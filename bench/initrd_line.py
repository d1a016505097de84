"""What the benchmarks' bare QEMUs are timed by: the seconds until a console shows the
initrd's first line (the boot report's `initrd` phase, as vlab's judge tells it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlab.watch.judge import PHASE_LINES  # noqa: E402

LIMIT = 300  # seconds a bare boot may take to its initrd
# the initrd's line, wherever it is on a console line (after SeaBIOS's "Booting from ROM..",
# which a direct kernel boot prints on the same line, and which is a loader's phase)
INITRD = dict(PHASE_LINES)["initrd"]


def seconds_to_initrd(qemu: subprocess.Popen[bytes], start: float, what: str) -> float:
    """Read the QEMU's console (its stdout) until the initrd's first line: the seconds since
    `start`. A QEMU that never gets there ends the benchmark, named."""
    assert qemu.stdout is not None
    for raw in qemu.stdout:
        if INITRD.search(raw.decode(errors="replace")):
            return time.monotonic() - start
        if time.monotonic() - start > LIMIT:
            break
    sys.exit(f"bench: bare qemu ({what}) never reached the initrd")
