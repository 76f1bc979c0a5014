"""Video decoding: sample frames by presentation timestamp (PTS), in bounded chunks.

Two backends share one small protocol (:class:`Decoder`):

* :class:`PyAVDecoder` (default): accurate, threaded, memory-bounded.
* :class:`DecordDecoder`: decord.VideoReader; optional, see its docstring for why it is not the default.

Sampling rule (both backends): with an analysis rate ``fps`` the grid times are ``t_k = k / fps``
(k = 0, 1, 2, ...). Frames are walked in presentation order; a frame is kept when its PTS is at or
after the next grid time, and the grid then moves to the first grid time after that frame's PTS.
So every grid point picks at most one frame, and variable-frame-rate files are sampled by their
real timestamps, never by ``index / fps``. ``fps`` of None or <= 0 keeps every frame. A time shard that
starts at grid time ``T`` starts its grid there (``PtsSampler(fps, T)``) and keeps the same frames as one pass.

``iter_frames`` yields the sampled frames one by one (``(index, time_s, uint8[H, W, 3])``), optionally from a start
time (seeking to the keyframe before it: indices then count from that keyframe, see ``iter_frames``).

Chunks are dicts of numpy arrays::

    {"frame_index": int64[n],   # 0-based index in the decoded stream
     "time_s": float64[n],      # PTS in seconds (as PyAV's frame.time reports it)
     "frames": uint8[n, H, W, 3]}  # RGB, upright (display rotation applied)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import av
import numpy as np

__all__ = [
    "DecodeError",
    "NotAVideoError",
    "Decoder",
    "PyAVDecoder",
    "DecordDecoder",
    "get_decoder",
    "open_video",
    "display_rotation",
    "rotate_upright",
    "PtsSampler",
    "sampling_step",
]

_EPS = 1e-6  # seconds; absorbs float error when a PTS lies exactly on a grid time
_RESEEK_GAP_S = 2.0  # read_frames: seek again instead of decoding through gaps longer than this
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


def _max_fps(stream) -> float:
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


# --------------------------------------------------------------------------- sampling / chunks


class PtsSampler:
    """Keeps the first frame at or after each grid time k/fps (see module docstring), from grid time ``start_s``."""

    def __init__(self, fps: float | None, start_s: float = 0.0):
        self.fps = float(fps) if fps and fps > 0 else None
        self.next_t = start_s if start_s > 0 else -math.inf

    def keep(self, t: float) -> bool:
        if self.fps is None:
            return True
        if self.next_t == -math.inf:
            self.next_t = 0.0
        if t < self.next_t - _EPS:
            return False
        self.next_t = (math.floor(t * self.fps + _EPS * self.fps) + 1) / self.fps
        return True


def sampling_step(fps: float | None, native_fps: float | None) -> float:
    """The nominal interval between sampled frames: 1 / fps, or one frame when the video is slower than that
    (or every frame is kept); 1/30 s when neither rate is known."""
    rates = [r for r in (fps, native_fps) if r and r > 0]
    return 1.0 / min(rates) if rates else 1.0 / 30


def grid_time(t: float, fps: float | None) -> float:
    """The sampling grid time k / fps at or before ``t`` (a time shard starts there)."""
    return math.floor(t * fps + _EPS) / fps if fps and fps > 0 else t


def _pack(indices: list[int], times: list[float], frames: list[np.ndarray]) -> dict:
    arr = np.stack(frames).astype(np.uint8, copy=False) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    return {
        "frame_index": np.asarray(indices, dtype=np.int64),
        "time_s": np.asarray(times, dtype=np.float64),
        "frames": arr,
    }


def _reorder(got: dict[int, tuple[float, np.ndarray]], requested: np.ndarray) -> dict:
    """Pack found frames in the requested order (repeated indices repeat the frame)."""
    keys = [int(i) for i in requested]
    return _pack(keys, [got[k][0] for k in keys], [got[k][1] for k in keys])


class Decoder(Protocol):
    name: str

    def iter_chunks(self, path: str | os.PathLike, fps: float | None = 8.0, chunk_size: int = 32) -> Iterator[dict]:
        """Yield chunks (at most ``chunk_size`` frames) of frames sampled by PTS at ``fps``.

        The generator's return value (``n = yield from ...``) is the number of frames decoded in all."""
        ...

    def read_frames(
        self, path: str | os.PathLike, frame_indices: Sequence[int], times_s: Sequence[float] | None = None
    ) -> dict:
        """Decode only the listed frames (0-based decoded-stream indices), in the requested order.

        ``times_s`` (their PTS, as iter_chunks reported them) lets a backend seek instead of decoding
        from the start. The result is identical to what ``iter_chunks(fps=None)`` gives at those indices.
        """
        ...


