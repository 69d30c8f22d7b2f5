"""The stream's exactly-once commit protocols: one micro-batch appended to the stream's table
at most once, keyed by (stream id, batch id), whatever crashes and replays happen.

Delta records the pair in the commit that adds the files (the Delta protocol's ``txn`` action:
delta-rs ``CommitProperties(app_transactions=...)``, Spark Delta's ``txnAppId``/``txnVersion``)
and a batch the table already holds is skipped; plain parquet does the same with marker files
(:func:`write_parquet`). :mod:`clusterlake.stream` decides what to write; this module only how.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Optional

log = logging.getLogger("clusterlake.stream")

MARKERS = "_clusterlake_stream"
"""Parquet output: ``<table>/_clusterlake_stream/<app_id>/<batch>.intent.json|.done.json``."""
KEEP_MARKERS = 10
"""Parquet output: the done markers of this many latest batches are kept (a replay can only be
of the newest batch; the newest marker alone decides)."""


def _check_rows(store, st, n_ok: int, batch_id: int) -> None:
    """The staged batch holds one row per valid row, or it is discarded and the batch fails.
    Spark's Delta writer stages lazily (no files, so no count, before its commit); every other
    store must have staged files for a batch with valid rows."""
    lazy = not st.files and st.df is not None
    if not lazy and st.rows != n_ok:
        store.discard(st)
        raise RuntimeError(f"stream batch {batch_id}: {st.rows} assignments written for {n_ok} valid rows")


def committed_batch(store, table: str, app_id: str) -> Optional[int]:
    """The newest batch id of this stream the table holds (None: none)."""
    if store.kind == "parquet":
        marks = store.table(table).child(MARKERS, app_id)
        done = [int(i.base_name.split(".")[0]) for i in marks.files(recursive=False)
                if i.base_name.endswith(".done.json") and i.base_name.split(".")[0].isdigit()]
        return max(done) if done else None
    return store.transaction_version(table, app_id)


def write_delta(store, table: str, asg, n_files: int, app_id: str, batch_id: int, n_ok: int):
    """Stage the files, then one commit adding them with the txn (app_id, batch_id).

    delta-rs (:class:`~clusterlake.io.tables.DeltaRsStore`): the files go to
    ``<table>/run_date=<date>/stream-<query id>-b<batch>/``; files left there by an earlier
    attempt at this batch that died before its commit are not in the Delta log (the batch's
    txn is not: checked before) and are deleted first. Spark's Delta writer
    (:class:`~clusterlake.io.tables.SparkDeltaStore`, where Delta's jars are on the
    classpath) writes with ``txnAppId``/``txnVersion`` and skips a committed batch itself
    (tests/test_stream.py runs both).
    """
    from clusterlake.io.tables import PARTITION

    if store.kind == "delta-rs":
        leftover = store.table(table).child(f"{PARTITION}={store.run_date}", store.run_id)
        if leftover.exists():
            log.warning("stream batch %d: deleting the uncommitted files of an earlier attempt in %s",
                        batch_id, leftover.uri)
            leftover.delete()
    st = store.stage(table, asg, files=n_files, append=True)
    _check_rows(store, st, n_ok, batch_id)
    try:
        version = store.commit(st, app_transaction=(app_id, batch_id))
    except BaseException:
        try:  # a commit that raised may have landed: then its files are the table's now
            held = committed_batch(store, table, app_id)
            landed = held is not None and held >= batch_id
        except Exception:
            landed = True  # unknown: leave the files; a replay deletes them if uncommitted
        if not landed:
            store.discard(st)
        raise
    return (st.rows if st.files else n_ok), version


def write_parquet(store, table: str, asg, n_files: int, app_id: str, batch_id: int, n_ok: int):
    """Plain parquet has no log: the batch is made idempotent with marker files.

    Under ``<table>/_clusterlake_stream/<app_id>/`` (readers skip ``_`` folders): before the
    staged files move into ``run_date=<date>/`` (named ``stream-<query id>-b<batch>-<part>``),
    ``<batch>.intent.json`` lists their destinations; after the last move ``<batch>.done.json``
    marks the batch committed. A replayed batch whose done marker (or a later one) exists is
    skipped; one with only an intent deletes the files it lists, then writes the batch again.
    A reader listing the partition during the moves can see part of a batch (as for every
    parquet append, see :class:`~clusterlake.io.tables.ParquetStore`).
    """
    from clusterlake.io.tables import PARTITION

    t = store.table(table)
    marks = t.child(MARKERS, app_id)
    intent, done = marks.child(f"{batch_id}.intent.json"), marks.child(f"{batch_id}.done.json")
    if intent.exists():
        try:
            earlier = json.loads(intent.read_bytes())["files"]
        except (ValueError, KeyError):  # cut short while written: no file had moved yet
            earlier = []
        gone = [rel for rel in earlier if t.child(rel).exists()]
        log.warning("stream batch %d: an earlier attempt moved %d file(s) but did not finish; deleting them",
                    batch_id, len(gone))
        for rel in gone:
            t.child(rel).delete()
        intent.delete()
    staging = t.child("_staging", store.run_id)
    if staging.exists():
        staging.delete()
    st = store.stage(table, asg, files=n_files, append=True)
    _check_rows(store, st, n_ok, batch_id)
    moves = [(rel, f"{PARTITION}={store.run_date}/{store.run_id}-{rel.rsplit('/', 1)[-1]}") for rel, *_ in st.files]
    intent.write_bytes(json.dumps({"batch_id": batch_id, "files": [d for _, d in moves]}).encode())
    for src, dest in moves:
        t.child(src).move_to(t.child(dest))
    done.write_bytes(json.dumps({"batch_id": batch_id, "rows": st.rows, "files": [d for _, d in moves],
                                 "committed_at": dt.datetime.now(dt.timezone.utc).isoformat()}).encode())
    # committed; the rest is tidying up
    try:
        store.discard(st)  # the (now empty) staging folders of this batch
        for info in marks.files(recursive=False):
            head = info.base_name.split(".")[0]
            if head.isdigit() and int(head) <= batch_id - KEEP_MARKERS:
                marks.child(info.base_name).delete()
    except Exception as exc:
        log.warning("stream batch %d: committed, but tidying up failed: %s", batch_id, exc)
    return st.rows, None
