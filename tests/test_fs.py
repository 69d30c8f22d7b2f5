"""Output locations: what pyarrow opens on the driver vs the URI Spark and delta-rs are given."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from clusterlake.io.fs import location, pyarrow_uri


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = location("out/x")
    assert loc.is_local and loc.path == loc.uri == os.path.join(str(tmp_path), "out", "x")
    assert location(f"file://{tmp_path}/y").path == f"{tmp_path}/y"


def test_s3a_is_s3_for_pyarrow_only():
    assert pyarrow_uri("s3a://b/p") == "s3://b/p" and pyarrow_uri("s3n://b/p") == "s3://b/p"
    assert pyarrow_uri("gs://b/p") == "gs://b/p" and pyarrow_uri("hdfs://nn:8020/p") == "hdfs://nn:8020/p"
    # (a region in the URI keeps pyarrow from asking AWS for it: no network here)
    loc = location("s3a://bucket/out?region=us-east-1")
    assert isinstance(loc.fs, pafs.S3FileSystem) and loc.path == "bucket/out"
    assert loc.uri.startswith("s3a://bucket/out"), "Spark and delta-rs must keep the s3a:// scheme"
