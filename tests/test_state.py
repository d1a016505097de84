"""The lab's state file under writers in several processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from vlab import state

WRITERS, EACH = 6, 40


def _writer(lab_dir: Path, n: int) -> None:
    for i in range(EACH):
        state.update(lab_dir, **{f"w{n}-{i}": i})


def test_updates_from_several_processes_are_all_kept(tmp_path: Path) -> None:
    # As when a second `vlab up` records its lease while the first records what it made:
    # no writer fails on another's temporary file, and no update is lost.
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, n)) for n in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert state.load(tmp_path) == {f"w{n}-{i}": i for n in range(WRITERS) for i in range(EACH)}
    assert not list(tmp_path.glob("*.tmp"))
