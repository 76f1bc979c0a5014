"""Overlay videos: a run's face boxes, persons and emotions drawn onto the source video (``s2d overlay``).

``write_overlay(out_dir, video)`` reads only what ``s2d annotate`` wrote (``<out>/manifest.json``, the video's
landmark-cache entry and its timeline; no model runs) and the source video, and writes an H.264 MP4 (yuv420p)
with the source's frame rate, timestamps (so the same duration) and upright size, the first audio stream copied
packet for packet (re-encoded to AAC only when MP4 cannot hold its codec). On every frame each face gets its box
and a label ``person 1 · Happy 0.72`` (the face's person in the video, as its timeline has it, and the label and
confidence of its track's segment covering that instant) on a filled background, and a stacked bar of the class
probabilities under the box; each person has its own colour.

Faces are detected only at sampled frames (``--fps``, 8 by default): a sampled frame's boxes are drawn on the
frames after it until the next sampled frame, for at most ``HOLD_STEPS`` sampling steps (a sampled frame without
faces has no cache rows, so a face that left is not drawn on). Frames are counted, timed and made upright by
``pipeline.video.FrameClock``, as the face stage's decoder did when it made the cache's ``frame_index``, ``time_s``
and box coordinates.

The file is written atomically through ``storage.write``: locally a temp file in the destination folder renamed
into place; for a URI destination the MP4 is made in memory and uploaded whole. An odd width or height is padded
with one black column / row at the right / bottom (yuv420p needs even sizes); the source pixels are all kept.
"""
from __future__ import annotations

import functools
import itertools
from pathlib import Path

import av
import numpy as np

from . import storage
from .cache import read_entry
from .decode import sampling_step
from .timeline import _stem, in_run, prob_columns, read_manifest, read_timeline_meta, run_cache
from .video import DecodeError, FrameClock, native_fps, open_video

HOLD_STEPS = 1.5  # a sampled frame's boxes stay on screen for at most this many sampling steps
PERSON_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                 (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (255, 255, 255)]


def overlay_path(out_dir, video_id: str, video_path) -> Path | str:
    """``<out_dir>/overlays/<sanitised stem>.<video_id>.overlay.mp4`` (a local path or URI, as ``out_dir``)."""
    return storage.join(out_dir, "overlays", f"{_stem(storage.name(video_path))}.{video_id}.overlay.mp4")


def find_run_video(out_dir, video: str, manifest: dict | None = None) -> dict:
    """The manifest record of ``video`` (its file name, full path or video_id); images are left out."""
    manifest = read_manifest(out_dir) if manifest is None else manifest
    records = [r for r in manifest.get("videos", []) if r.get("kind", "video") != "image"]
    local = None if storage.is_uri(video) else str(Path(video).expanduser().absolute())
    found = [r for r in records if video in (r["video_id"], str(r["video_path"]), storage.name(r["video_path"]))
             or (local is not None and local == str(r["video_path"]))]
    if not found:
        names = ", ".join(storage.name(r["video_path"]) for r in records) or "none"
        raise ValueError(f"{video} is not in the run {out_dir}: its videos are {names}")
    if len(found) > 1:
        raise ValueError(f"{video} names {len(found)} videos of the run {out_dir}: pass its path or video_id "
                         f"({', '.join(r['video_id'] + ' ' + str(r['video_path']) for r in found)})")
    return found[0]


def segment_at(start_s: np.ndarray, end_s: np.ndarray, t: float) -> int | None:
    """Index of the segment to show at time ``t``: of those covering it (start <= t <= end; segments overlap,
    2 s long every 1 s by default) the one whose centre is nearest ``t`` (the earlier on a tie); None if none."""
    start_s, end_s = np.asarray(start_s, np.float64), np.asarray(end_s, np.float64)
    covering = np.flatnonzero((start_s <= t) & (t <= end_s))
    if covering.size == 0:
        return None
    return int(covering[np.argmin(np.abs((start_s[covering] + end_s[covering]) / 2 - t))])  # first minimum


