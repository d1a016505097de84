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


def test_a_lab_going_down_leaves_rpcbind_to_a_v3_lab_that_is_starting(tmp_path: Path) -> None:
    """rpcbind is one per machine: a v3 lab whose ganesha is starting (its configuration is
    written, no pid yet) or runs keeps it; once none does, the last down stops it."""
    import subprocess
    import time

    from vlab import nfsserver, procs

    fake = subprocess.Popen(["bash", "-c", "exec -a rpcbind sleep 60"])
    try:
        (tmp_path / nfsserver.RPCBIND_PID).write_text(f"{fake.pid}\n")
        deadline = time.monotonic() + 10
        while procs.read_pid(tmp_path / nfsserver.RPCBIND_PID, "rpcbind") is None:
            assert time.monotonic() < deadline, procs.arguments(fake.pid)
            time.sleep(0.01)
        conf = tmp_path / "labs/starting/nfs/ganesha.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("NFS_CORE_PARAM {\n    Protocols = 3, 4;\n}\n")
        assert not nfsserver.stop_rpcbind_if_unused(tmp_path)
        assert procs.alive(fake.pid)
        conf.with_name("ganesha.pid").write_text("999999\n")  # it died: nobody needs rpcbind
        assert nfsserver.stop_rpcbind_if_unused(tmp_path)
        fake.wait(timeout=10)
    finally:
        fake.kill()
