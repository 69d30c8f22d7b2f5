#!/usr/bin/env python3
"""A Spark standalone cluster on this machine: one master and N workers on 127.0.0.1, started with
``spark-class`` and stopped by process id. Used by ``make test-cluster`` and the README's
"Run on a cluster" section.

    python scripts/standalone_cluster.py start --dir /tmp/clusterlake-standalone --workers 2
        -> prints the master URL (spark://127.0.0.1:PORT) as its last line
    python scripts/standalone_cluster.py status --dir /tmp/clusterlake-standalone
    python scripts/standalone_cluster.py kill-worker --dir /tmp/clusterlake-standalone --index 1
        -> SIGKILL worker 1 and its executors (a lost node, for fault tests)
    python scripts/standalone_cluster.py stop --dir /tmp/clusterlake-standalone

Spark comes from ``$SPARK_HOME`` or, without it, from the pyspark package of the Python running
this script (pip's pyspark ships ``bin/spark-class`` and the jars). Ports are picked free; the
processes' pids, ports and logs live in ``--dir`` (``cluster.json``, ``*.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def spark_home() -> Path:
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log: Path, env: dict) -> int:
    out = open(log, "ab")
    # a session of its own: a Ctrl-C in the caller's terminal does not reach the daemons
    p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return p.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_spark(pid: int) -> bool:
    """The pid still runs a Spark daemon (not a process that reused the number since)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"org.apache.spark.deploy" in f.read()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.append(pid)
    return out


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{ui_port}/json/", timeout=5) as r:
        return json.load(r)


def _load(folder: Path) -> dict:
    f = folder / "cluster.json"
    if not f.exists():
        sys.exit(f"standalone_cluster: no cluster recorded in {folder} (start one first)")
    return json.loads(f.read_text())


def start(folder: Path, workers: int, cores: int, memory: str, timeout: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "cluster.json").exists():
        state = json.loads((folder / "cluster.json").read_text())
        if _alive(state["master"]["pid"]) and _is_spark(state["master"]["pid"]):
            sys.exit(f"standalone_cluster: a cluster is already running from {folder}; stop it first")
        stop(folder)  # a stale record: stop whatever of it still runs
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP=HOST, SPARK_LOG_DIR=str(folder),
               SPARK_WORKER_DIR=str(folder / "work"))
    port, ui = free_port(), free_port()
    state = {"dir": str(folder), "spark_home": str(home), "master_url": f"spark://{HOST}:{port}",
             "master": {"pid": 0, "port": port, "ui_port": ui, "log": str(folder / "master.log")}, "workers": []}
    state["master"]["pid"] = _spawn(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(port),
         "--webui-port", str(ui)], folder / "master.log", env)
    (folder / "cluster.json").write_text(json.dumps(state, indent=2))
    deadline = time.time() + timeout
    while True:
        try:
            _master_state(ui)
            break
        except OSError:
            if not _alive(state["master"]["pid"]) or time.time() > deadline:
                stop(folder)
                sys.exit(f"standalone_cluster: the master did not start; see {folder / 'master.log'}")
            time.sleep(0.5)
    for i in range(workers):
        wdir = folder / f"worker-{i}"
        wdir.mkdir(exist_ok=True)
        wui = free_port()
        pid = _spawn([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", HOST, "--cores", str(cores),
                      "--memory", memory, "--work-dir", str(wdir), "--webui-port", str(wui), state["master_url"]],
                     folder / f"worker-{i}.log", env)
        state["workers"].append({"index": i, "pid": pid, "ui_port": wui, "cores": cores, "memory": memory,
                                 "log": str(folder / f"worker-{i}.log")})
        (folder / "cluster.json").write_text(json.dumps(state, indent=2))
    while True:
        try:
            alive = [w for w in _master_state(ui).get("workers", []) if w.get("state") == "ALIVE"]
        except OSError:
            alive = []
            if not _alive(state["master"]["pid"]):
                stop(folder)
                sys.exit(f"standalone_cluster: the master died; see {folder / 'master.log'}")
        if len(alive) >= workers:
            break
        if time.time() > deadline or not all(_alive(w["pid"]) for w in state["workers"]):
            stop(folder)
            sys.exit(f"standalone_cluster: only {len(alive)} of {workers} workers registered; see {folder}/worker-*.log")
        time.sleep(0.5)
    return state


def kill_worker(folder: Path, index: int) -> list[int]:
    """SIGKILL worker ``index`` and everything below it (its executors and their Python workers)."""
    state = _load(folder)
    w = state["workers"][index]
    if not _is_spark(w["pid"]):
        sys.exit(f"standalone_cluster: worker {index} (pid {w['pid']}) is not running")
    victims = [w["pid"]] + descendants(w["pid"])
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    w["killed"] = True
    (folder / "cluster.json").write_text(json.dumps(state, indent=2))
    return victims


def worker_of(folder: Path, pid: int) -> int:
    """The index of the worker that ``pid`` (e.g. a barrier task's Python process) runs under."""
    state = _load(folder)
    above = set(ancestors(pid)) | {pid}
    for w in state["workers"]:
        if w["pid"] in above:
            return w["index"]
    raise LookupError(f"process {pid} does not run under any worker of {folder}")


def stop(folder: Path, grace: float = 15.0) -> list[int]:
    """Stop the workers, then the master (SIGTERM, then SIGKILL after ``grace`` seconds), and
    every process they started. Returns the pids that were still running."""
    state = _load(folder)
    # only pids that still run Spark daemons: a stale record must not kill what reused its pids
    pids = [p for p in [w["pid"] for w in state["workers"]] + [state["master"]["pid"]] if _is_spark(p)]
    everything = []
    for pid in pids:
        everything += [pid] + descendants(pid)
    running = [p for p in everything if _alive(p)]
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while any(_alive(p) for p in running) and time.time() < deadline:
        time.sleep(0.2)
    for pid in running:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (folder / "cluster.json").unlink(missing_ok=True)
    return running


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a master and workers; print the master URL")
    s.add_argument("--dir", required=True, type=Path)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cores", type=int, default=1, help="cores per worker")
    s.add_argument("--memory", default="2g", help="memory per worker")
    s.add_argument("--timeout", type=float, default=120.0)
    for name, helptext in (("stop", "stop everything started from --dir"), ("status", "print cluster.json")):
        sub.add_parser(name, help=helptext).add_argument("--dir", required=True, type=Path)
    k = sub.add_parser("kill-worker", help="SIGKILL one worker and its executors")
    k.add_argument("--dir", required=True, type=Path)
    k.add_argument("--index", type=int)
    k.add_argument("--owner-of", type=int, metavar="PID", help="the worker running this process")
    a = p.parse_args(argv)
    if a.cmd == "start":
        state = start(a.dir, a.workers, a.cores, a.memory, a.timeout)
        print(f"master UI http://{HOST}:{state['master']['ui_port']}, {a.workers} workers, logs in {a.dir}",
              file=sys.stderr)
        print(state["master_url"])
    elif a.cmd == "stop":
        killed = stop(a.dir)
        print(f"stopped {len(killed)} processes", file=sys.stderr)
    elif a.cmd == "status":
        print(json.dumps(_load(a.dir), indent=2))
    elif a.cmd == "kill-worker":
        index = a.index if a.index is not None else worker_of(a.dir, a.owner_of)
        victims = kill_worker(a.dir, index)
        print(f"killed worker {index}: pids {victims}", file=sys.stderr)
        print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