def held_sample(sample_index: np.ndarray, sample_time: np.ndarray, index: int, t: float, hold_s: float) -> int | None:
    """Which sampled frame's faces to draw on decoded frame ``index`` (time ``t``): the position in the sorted
    ``sample_index`` of the last sampled frame at or before it, if that is this frame or less than ``hold_s``
    earlier; else None."""
    j = int(np.searchsorted(sample_index, index, side="right")) - 1
    if j < 0 or (sample_index[j] != index and t - sample_time[j] >= hold_s):
        return None
    return j


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def draw_faces(frame: np.ndarray, faces: list[tuple]) -> np.ndarray:
    """``frame`` (uint8 RGB [H, W, 3]) with each face of ``faces`` drawn on it: (person_id, bbox x1 y1 x2 y2,
    None or (label, confidence, probabilities [C]))."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    h, w = frame.shape[:2]
    line = max(2, round(min(w, h) / 120))
    font = _font(max(11, round(h / 32)))
    for pid, bbox, seg in faces:
        colour = PERSON_COLOURS[int(pid) % len(PERSON_COLOURS)]
        x1, y1, x2, y2 = (round(float(v)) for v in bbox)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"person {pid}" + ("" if seg is None else f" · {seg[0]} {seg[1]:.2f}")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th, pad = right - left, bottom - top, 2
        tx = min(max(x1, 0), max(w - tw - 2 * pad, 0))
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1 + line  # above the box, or inside it at the top
        draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=colour)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((tx + pad - left, ty + pad - top), text, fill=ink, font=font)
        if seg is not None:  # stacked bar of the probabilities, under the box (inside it at the frame's bottom)
            bar = max(4, round(h / 80))
            by = y2 + line if y2 + line + bar <= h else y2 - line - bar
            edges = x1 + np.concatenate([[0], np.cumsum(np.asarray(seg[2], np.float64))]) * (x2 - x1)
            for c in range(len(seg[2])):
                if round(edges[c + 1]) > round(edges[c]):
                    draw.rectangle([round(edges[c]), by, round(edges[c + 1]) - 1, by + bar - 1],
                                   fill=CLASS_COLOURS[c % len(CLASS_COLOURS)])
    return np.asarray(img)


def _faces_by_sample(faces) -> tuple[np.ndarray, np.ndarray, list[list[tuple]]]:
    """Cache rows -> (sampled frame indices [n] sorted, their times [n], per sampled frame its (track_id, person_id,
    bbox))."""
    order = np.lexsort((faces.column("face").to_numpy(), faces.column("frame_index").to_numpy()))
    index = faces.column("frame_index").to_numpy()[order]
    times = faces.column("time_s").to_numpy()[order]
    tracks = faces.column("track_id").to_numpy()[order]
    persons = faces.column("person_id").to_numpy()[order]
    boxes = np.asarray(faces.column("bbox").combine_chunks().flatten(), np.float32).reshape(-1, 4)[order]
    keys, first = np.unique(index, return_index=True)
    return keys, times[first], [list(zip(tracks[a:b].tolist(), persons[a:b].tolist(), boxes[a:b]))
                                for a, b in itertools.pairwise([*first, len(index)])]


def _labels_at(timeline, faces, t: float) -> list[tuple]:
    """(person_id, bbox, segment or None) for these faces ((track_id, person_id, bbox): the cache's) at time ``t``,
    from the timeline's columns; the person is the timeline's where it has the track (the cache may be re-grouped
    since, by another run sharing it)."""
    out = []
    for tid, pid, bbox in faces:
        rows = timeline["by_track"].get(tid)
        k = None if rows is None else segment_at(timeline["start_s"][rows], timeline["end_s"][rows], t)
        seg = None if k is None else (timeline["label"][rows[k]], float(timeline["confidence"][rows[k]]),
                                      timeline["probs"][rows[k]])
        out.append((timeline["person"].get(tid, pid), bbox, seg))
    return out


def write_overlay(out_dir, video: str, dest=None) -> Path | str:
    """Write the overlay MP4 of ``video`` (file name, path or video_id of a video of the run in ``out_dir``) to
    ``dest`` (default ``overlay_path``; an existing folder gets that file name inside it). Returns the path."""
    manifest = read_manifest(out_dir)
    record = find_run_video(out_dir, video, manifest)
    name = storage.name(record["video_path"])
    if record.get("status") not in ("ok", "no_faces") or not record.get("timeline"):
        raise ValueError(f"{name} has no finished timeline in {out_dir} (status {record.get('status')}"
                         + (f": {record['error']}" if record.get("error") else "") + "); run s2d annotate again")
    cache_dir = run_cache(out_dir, manifest)
    if not manifest.get("face_settings_hash"):
        raise ValueError(f"{out_dir}/manifest.json names no face settings: written by an older s2d; run s2d "
                         "annotate again")
    entry = read_entry(cache_dir, manifest["face_settings_hash"], record["video_id"])
    if entry is None:
        raise FileNotFoundError(f"no complete landmark-cache entry for {name} ({record['video_id']}) in {cache_dir}; "
                                "run s2d annotate again")
    path = in_run(out_dir, record["timeline"])
    meta = read_timeline_meta(path)  # the file's own label set (a run's images may have another)
    labels = meta["labels"] if meta else manifest["labels"]
    table = storage.read_table(path)
    track = table.column("track_id").to_numpy()
    timeline = {"start_s": table.column("start_s").to_numpy(), "end_s": table.column("end_s").to_numpy(),
                "label": table.column("label").to_pylist(), "confidence": table.column("confidence").to_numpy(),
                "probs": np.stack([table.column(c).to_numpy() for c in prob_columns(labels)], 1),
                "by_track": {int(tid): np.flatnonzero(track == tid) for tid in np.unique(track)},
                "person": dict(zip(track.tolist(), table.column("person_id").to_pylist()))}
    samples = _faces_by_sample(entry[0])
    fps = (manifest.get("face_settings") or {}).get("fps", 8.0)
    if dest is None:
        dest = overlay_path(out_dir, record["video_id"], record["video_path"])
    elif storage.is_dir(dest):
        dest = storage.join(dest, storage.name(overlay_path(out_dir, record["video_id"], record["video_path"])))
    return storage.write(dest, lambda f: _encode(record["video_path"], f, samples, timeline, fps))


def _encode(src, fileobj, samples, timeline, fps) -> None:
    """Decode ``src`` in order (as PyAVDecoder counts and rotates its frames), draw, encode into ``fileobj``."""
    container, vin = open_video(src)
    with container, av.open(fileobj, "w", format="mp4") as out:
        try:
            frames = _transcode(container, vin, out, samples, timeline, fps)
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{src}: cannot make its overlay: {exc}") from exc
    if frames == 0:
        raise DecodeError(f"{src}: no decodable video frames")


class _Muxer:
    """The overlay MP4's streams: H.264 video, added at the first frame (its size is known after rotation), with
    the source's timestamps; the source's first audio stream copied packet for packet, or re-encoded to AAC where
    MP4 cannot hold its codec. Audio demuxed before the first video frame waits for the video stream."""

    def __init__(self, out, vin, ain):
        self.out, self.vin, self.ain = out, vin, ain
        self.vout = self.aout = None
        self.copy_audio = ain is not None and ain.codec_context.codec.canonical_name in out.supported_codecs
        self.pending: list = []  # audio packets demuxed before the first video frame
        self.last_pts = None

    def audio(self, packet) -> None:
        if self.vout is None:
            self.pending.append(packet)
        elif self.copy_audio:
            if packet.dts is not None:
                packet.stream = self.aout
                self.out.mux(packet)
        else:  # MP4 cannot hold this codec: AAC
            for frame in packet.decode():
                self.out.mux(self.aout.encode(frame))

    def _add_streams(self, width: int, height: int) -> None:
        vin, ain, out = self.vin, self.ain, self.out
        self.vout = out.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or 30,
                                   options={"crf": "20", "preset": "veryfast"})
        self.vout.width, self.vout.height, self.vout.pix_fmt = width, height, "yuv420p"
        self.vout.time_base = self.vout.codec_context.time_base = vin.time_base
        if ain is not None:
            self.aout = out.add_stream_from_template(ain) if self.copy_audio else \
                out.add_stream("aac", rate=ain.codec_context.sample_rate, layout=ain.codec_context.layout)
        pending, self.pending = self.pending, []
        for p in pending:
            self.audio(p)

    def video(self, img: np.ndarray, pts: int | None, t: float) -> None:
        """One upright RGB frame at the source frame's ``pts`` (None: from its time ``t``)."""
        h, w = img.shape[:2]
        if h % 2 or w % 2:  # yuv420p: pad to even sizes (black row / column at the bottom / right)
            img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)))
        if self.vout is None:
            self._add_streams(img.shape[1], img.shape[0])
        pts = pts if pts is not None else round(t / self.vin.time_base)
        pts = pts if self.last_pts is None or pts > self.last_pts else self.last_pts + 1  # the encoder needs rising pts
        self.last_pts = pts
        new = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        new.pts, new.time_base = pts, self.vin.time_base
        self.out.mux(self.vout.encode(new))

    def close(self) -> None:
        """Flush the encoders."""
        if self.vout is not None:
            self.out.mux(self.vout.encode())
        if self.aout is not None and not self.copy_audio:
            self.out.mux(self.aout.encode())


def _transcode(container, vin, out, samples, timeline, fps) -> int:
    """The decode-draw-encode loop (audio copied or re-encoded on the way); returns the number of frames. Frames are
    indexed, timed and made upright by ``FrameClock``, as the face stage's decoder does."""
    sample_index, sample_time, sample_faces = samples
    ain = container.streams.audio[0] if container.streams.audio else None
    vin.thread_type = "AUTO"
    hold_s = HOLD_STEPS * sampling_step(fps, native_fps(vin))
    clock, mux = FrameClock(vin), _Muxer(out, vin, ain)
    for packet in container.demux(*[s for s in (vin, ain) if s is not None]):
        if packet.stream is ain:
            mux.audio(packet)
            continue
        for frame in packet.decode():
            index, t = clock.tick(frame)
            img = clock.upright(frame)
            j = held_sample(sample_index, sample_time, index, t, hold_s)
            if j is not None:
                img = draw_faces(img, _labels_at(timeline, sample_faces[j], t))
            mux.video(img, frame.pts, t)
    mux.close()
    return clock.index
