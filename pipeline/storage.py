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
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO

import pyarrow.fs as pafs

from s2d_model.files import atomic_write


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
    module docstring); creates the local folder. Returns the path."""
    if not is_uri(path):
        return atomic_write(path, data)
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