# --------------------------------------------------------------------------- PyAV


class PyAVDecoder:
    """Default backend: PyAV with threaded decoding (``thread_type = "AUTO"``; one thread for frames above 4K, whose
    queue of frames in threads would hold hundreds of MB).

    Decodes frame by frame and holds at most one chunk of RGB frames, so memory stays bounded
    on long files. Frames without a PTS get the previous PTS + 1/native fps.
    """

    name = "pyav"

    def __init__(self, threads: int = 0):
        self.threads = threads  # 0 = FFmpeg's choice

    def _open(self, path):
        container, stream = open_video(path)
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        if stream.codec_context.width * stream.codec_context.height > 3840 * 2160:
            stream.codec_context.thread_count = 1  # one 8K frame is 100 MB: no queue of frames in threads
        return container, stream

    def _frames(self, path, container, stream) -> Iterator[tuple[int, float, "av.VideoFrame"]]:
        """(index, time_s, frame) for every decoded frame; FFmpeg errors become DecodeError.

        Packets are demuxed here (not ``container.decode``) to see the demuxer's corrupt flag: with
        frame threading FFmpeg swallows the decoder's error for a truncated last packet, so a file
        cut mid-stream would otherwise just end early without any error.
        """
        step = 1.0 / (native_fps(stream) or 30.0)
        index, prev_t = 0, None
        last_corrupt = None  # byte offset of the last non-empty packet, when it was flagged corrupt
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets, None)
                if packet is None:
                    break
                if packet.size:
                    last_corrupt = (packet.pos if packet.pos is not None else -1) if packet.is_corrupt else None
                frames = packet.decode()
            except (av.error.FFmpegError, OSError) as exc:
                raise DecodeError(f"{path}: decode failed at frame {index}: {exc}") from exc
            for frame in frames:
                if frame.pts is not None and frame.time is not None:
                    t = float(frame.time)
                else:
                    t = 0.0 if prev_t is None else prev_t + step
                prev_t = t
                yield index, t, frame
                index += 1
        if last_corrupt is not None:
            raise DecodeError(
                f"{path}: decode failed at frame {index}: the file ends inside a packet "
                f"(byte {last_corrupt}); it is truncated or corrupt"
            )

    def iter_frames(self, path, fps: float | None = 8.0, start_s: float = 0.0,
                    end_s: float | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
        """Sampled frames with start_s <= PTS < end_s, one by one: (index, time_s, uint8 RGB [H,W,3] upright).
        The return value is the number of frames decoded. With ``start_s > 0`` it seeks to the keyframe before
        ``start_s`` and ``index`` counts from there (the caller learns the offset where shards overlap)."""
        sampler = PtsSampler(fps, start_s)
        container, stream = self._open(path)
        try:
            if start_s > 0:
                try:
                    container.seek(int(math.floor(start_s / stream.time_base)), stream=stream, backward=True)
                except (av.error.FFmpegError, OSError) as exc:
                    raise DecodeError(f"{path}: cannot seek to {start_s:.3f}s: {exc}") from exc
            rotation, n_seen = None, 0
            for i, t, frame in self._frames(path, container, stream):
                if end_s is not None and t >= end_s:
                    break
                n_seen += 1
                if rotation is None:
                    rotation = display_rotation(stream, frame)
                if t >= start_s - _EPS and sampler.keep(t):
                    yield i, t, rotate_upright(frame.to_ndarray(format="rgb24"), rotation)
            if n_seen == 0 and start_s <= 0:
                raise DecodeError(f"{path}: no decodable video frames")
            return n_seen
        finally:
            container.close()

    def iter_chunks(self, path, fps: float | None = 8.0, chunk_size: int = 32) -> Iterator[dict]:
        return _chunks(self.iter_frames(path, fps), chunk_size)

    def read_frames(self, path, frame_indices, times_s=None) -> dict:
        requested = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if times_s is not None and len(times_s) != len(requested):
            raise ValueError("times_s must have the same length as frame_indices")
        if requested.size == 0:
            return _pack([], [], [])
        if requested.min() < 0:
            raise ValueError("frame indices must be >= 0")
        got: dict[int, tuple[float, np.ndarray]] = {}
        if times_s is not None:
            wanted = {int(i): float(t) for i, t in zip(requested, times_s)}
            got = self._read_by_time(path, wanted)
        missing = sorted(set(int(i) for i in requested) - set(got))
        if missing:  # no times given, or seeking did not find them: exact sequential pass
            got.update(self._read_sequential(path, missing))
        return _reorder(got, requested)

    def _read_sequential(self, path, wanted: list[int]) -> dict[int, tuple[float, np.ndarray]]:
        todo, last = set(wanted), max(wanted)
        got: dict[int, tuple[float, np.ndarray]] = {}
        container, stream = self._open(path)
        try:
            rotation = None
            for i, t, frame in self._frames(path, container, stream):
                if rotation is None:
                    rotation = display_rotation(stream, frame)
                if i in todo:
                    got[i] = (t, rotate_upright(frame.to_ndarray(format="rgb24"), rotation))
                if i >= last:
                    break
        finally:
            container.close()
        if len(got) != len(todo):
            lost = sorted(todo - set(got))
            raise DecodeError(f"{path}: frame indices {lost[:10]} not in the video (it has fewer frames)")
        return got

    def _read_by_time(self, path, wanted: dict[int, float]) -> dict[int, tuple[float, np.ndarray]]:
        """Seek to the keyframe before each run of wanted times and match decoded frames by PTS.

        A frame matches a wanted time when they differ by at most half the shortest frame period.
        Frames not found are left out (the caller falls back to a sequential pass).
        """
        pending = sorted(wanted.items(), key=lambda kv: kv[1])  # (index, time) by time
        got: dict[int, tuple[float, np.ndarray]] = {}
        container, stream = self._open(path)
        try:
            tol = 0.5 / _max_fps(stream)
            tb = stream.time_base
            step = 1.0 / (native_fps(stream) or 30.0)
            rotation = None
            j = 0
            while j < len(pending):
                target = pending[j][1]
                try:
                    container.seek(int(math.floor((target - tol) / tb)), stream=stream, backward=True)
                except (av.error.FFmpegError, OSError):
                    break  # not seekable (e.g. raw elementary stream): sequential fallback
                prev_t = None
                try:
                    for frame in container.decode(stream):
                        if frame.pts is not None:
                            t = float(frame.time)
                        elif prev_t is not None:
                            t = prev_t + step
                        else:
                            continue  # cannot place this frame in time right after a seek
                        prev_t = t
                        if rotation is None:
                            rotation = display_rotation(stream, frame)
                        while j < len(pending) and t > pending[j][1] + tol:
                            j += 1  # passed without a match: the sequential fallback gets it
                        if j == len(pending):
                            break
                        if abs(t - pending[j][1]) <= tol:
                            got[pending[j][0]] = (t, rotate_upright(frame.to_ndarray(format="rgb24"), rotation))
                            j += 1
                            if j < len(pending) and pending[j][1] - t > _RESEEK_GAP_S:
                                break  # long gap: seek again (progress is made: j advanced)
                    else:
                        break  # end of stream: whatever is left goes to the fallback
                except (av.error.FFmpegError, OSError) as exc:
                    raise DecodeError(f"{path}: decode failed near t={target:.3f}s: {exc}") from exc
        finally:
            container.close()
        return got


# --------------------------------------------------------------------------- decord


class DecordDecoder:
    """decord.VideoReader backend. Not the default: decord is known to leak memory on long files
    (its reader keeps decoded state around), and in 0.6 it mishandles some files:

    * MP4/MOV edit lists: decord counts the pre-roll packets (negative PTS) that FFmpeg drops, so its
      frame count is too high and its timestamps are shifted by those frames; the decoded pictures
      themselves line up by index, and the tail is padded with copies of the last frame. We drop the
      leading negative-PTS timestamps and the padded tail, which makes it agree with PyAV.
    * Rotation: decord applies the display rotation itself. 180 degrees comes out right; +-90 degrees
      yields a buffer of the wrong shape (garbage), so such files raise DecodeError (use PyAV).

    The file is first checked with PyAV (:func:`open_video`) so bad inputs give the same clear errors.
    """

    name = "decord"

    def __init__(self, num_threads: int = 0):
        self.num_threads = num_threads

    def _open(self, path):
        import decord

        container, stream = open_video(path)
        try:
            first = next(container.decode(stream), None)
            rotation = display_rotation(stream, first)
        except (av.error.FFmpegError, OSError) as exc:
            raise DecodeError(f"{path}: decode failed at frame 0: {exc}") from exc
        finally:
            container.close()
        if rotation in (90, -90):
            raise DecodeError(f"{path}: rotated by {rotation} degrees; decord 0.6 mis-decodes that, use the pyav backend")
        try:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=self.num_threads)
            n = len(vr)
            ts = vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64) if n else np.zeros(0)
        except decord.DECORDError as exc:
            raise DecodeError(f"{path}: decord cannot open it: {exc}") from exc
        skip = int(np.argmax(ts >= -_EPS)) if n and (ts >= -_EPS).any() else 0
        times = ts[skip:]  # times[i] is the PTS of decoded picture i
        if times.size == 0:
            raise DecodeError(f"{path}: no decodable video frames")
        return vr, times

    def _batch(self, path, vr, indices: list[int]) -> np.ndarray:
        import decord

        try:
            return vr.get_batch(indices).asnumpy()
        except decord.DECORDError as exc:
            raise DecodeError(f"{path}: decode failed at frame {indices[0]}: {exc}") from exc

    def iter_frames(self, path, fps: float | None = 8.0, start_s: float = 0.0,
                    end_s: float | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
        """As PyAVDecoder.iter_frames; indices are always the stream's own (decord reads by index)."""
        vr, times = self._open(path)
        sampler = PtsSampler(fps, start_s)
        inside = [i for i, t in enumerate(times) if t >= start_s - _EPS and (end_s is None or t < end_s)]
        keep = [i for i in inside if sampler.keep(float(times[i]))]
        for s in range(0, len(keep), 8):  # decord decodes a batch of indices at once
            idx = keep[s: s + 8]
            for i, frame in zip(idx, self._batch(path, vr, idx)):
                yield i, float(times[i]), frame
        return inside[-1] + 1 if inside else 0  # frames up to the last one in range, as PyAV counts them

    def iter_chunks(self, path, fps: float | None = 8.0, chunk_size: int = 32) -> Iterator[dict]:
        return _chunks(self.iter_frames(path, fps), chunk_size)

    def read_frames(self, path, frame_indices, times_s=None) -> dict:
        requested = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if requested.size == 0:
            return _pack([], [], [])
        vr, times = self._open(path)
        bad = requested[(requested < 0) | (requested >= len(times))]
        if bad.size:
            raise DecodeError(f"{path}: frame indices {bad[:10].tolist()} not in the video ({len(times)} frames)")
        uniq = sorted(set(int(i) for i in requested))
        frames = self._batch(path, vr, uniq)
        got = {i: (float(times[i]), frames[k]) for k, i in enumerate(uniq)}
        return _reorder(got, requested)


def _chunks(frames: Iterator[tuple[int, float, np.ndarray]], chunk_size: int) -> Iterator[dict]:
    """Frames one by one -> chunks of at most ``chunk_size``; returns the frames' generator's return value."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    idx, times, arrays = [], [], []
    while True:
        try:
            i, t, a = next(frames)
        except StopIteration as stop:
            if arrays:
                yield _pack(idx, times, arrays)
            return stop.value
        idx.append(i)
        times.append(t)
        arrays.append(a)
        if len(arrays) >= chunk_size:
            yield _pack(idx, times, arrays)
            idx, times, arrays = [], [], []


# --------------------------------------------------------------------------- factory


def get_decoder(name: str = "pyav") -> Decoder:
    """"pyav" (default, accurate) or "decord"."""
    key = (name or "pyav").lower()
    if key == "pyav":
        return PyAVDecoder()
    if key == "decord":
        return DecordDecoder()
    raise ValueError(f"unknown decoder {name!r}; use 'pyav' or 'decord'")
