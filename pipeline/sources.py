"""Finding input videos (and still images) and probing them.

* :func:`list_videos` turns files/folders into a sorted, de-duplicated list of :class:`Source`: videos and images
  (JPEG, PNG, WebP, BMP; ``pipeline.images``), each one input with its own id.
* :func:`probe` reads a video's header (and its first frame, for the rotation) into :class:`VideoInfo`,
  raising :class:`~pipeline.video.DecodeError` with a clear reason for anything that is not a video.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
from pyarrow.fs import FileType

from . import storage
from .video import DecodeError, display_rotation, native_fps, open_video
from .images import IMAGE_EXTENSIONS, is_image

__all__ = ["Source", "VideoInfo", "VIDEO_EXTENSIONS", "list_videos", "find_videos", "check_paths", "make_source",
           "probe", "is_video", "display", "DecodeError"]

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
)


@dataclass(frozen=True)
class Source:
    """One input file.

    ``video_id`` is the first 16 hex digits of sha256 over (resolved path, size, mtime_ns). That is
    cheap (one ``stat``, no file read; a content hash would read every byte of every video) and it
    changes whenever the file is rewritten or touched, so cached results of an older version are not
    reused. A file that cannot be stat'ed or read gets ``size = -1``, ``mtime = -1.0`` and an id from
    the path alone, so it still flows downstream and becomes an error row instead of vanishing.
    """

    path: str  # absolute, resolved
    video_id: str
    size: int
    mtime: float


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the (first) video stream."""

    width: int  # as displayed: swapped when rotation is +-90
    height: int
    rotation: int  # counter-clockwise display rotation in degrees: 0, 90, 180 or -90
    native_fps: float  # average_rate, else guessed_rate; 0.0 when unknown
    duration_s: float | None  # stream duration, else container duration
    header_frames: int  # nb_frames from the header (0 when absent; may disagree with decoded frames)
    codec: str
    has_audio: bool


