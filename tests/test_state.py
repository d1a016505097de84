"""The lab's state file and the cache under writers in several processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from vlab import state
from vlab.build import cache

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

    from vlab import procs
    from vlab.serve import nfsserver

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


def test_a_key_published_side_by_side_keeps_one_result(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two labs up at once build the same cache key (the root's kernel): the second rename
    meets the first's folder, keeps it and drops its own (CI: ENOTEMPTY, an internal error)."""
    final = tmp_path / "kernels" / "root-6.12-abc"
    rename = Path.rename

    def raced(self: Path, target: Path) -> Path:
        if target == final and not final.exists():  # the other vlab wins, just now
            final.mkdir()
            (final / "vmlinuz").write_text("theirs")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", raced)
    with cache.publish(final) as tmp:
        tmp.mkdir()
        (tmp / "vmlinuz").write_text("mine")
    assert (final / "vmlinuz").read_text() == "theirs"
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_a_root_published_side_by_side_keeps_the_first_which_may_be_in_use(
        tmp_path: Path) -> None:
    """Two labs up at once bootstrap the same root (a fixed folder, stamped with its
    inputs): the first published is kept, whatever uses it, and the second dropped; a root
    of other inputs still replaces a stale one."""
    final = tmp_path / "roots" / "busybox"
    with cache.publish(final) as tmp:
        tmp.mkdir()
        (tmp / "init").write_text("first")
        cache.stamp(tmp, "inputs-1")
    with (final / "init").open() as in_use:
        with cache.publish(final) as tmp:
            tmp.mkdir()
            (tmp / "init").write_text("second")
            cache.stamp(tmp, "inputs-1")
        assert (final / "init").read_text() == in_use.read() == "first"
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]
    with cache.publish(final) as tmp:
        tmp.mkdir()
        (tmp / "init").write_text("rebuilt")
        cache.stamp(tmp, "inputs-2")
    assert (final / "init").read_text() == "rebuilt" and cache.is_current(final, "inputs-2")
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_a_process_whose_name_and_arguments_are_not_utf8_is_read_not_a_crash(
        tmp_path: Path) -> None:
    """Any program on the machine may have a name and arguments that are not UTF-8 (seen: a
    test run beside vlab's made one, and the fault tests' scan of /proc failed on it): vlab's
    own scans of /proc read it and go on."""
    import os
    import shutil
    import subprocess
    import time

    from vlab import procs

    odd = os.fsencode(tmp_path) + b"/\xffsh"
    shutil.copy2("/bin/sh", os.fsdecode(odd))
    # (not sleep itself: it refuses the odd argument and is gone at once; "; :" keeps the
    # shell from exec'ing sleep in its place)
    child = subprocess.Popen([odd, b"-c", b"sleep 30; :", b"\xfe"])
    try:
        assert procs.alive(child.pid)
        # Until the child has exec'd, /proc/PID/cmdline is Python's, or empty mid-exec.
        deadline = time.monotonic() + 10
        while procs.arguments(child.pid)[:1] != [odd.decode(errors="replace")]:
            assert time.monotonic() < deadline, procs.arguments(child.pid)
            time.sleep(0.01)
        assert procs.arguments(child.pid)[1:] == ["-c", "sleep 30; :", "\ufffd"]
        assert procs.with_argument("/nothing-here", "sleep") == {}
    finally:
        child.kill()
        child.wait()
    assert not procs.alive(child.pid)
