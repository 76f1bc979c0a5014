"""Video decoding: sample frames by presentation timestamp (PTS), in bounded chunks.

Two backends share one small protocol (:class:`Decoder`):

* :class:`PyAVDecoder` (default): accurate, threaded, memory-bounded.
* ``DecordDecoder`` (``pipeline.decord_decoder``): decord.VideoReader; optional, see its docstring for why it is
  not the default.

Opening a video (with clear errors) and the index and time of each decoded frame are ``pipeline.video``'s
(``FrameClock``: index in decoding order; the PTS, or the previous frame's time plus one frame interval for a frame
without one); the overlay counts its frames with the same clock.

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
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import av
import numpy as np

from .video import (DecodeError, FrameClock, NotAVideoError, display_rotation, max_fps, native_fps, open_video,
                    rotate_upright)

__all__ = [
    "DecodeError",
    "NotAVideoError",
    "Decoder",
    "PyAVDecoder",
    "get_decoder",
    "open_video",
    "display_rotation",
    "native_fps",
    "rotate_upright",
    "PtsSampler",
    "sampling_step",
    "grid_time",
]

_EPS = 1e-6  # seconds; absorbs float error when a PTS lies exactly on a grid time
_RESEEK_GAP_S = 2.0  # read_frames: seek again instead of decoding through gaps longer than this


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

    def _frames(self, path, container, clock: FrameClock) -> Iterator[tuple[int, float, av.VideoFrame]]:
        """(index, time_s, frame) for every decoded frame, by ``clock``; FFmpeg errors become DecodeError.

        Packets are demuxed here (not ``container.decode``) to see the demuxer's corrupt flag: with
        frame threading FFmpeg swallows the decoder's error for a truncated last packet, so a file
        cut mid-stream would otherwise just end early without any error.
        """
        last_corrupt = None  # byte offset of the last non-empty packet, when it was flagged corrupt
        packets = container.demux(clock.stream)
        while True:
            try:
                packet = next(packets, None)
                if packet is None:
                    break
                if packet.size:
                    last_corrupt = (packet.pos if packet.pos is not None else -1) if packet.is_corrupt else None
                frames = packet.decode()
            except (av.error.FFmpegError, OSError) as exc:
                raise DecodeError(f"{path}: decode failed at frame {clock.index}: {exc}") from exc
            for frame in frames:
                yield *clock.tick(frame), frame
        if last_corrupt is not None:
            raise DecodeError(
                f"{path}: decode failed at frame {clock.index}: the file ends inside a packet "
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
            clock, n_seen = FrameClock(stream), 0
            for i, t, frame in self._frames(path, container, clock):
                if end_s is not None and t >= end_s:
                    break
                n_seen += 1
                if t >= start_s - _EPS and sampler.keep(t):
                    yield i, t, clock.upright(frame)
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
            clock = FrameClock(stream)
            for i, t, frame in self._frames(path, container, clock):
                if i in todo:
                    got[i] = (t, clock.upright(frame))
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
            tol = 0.5 / max_fps(stream)
            clock, j, more = FrameClock(stream), 0, True
            while more and j < len(pending):
                target = pending[j][1]
                try:
                    container.seek(int(math.floor((target - tol) / stream.time_base)), stream=stream, backward=True)
                except (av.error.FFmpegError, OSError):
                    break  # not seekable (e.g. raw elementary stream): sequential fallback
                clock.restart()
                try:
                    j, more = _match_times(container.decode(stream), clock, pending, j, tol, got)
                except (av.error.FFmpegError, OSError) as exc:
                    raise DecodeError(f"{path}: decode failed near t={target:.3f}s: {exc}") from exc
        finally:
            container.close()
        return got


def _match_times(frames, clock: FrameClock, pending: list, j: int, tol: float, got: dict) -> tuple[int, bool]:
    """The frames decoded after a seek, matched by time to ``pending[j:]`` ((index, time) by time) into ``got``.
    Returns (the first pending position not yet matched or passed, False when the stream ended). It stops to seek
    again when the next wanted time is more than ``_RESEEK_GAP_S`` ahead."""
    for frame in frames:
        if frame.pts is None and clock.prev_t is None:
            continue  # cannot place this frame in time right after a seek
        t = clock.tick(frame)[1]
        while j < len(pending) and t > pending[j][1] + tol:
            j += 1  # passed without a match: the sequential fallback gets it
        if j == len(pending):
            return j, True
        if abs(t - pending[j][1]) <= tol:
            got[pending[j][0]] = (t, clock.upright(frame))
            j += 1
            if j < len(pending) and pending[j][1] - t > _RESEEK_GAP_S:
                return j, True  # long gap: seek again (progress is made: j advanced)
    return j, False  # end of stream: whatever is left goes to the fallback


class FrameBatches:
    """A decoder's sampled frames (index, time, array) in batches of at most ``n`` frames and ``nbytes`` (one frame
    may be larger); after the loop, ``count`` is the generator's return value (frames decoded) and ``seconds`` the
    time spent decoding."""

    def __init__(self, frames: Iterator, n: int, nbytes: float = math.inf):
        self.frames, self.n, self.nbytes, self.count, self.seconds = frames, n, nbytes, 0, 0.0

    def __iter__(self):
        batch, size = [], 0
        while True:
            t = time.perf_counter()
            try:
                item = next(self.frames)
            except StopIteration as stop:
                self.count = int(stop.value or 0)
                self.seconds += time.perf_counter() - t
                break
            self.seconds += time.perf_counter() - t
            if batch and size + item[2].nbytes > self.nbytes:
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += item[2].nbytes
            if len(batch) >= self.n or size >= self.nbytes:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch


def _chunks(frames: Iterator[tuple[int, float, np.ndarray]], chunk_size: int) -> Iterator[dict]:
    """Frames one by one -> chunks of at most ``chunk_size``; returns the frames' generator's return value."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    batches = FrameBatches(frames, chunk_size)
    for batch in batches:
        yield _pack(*map(list, zip(*batch)))
    return batches.count


# --------------------------------------------------------------------------- factory


def get_decoder(name: str = "pyav") -> Decoder:
    """"pyav" (default, accurate) or "decord"."""
    key = (name or "pyav").lower()
    if key == "pyav":
        return PyAVDecoder()
    if key == "decord":
        from importlib.util import find_spec

        if find_spec("decord") is None:
            raise ValueError("the decord decoder needs the optional decord package: pip install "
                             "'s2d-pipeline[decord]' (or use the default decoder, pyav)")
        from .decord_decoder import DecordDecoder

        return DecordDecoder()
    raise ValueError(f"unknown decoder {name!r}; use 'pyav' or 'decord'")
