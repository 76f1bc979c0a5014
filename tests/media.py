"""Media files for tests, written with PyAV: videos (optionally rotated or variable-frame-rate), audio-only."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10, rotation: int | None = None,
                pts_ms: list[int] | None = None, gop: int | None = None, faststart: bool = False) -> Path:
    """Encode RGB frames with libx264. rotation: counter-clockwise display rotation (display matrix).
    pts_ms: explicit (irregular) presentation times in milliseconds for a variable-frame-rate file."""
    h, w = frames[0].shape[:2]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "10", "preset": "ultrafast" if gop is None else "medium"}
        if gop is not None:
            s.codec_context.gop_size = gop
            s.options = {**s.options, "keyint_min": str(gop), "sc_threshold": "0", "bf": "2"}
        if pts_ms is not None:
            s.time_base = Fraction(1, 1000)
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_audio_only(path: Path, codec: str = "aac") -> Path:
    """A 1 s 440 Hz sine (AAC in .mp4, or MP2 in .mp2): media, but no video stream."""
    rate, fmt = 16000, {"aac": "fltp", "mp2": "s16"}[codec]
    block = 1024 if codec == "aac" else 1152
    pcm = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    pcm = pcm.astype(np.float32) if fmt == "fltp" else (pcm * 32767).astype(np.int16)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        for start in range(0, rate, block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[None, start:start + block]), format=fmt,
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
