"""One run at a time per output path (``clusterlake.io.lock``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from clusterlake.io.fs import location
from clusterlake.io.lock import RunInProgressError, RunLock
from tests.conftest import job_config


def lock_file(root) -> str:
    return os.path.join(str(root), "_clusterlake", "lock.json")


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    with RunLock(location(str(tmp_path)), "run-a") as lk:
        held = json.loads(open(lock_file(tmp_path)).read())
        assert held["run_id"] == "run-a" and held["pid"] == os.getpid()
        assert lk.loc.exists()
    assert not os.path.exists(lock_file(tmp_path))
    assert os.path.isdir(tmp_path) and not os.path.exists(os.path.dirname(lock_file(tmp_path)))


def test_a_live_lock_stops_a_second_run_with_a_message_naming_the_holder(tmp_path):
    root = location(str(tmp_path))
    with RunLock(root, "run-a"):
        with pytest.raises(RunInProgressError, match=r"another run \(run-a, pid \d+ on .*\) is writing") as ei:
            RunLock(root, "run-b").acquire()
        assert ei.value.exit_code == 75
        assert json.loads(open(lock_file(tmp_path)).read())["run_id"] == "run-a"  # untouched


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    lk = RunLock(location(str(tmp_path)), "run-a", heartbeat=0.1).acquire()
    try:
        first = json.loads(open(lock_file(tmp_path)).read())["heartbeat_at"]
        time.sleep(0.5)
        later = json.loads(open(lock_file(tmp_path)).read())["heartbeat_at"]
        assert later > first
    finally:
        lk.release()


def _write_lock(tmp_path, **held):
    os.makedirs(os.path.dirname(lock_file(tmp_path)), exist_ok=True)
    with open(lock_file(tmp_path), "w") as f:
        json.dump({"run_id": "old", "host": "elsewhere", "pid": 1, "started_at": time.time(),
                   "heartbeat_at": time.time(), **held}, f)


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    _write_lock(tmp_path, heartbeat_at=time.time() - 3600)
    with RunLock(location(str(tmp_path)), "run-b", stale_after=600):
        assert json.loads(open(lock_file(tmp_path)).read())["run_id"] == "run-b"
    assert "taking over the lock of run old (no heartbeat for 3600 s" in caplog.text


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    import socket

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid is gone
    from clusterlake.io.lock import _namespace

    _write_lock(tmp_path, host=socket.gethostname(), pid=p.pid, ns=_namespace())
    with RunLock(location(str(tmp_path)), "run-b"):
        pass
    assert "its process is gone" in caplog.text
    _write_lock(tmp_path, host="another-host", pid=p.pid)  # elsewhere: its heartbeat decides
    with pytest.raises(RunInProgressError):
        RunLock(location(str(tmp_path)), "run-c").acquire()
    # same hostname, other PID namespace (a container with the host's network): pids say nothing
    _write_lock(tmp_path, host=socket.gethostname(), pid=p.pid, ns="other-boot:pid:[1]")
    with pytest.raises(RunInProgressError):
        RunLock(location(str(tmp_path)), "run-d").acquire()


@pytest.mark.spark
def test_the_job_exits_75_and_writes_nothing_while_another_run_holds_the_lock(spark, small_table, tmp_path, capsys):
    from clusterlake.cli import main
    import yaml

    out = tmp_path / "out"
    cfg = job_config(small_table, str(out))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    with RunLock(location(str(out)), "the-other-run"):
        assert main(["run", "--config", str(path)]) == 75
    err = capsys.readouterr().err
    assert "another run (the-other-run" in err
    assert not out.exists(), "a run that wrote nothing must leave nothing behind"


def test_two_runs_taking_over_the_same_stale_lock_cannot_both_win(tmp_path):
    """Both judged the same stale lock; only the first deletes it, the second finds the winner."""
    _write_lock(tmp_path, heartbeat_at=time.time() - 3600)
    root = location(str(tmp_path))
    a, b = RunLock(root, "run-a"), RunLock(root, "run-b")
    stale = b._read()
    a.acquire()
    try:
        b._remove_if_unchanged(stale)  # b acts on what it saw before a took over
        assert json.loads(open(lock_file(tmp_path)).read())["run_id"] == "run-a"
        with pytest.raises(RunInProgressError, match="another run \\(run-a"):
            b.acquire()
    finally:
        a.release()


def test_a_transient_read_error_does_not_stop_the_heartbeat(tmp_path, monkeypatch):
    lk = RunLock(location(str(tmp_path)), "run-a", heartbeat=0.05).acquire()
    try:
        real = type(lk.loc).read_bytes
        fails = {"n": 0}

        def flaky(self):
            if fails["n"] < 2:
                fails["n"] += 1
                raise OSError("simulated: the store did not answer")
            return real(self)

        monkeypatch.setattr(type(lk.loc), "read_bytes", flaky)
        time.sleep(0.4)
        assert fails["n"] == 2 and lk._thread.is_alive() and lk.lost is None
        first = json.loads(open(lock_file(tmp_path)).read())["heartbeat_at"]
        time.sleep(0.3)
        assert json.loads(open(lock_file(tmp_path)).read())["heartbeat_at"] > first
        lk.assert_held()
    finally:
        lk.release()


def test_a_run_whose_lock_was_taken_over_does_not_publish(tmp_path):
    lk = RunLock(location(str(tmp_path)), "run-a", heartbeat=0.05).acquire()
    try:
        _write_lock(tmp_path, run_id="run-b")  # e.g. this driver froze past the stale limit
        time.sleep(0.3)
        assert lk.lost and "run-b" in lk.lost
        with pytest.raises(RunInProgressError, match="this run lost its lock"):
            lk.assert_held()
    finally:
        lk.release()
    assert json.loads(open(lock_file(tmp_path)).read())["run_id"] == "run-b", "release must not remove run-b's lock"
