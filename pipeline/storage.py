"""Where inputs and outputs live: a local path, or a URI of any filesystem pyarrow knows (``s3://bucket/key``,
``gs://bucket/key``, ``hdfs://...``, ``file:///...``), so a cluster without a shared disk reads its videos from and
writes its cache and timelines to an object store.

Credentials and endpoints come from the environment, where pyarrow reads them (S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server; GCS: the
Google credentials), on every node of the cluster.

Writes are atomic on both: locally a temp file in the same folder renamed over the target
(``s2d_model.files.atomic_write``); on an object store the object is uploaded whole and becomes visible only when
the upload completes (one PUT, or a multipart upload completed at close), so a reader sees the old object or the
new one, never a part, and a failed upload leaves nothing. What object stores lack is a rename of several objects
at once: a cache entry (faces, then meta) is complete only once its meta object exists, as on disk.

A local write that finds the disk full (or the quota spent) raises ``NoSpace``, one line naming the folder and its
free space; ``check_writable`` tries a folder before any work and raises ``NotWritable``, one line with the reason.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs

from s2d_model.files import atomic_write


class _OneLine(OSError):
    """An OSError whose str is its message alone (no ``[Errno N]``); built as ``OSError(errno, message)``, so
    ``errno`` is kept and it pickles (Ray sends it from a worker)."""

    def __str__(self) -> str:
        return str(self.strerror)


class NoSpace(_OneLine):
    """A local write that found no space left (ENOSPC) or the disk quota spent (EDQUOT)."""


class NotWritable(_OneLine):
    """An output folder that cannot be written to: "cannot write to OUT: <reason>"."""


def is_uri(path) -> bool:
    """A filesystem URI (``scheme://...``), not a local path (``file://`` counts as a URI too)."""
    return "://" in str(path)


def filesystem(path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, its path) of a local path or URI."""
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(str(path))
        except Exception as exc:  # unknown scheme, bad bucket name, no credentials for the scheme ...
            raise ValueError(f"{path}: not a filesystem URI pyarrow can open ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().absolute())


def location(path) -> Path | str:
    """A local path as a Path, a URI as a str (pathlib would fold its ``//``)."""
    return str(path) if is_uri(path) else Path(path)


def absolute(path) -> Path | str:
    """A URI as it is; a local path expanded (``~``) and resolved, so a worker elsewhere can use it."""
    return str(path) if is_uri(path) else Path(path).expanduser().resolve()


def beside(path, rel: str) -> Path | str:
    """A path written in the file at ``path`` (a CSV row): a URI or an absolute path as it is, else relative to that
    file's folder."""
    return location(rel) if is_uri(rel) or Path(rel).is_absolute() else join(parent(path), rel)


def join(base, *names: str) -> Path | str:
    """``base/name/...``: a Path for a local ``base``, a URI for a URI."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base, *names)


def parent(path) -> Path | str:
    """The folder a path or URI is in."""
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_uri(path) else Path(path).parent


def name(path) -> str:
    """The last part of a path or URI."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def info(path) -> pafs.FileInfo:
    fs, p = filesystem(path)
    return fs.get_file_info(p)


def is_file(path) -> bool:
    return info(path).type == pafs.FileType.File


def is_dir(path) -> bool:
    return info(path).type == pafs.FileType.Directory


def exists(path) -> bool:
    return info(path).type != pafs.FileType.NotFound


def files(path, recursive: bool = True) -> list[pafs.FileInfo]:
    """The files under a folder (or prefix), sorted by path; their ``path`` is a URI again for a URI folder."""
    fs, p = filesystem(path)
    found = fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True))
    if not is_uri(path):
        return sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)
    scheme = str(path).split("://", 1)[0]
    return sorted((pafs.FileInfo(f"{scheme}://{f.path}", f.type, mtime=f.mtime, size=f.size)
                   for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)


def open_input(path):
    """A seekable binary file (what PyAV and pyarrow.parquet read from)."""
    if not is_uri(path):
        return open(Path(path).expanduser(), "rb")
    fs, p = filesystem(path)
    return fs.open_input_file(p)


def read_bytes(path) -> bytes:
    with open_input(path) as f:
        return f.read()


def read_text(path, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write(path, data: bytes | str | Callable[[IO[bytes]], object]) -> Path | str:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes to a binary file) atomically (see the
    module docstring); creates the local folder. Returns the path. A full disk or spent quota raises ``NoSpace``
    (the temp file is removed; the file written before, if any, is kept)."""
    if not is_uri(path):
        try:
            return atomic_write(path, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            folder = Path(path).expanduser().absolute().parent
            free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.is_dir())).free / 2**20
            what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
            raise NoSpace(exc.errno, f"{what} in {folder} ({free:.1f} MiB free): free some space and run again; "
                                     "what is done is kept") from exc
    import io

    buf = io.BytesIO()
    if callable(data):
        data(buf)
    else:
        buf.write(data.encode() if isinstance(data, str) else data)
    fs, p = filesystem(path)
    with fs.open_output_stream(p) as f:  # the object appears when the stream closes, whole
        f.write(buf.getvalue())
    return str(path)


def remove(path) -> None:
    """Delete a file or object if it exists."""
    if not is_uri(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, p = filesystem(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def check_output(path) -> None:
    """An output folder: NotADirectoryError when it is an existing file."""
    if is_file(path):
        raise NotADirectoryError(f"{path} is a file, not a folder: pass a folder for the outputs")


def check_writable(path) -> None:
    """Before any work: write a small hidden probe file (object) in the output folder and remove it, and the
    folders it had to create for it (a run that stops later for another reason leaves nothing). ``NotWritable``
    if that fails: "cannot write to OUT: <reason>" (read-only file system, permission denied, an immutable folder,
    a file in the path, ...)."""
    probe = f".s2d-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if is_uri(path):
            write(join(path, probe), b"s2d")
            remove(join(path, probe))
            return
        folder = Path(path).expanduser().absolute()
        made = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / probe, "xb") as f:
                f.write(b"s2d")
        finally:
            (folder / probe).unlink(missing_ok=True)
            for p in made:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()
    except OSError as exc:
        raise NotWritable(exc.errno, f"cannot write to {path}: {_reason(exc, path)}") from exc


def _reason(exc: OSError, path) -> str:
    """Why a write failed, in a few words."""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not is_uri(path):
        folder = Path(path).expanduser().absolute()
        file = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        if file is not None:
            return f"{file} is a file, not a folder"
    if exc.errno == errno.EPERM:
        return "operation not permitted (is the folder immutable? see lsattr -d)"
    said = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    return said[:1].lower() + said[1:] if said[1:2].islower() else said


def read_table(path, **kw):
    """``pyarrow.parquet.read_table`` of a local path or URI."""
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    return pq.read_table(p, filesystem=fs, **kw)


def folders(path) -> list[str]:
    """Names of the folders (prefixes) directly under ``path``, sorted."""
    fs, p = filesystem(path)
    found = fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True))
    return sorted(f.base_name for f in found if f.type == pafs.FileType.Directory)
