"""The decord backend of ``pipeline.decode`` (``get_decoder("decord")``): decord.VideoReader, sampling by PTS as
``PyAVDecoder`` does. Optional (decord is imported when it is used); see ``DecordDecoder`` for why it is not the
default.
"""
from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from .decode import _EPS, PtsSampler, _chunks, _pack, _reorder
from .video import DecodeError, display_rotation, open_video


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