def _hash_id(*parts) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def display(text: str) -> str:
    """``text`` as it can be written to a UTF-8 file: a path whose name is not UTF-8 (Linux names are bytes, which
    Python holds as lone surrogates) gets its odd bytes as ``\\xNN``; any other text is unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def make_source(path: str | os.PathLike) -> Source:
    """A Source for one path or URI (which need not exist or be readable). A broken symbolic link keeps its own
    path (there is nothing to resolve it to), so its error row shows the path the user gave."""
    if storage.is_uri(path):
        try:
            found = storage.info(path)
        except (OSError, ValueError):
            found = None
        if found is None or found.type != FileType.File:
            return Source(path=str(path), video_id=_hash_id(path), size=-1, mtime=-1.0)
        return Source(path=str(path), video_id=_hash_id(path, found.size, found.mtime_ns), size=int(found.size),
                      mtime=found.mtime_ns / 1e9)
    p = Path(path).expanduser()
    resolved = str(p.absolute() if p.is_symlink() and not p.exists() else p.resolve())
    try:
        st = os.stat(resolved)
        readable = os.access(resolved, os.R_OK)
    except OSError:
        st, readable = None, False
    if st is None or not readable:
        return Source(path=resolved, video_id=_hash_id(resolved), size=-1, mtime=-1.0)
    return Source(
        path=resolved,
        video_id=_hash_id(resolved, st.st_size, st.st_mtime_ns),
        size=int(st.st_size),
        mtime=float(st.st_mtime),
    )


def is_video(path: str | os.PathLike) -> bool:
    """Content probe for folder scans: PyAV opens it and finds a video stream (still images excluded).

    A file without a video stream, or one PyAV cannot open at all, counts as a video only if its extension
    says so: corrupt, truncated, unreadable or audio-only ``.mp4`` files are kept (and reported as errors
    later) rather than dropped, while an ``.m4a`` song or a ``.jpg`` is not a video.
    """
    try:
        container, _ = open_video(path)
    except DecodeError:  # NotAVideoError included
        return Path(path).suffix.lower() in VIDEO_EXTENSIONS
    container.close()
    return True


def list_videos(paths: Sequence[str | os.PathLike], recursive: bool = True, skip=()) -> list[Source]:
    """Videos and images among ``paths`` (files and/or folders), sorted by path and de-duplicated by resolved path.

    Folders are scanned (recursively by default; symlinked folders are not followed); hidden files and
    hidden folders are skipped; images are chosen by their extension (``IMAGE_EXTENSIONS``; a broken one becomes
    an error row) and every other file is content-probed with :func:`is_video` (so audio-only files such as
    ``.m4a`` and TIFF images are not videos, while a broken ``.mp4`` is; FFmpeg reads a GIF as a video); a broken
    symbolic link with a video or image extension is included (it becomes an error row). Files named explicitly
    are always included, even if unreadable or not videos: the decode stage reports them. Under a URI folder
    (``s3://bucket/videos/``) the objects are chosen by their extension, without opening each over the network.
    ``skip``: folders a scan leaves out (the run's own output and cache, when they lie inside an input folder).
    """
    found: dict[str, Source] = {}
    skip = [str(storage.absolute(s)).rstrip("/") + "/" for s in skip if s is not None]
    for arg in paths:
        if storage.is_uri(arg):
            chosen = [p for p in _uri_folder(arg, recursive) if not any(p.startswith(s) for s in skip)] \
                if storage.is_dir(arg) else [arg]
        else:
            root = Path(arg).expanduser()
            chosen = _local_folder(root, recursive, skip) if root.is_dir() else [root]
        for p in chosen:
            src = make_source(p)
            found.setdefault(src.path, src)
    return [found[k] for k in sorted(found)]


def _uri_folder(folder, recursive: bool) -> list[str]:
    """The objects under a URI folder with a video or image extension, hidden ones (or under hidden folders) not."""
    base = str(folder).rstrip("/")
    out = []
    for f in storage.files(folder, recursive):
        rel = f.path[len(base) + 1:] if f.path.startswith(base + "/") else storage.name(f.path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if Path(rel).suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS:
            out.append(f.path)
    return out


def _local_folder(root: Path, recursive: bool, skip: list[str]) -> list[Path]:
    """The videos and images under a local folder, as ``list_videos`` chooses them, in walk order; the folders
    ``skip`` (resolved, each ending in "/") are left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if f"{Path(dirpath).resolve()}/" in skip:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if name.startswith("."):
                continue
            if f.is_symlink() and not f.exists():  # broken link: a row (error) if its name says video/image
                if f.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS:
                    out.append(f)
            elif f.is_file() and (is_image(f) or is_video(f)):
                out.append(f)
    return out


def check_paths(inputs, *outputs) -> None:
    """Before any work: every input path exists (a dangling symbolic link counts: it becomes an error row) and no
    output folder is an existing file. FileNotFoundError / NotADirectoryError naming all of them."""
    def there(p) -> bool:
        if storage.is_uri(p):
            return storage.exists(p)
        return Path(p).expanduser().exists() or Path(p).expanduser().is_symlink()

    missing = [str(p) for p in inputs if not there(p)]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    for out in outputs:
        if out is not None:
            storage.check_output(out)


def find_videos(paths, skip=()) -> list[Source]:
    """``list_videos``, or FileNotFoundError when there is none."""
    sources = list_videos(paths, skip=skip)
    if not sources:
        raise FileNotFoundError(f"no videos or images found in {', '.join(map(str, paths))}")
    return sources


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the system: glibc keeps them, and the probes' first frames of large
    videos would stay with the driver for the whole run. Nothing where the C library is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the header of ``path`` and decode its first frame (for the display rotation).

    Raises DecodeError for: missing file, zero-byte file, permission denied, not a media file,
    truncated/corrupt container, still image, no video stream (e.g. audio-only), no decodable frame.
    """
    container, stream = open_video(path)
    try:
        try:
            first = next(container.decode(stream), None)
        except (av.error.FFmpegError, OSError) as exc:
            raise DecodeError(f"{path}: cannot decode the first video frame: {exc}") from exc
        if first is None:
            raise DecodeError(f"{path}: no decodable video frames")
        rotation = display_rotation(stream, first)
        cc = stream.codec_context
        width, height = int(cc.width or first.width), int(cc.height or first.height)
        if rotation in (90, -90):
            width, height = height, width
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        return VideoInfo(
            width=width,
            height=height,
            rotation=rotation,
            native_fps=native_fps(stream),
            duration_s=duration,
            header_frames=int(stream.frames or 0),
            codec=cc.name,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()
