"""Opening a video file and reading its frames: clear errors for what is not a video, the stream's nominal rate,
the display rotation, and ``FrameClock``, the rule that gives every decoded frame its index and time.

Frame index and time (``FrameClock``; every reader here counts frames this way, so the landmark cache's
``frame_index`` and ``time_s`` name the same picture whoever decodes it): frames are counted from 0 in decoding
order; a frame's time is its PTS in seconds, or, for a frame without a PTS, the previous frame's time plus one
nominal frame interval (1 / native fps, 1/30 s when unknown; 0 for a first frame). Pictures are made upright with
the display rotation of the first frame.
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

_IMAGE_FORMATS = {"image2", "image2pipe"}  # FFmpeg demuxers for still images (plus any "*_pipe")


class DecodeError(Exception):
    """A video cannot be opened or decoded. The message names the file and the reason."""


class NotAVideoError(DecodeError):
    """The file is readable media but holds no video (audio-only, still image)."""


# --------------------------------------------------------------------------- opening / errors


def _is_utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the sample
    return True


def _sniff_reason(path) -> str:
    """A human reason for a file FFmpeg refuses to open, from its first bytes."""
    from . import storage

    try:
        with storage.open_input(path) as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    if head[4:8] == b"ftyp":
        return "MP4/QuickTime file that cannot be parsed: truncated or corrupt (index 'moov' missing or damaged)"
    if head and b"\0" not in head and _is_utf8(head):
        return "not a media file (looks like text)"
    return "not a media file, or a corrupt/unsupported container"


def open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` with PyAV and return (container, first video stream).

    Raises DecodeError with a clear reason: missing, directory, empty (0 bytes), permission denied,
    not a media file / truncated, still image, no video stream (e.g. audio-only).
    The caller closes the container. A URI (``s3://...``) is read through pyarrow's filesystem.
    """
    from . import storage

    if storage.is_uri(path):
        return _open_uri(str(path))
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise DecodeError(f"{path}: broken symbolic link (to {os.readlink(p)}, which does not exist)") from None
        raise DecodeError(f"{path}: file not found") from None
    except PermissionError:
        raise DecodeError(f"{path}: permission denied (cannot stat)") from None
    except OSError as exc:
        raise DecodeError(f"{path}: cannot stat file ({exc})") from None
    if p.is_dir():
        raise DecodeError(f"{path}: is a directory, not a video file")
    if st.st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise DecodeError(f"{path}: permission denied (file is not readable)")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except PermissionError:
        raise DecodeError(f"{path}: permission denied (file is not readable)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"{path}: {_sniff_reason(p)} [ffmpeg: {exc}]") from exc
    return _video_stream(container, path)


def _open_uri(uri: str):
    """``open_video`` for an object in a filesystem pyarrow knows (read through a seekable pyarrow file)."""
    from pyarrow.fs import FileType

    from . import storage

    try:
        found = storage.info(uri)
    except (OSError, ValueError) as exc:
        raise DecodeError(f"{uri}: cannot reach it ({exc})") from None
    if found.type == FileType.NotFound:
        raise DecodeError(f"{uri}: file not found")
    if found.type == FileType.Directory:
        raise DecodeError(f"{uri}: is a directory, not a video file")
    if found.size == 0:
        raise DecodeError(f"{uri}: empty file (0 bytes)")
    try:
        container = av.open(storage.open_input(uri), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as exc:
        raise DecodeError(f"{uri}: {_sniff_reason(uri)} [ffmpeg: {exc}]") from exc
    return _video_stream(container, uri)


def _video_stream(container, path):
    """(container, its first video stream), or NotAVideoError (closed) for no video stream or a still image."""
    fmt = container.format.name
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        if kinds == ["audio"]:
            raise NotAVideoError(f"{path}: no video stream (audio-only file)")
        raise NotAVideoError(f"{path}: no video stream (streams: {', '.join(kinds) or 'none'})")
    if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
        container.close()
        raise NotAVideoError(f"{path}: still image ({fmt}) of a kind not read here: images must be JPEG, PNG, "
                             "WebP or BMP")
    return container, container.streams.video[0]


def native_fps(stream) -> float:
    """Nominal frame rate of a stream (average_rate, else guessed_rate); 0.0 when unknown."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def max_fps(stream) -> float:
    """Highest plausible frame rate (for matching tolerances): r_frame_rate is the max rate of a VFR file."""
    rates = [float(r) for r in (stream.guessed_rate, stream.base_rate, stream.average_rate) if r]
    return max(rates) if rates else 30.0


def _normalize_rotation(deg: float) -> int:
    """Round to a multiple of 90 in {0, 90, 180, -90}."""
    k = int(round(deg / 90.0)) % 4
    return {0: 0, 1: 90, 2: 180, 3: -90}[k]


def display_rotation(stream, frame=None) -> int:
    """Counter-clockwise display rotation in degrees (0, 90, 180, -90).

    PyAV 18 exposes the display matrix only per frame (``VideoFrame.rotation``, FFmpeg's
    ``av_display_rotation_get``: the angle the display transform rotates the frame counter-clockwise).
    Older FFmpeg builds exported a ``rotate`` stream tag instead (clockwise degrees); used as a fallback.
    """
    if frame is not None and frame.rotation:
        return _normalize_rotation(frame.rotation)
    tag = stream.metadata.get("rotate") if stream.metadata else None
    if tag:
        try:
            return _normalize_rotation(-float(tag))
        except ValueError:
            pass
    return 0


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation to an HxWxC image (np.rot90 rotates counter-clockwise)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


class FrameClock:
    """Index, time and upright picture of each frame of ``stream``, in decoding order (see the module docstring):
    ``tick`` every decoded frame once, in order; ``restart`` after a seek."""

    def __init__(self, stream):
        self.stream = stream
        self.step = 1.0 / (native_fps(stream) or 30.0)  # the nominal frame interval
        self.index = 0  # frames ticked: the next frame's index
        self.prev_t: float | None = None
        self.rotation: int | None = None

    def restart(self) -> None:
        """After a seek: the next frame without a PTS has no previous time to follow."""
        self.prev_t = None

    def tick(self, frame) -> tuple[int, float]:
        """(index, time_s) of the next decoded frame."""
        if frame.pts is not None and frame.time is not None:
            t = float(frame.time)
        else:
            t = 0.0 if self.prev_t is None else self.prev_t + self.step
        self.prev_t = t
        if self.rotation is None:
            self.rotation = display_rotation(self.stream, frame)
        index, self.index = self.index, self.index + 1
        return index, t

    def upright(self, frame) -> np.ndarray:
        """A ticked frame as uint8 RGB [H, W, 3], display rotation applied."""
        return rotate_upright(frame.to_ndarray(format="rgb24"), self.rotation)
