"""A thin layer over ``pyarrow.fs`` so the driver can list, move and delete files under the output
root whether it is a local path, ``hdfs://``, ``s3://`` or ``gs://``. Spark's ``s3a://`` is opened
by pyarrow as ``s3://`` while Spark and delta-rs keep seeing ``s3a://`` (outside EMR, Hadoop has
no filesystem for ``s3://``). Runs on the driver only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path inside it, and the URI Spark and delta-rs should use."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        sep = "/"
        path = sep.join([self.path.rstrip(sep), *parts])
        uri = sep.join([self.uri.rstrip(sep), *parts])
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def delete(self) -> None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def files(self, recursive: bool = True) -> list[pafs.FileInfo]:
        if not self.is_dir():
            return []
        sel = pafs.FileSelector(self.path, recursive=recursive)
        return [i for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]

    def write_bytes(self, data: bytes) -> None:
        parent = self.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def move_to(self, dest: "Location") -> None:
        parent = dest.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        self.fs.move(self.path, dest.path)


def location(path_or_uri: str) -> Location:
    """Resolve a local path or URI. Local paths become absolute (Spark and delta-rs agree then)."""
    if "://" not in path_or_uri:
        p = os.path.abspath(path_or_uri)
        return Location(pafs.LocalFileSystem(), p, p)
    uri = path_or_uri
    if uri.startswith("file://"):
        p = uri[len("file://"):]
        return Location(pafs.LocalFileSystem(), p, p)
    fs, path = pafs.FileSystem.from_uri(pyarrow_uri(uri))
    return Location(fs, path, uri)


def pyarrow_uri(uri: str) -> str:
    """The URI pyarrow understands for a Hadoop-style one: ``s3a://`` and ``s3n://`` are ``s3://``."""
    if uri.startswith(("s3a://", "s3n://")):
        return "s3://" + uri.split("://", 1)[1]
    return uri
