"""A thin layer over ``pyarrow.fs`` so the driver can list, move and delete files under the output
root whether it is a local path, ``hdfs://``, ``s3://`` or ``gs://``. Spark's ``s3a://`` is opened
by pyarrow as ``s3://`` while Spark and delta-rs keep seeing ``s3a://`` (outside EMR, Hadoop has
no filesystem for ``s3://``). Runs on the driver only.
"""

from __future__ import annotations

import os
import uuid
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
        """Write ``data`` to this path in place (parent directories created). Not atomic: a
        driver killed meanwhile can leave a partial or empty file; see :meth:`write_bytes_atomic`."""
        parent = self.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def write_bytes_atomic(self, data: bytes) -> None:
        """Write ``data`` so that a reader (or a later run) finds the old content or the new one,
        never a partial or empty file.

        The bytes go to a temporary file ``.<name>.<random>.tmp`` in the same directory, which is
        then renamed over this path. On a local disk the file is fsynced, renamed with
        ``os.replace`` (atomic on POSIX) and the directory fsynced, so the new content survives
        a crash of the machine too. On other filesystems the rename is pyarrow's ``move``:
        on HDFS a rename (an existing target is deleted first, so a kill in between leaves only
        the temporary file); on object stores (S3, GCS) a move is a server-side copy and a delete:
        the target object still appears whole, but the temporary object can be left behind by a
        kill. Callers that list the directory should skip ``.``-prefixed ``.tmp`` names.

        Parameters
        ----------
        data : bytes
            The whole new content of the file.
        """
        parent, name = self.path.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            if self.is_local:
                _write_local_durably(tmp, data)
                os.replace(tmp, self.path)
                _fsync_dir(parent)
            else:
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                self.fs.move(tmp, self.path)
        except BaseException:
            try:
                Location(self.fs, tmp, tmp).delete()
            except Exception:  # best effort: never hide the write's own error
                pass
            raise

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def move_to(self, dest: "Location") -> None:
        parent = dest.path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        self.fs.move(self.path, dest.path)


def is_temp_name(base_name: str) -> bool:
    """Whether ``base_name`` is a temporary file of :meth:`Location.write_bytes_atomic`."""
    return base_name.startswith(".") and base_name.endswith(".tmp")


def _write_local_durably(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
