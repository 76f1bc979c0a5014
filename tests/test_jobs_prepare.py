"""jobs/prepare.py's clip cutting without Ray: the golden face table of single_face.mp4 and the fixture video.

The default crop must give the clips prepare cut before crops could be chosen, byte for byte (pipeline.align's
alignment, JPEG quality 95); another crop is recorded and changes the pixels; the completeness check includes it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.prepare import DEFAULT_CROP, _clip_is_current, clip_frames, cut_clip, pick_track
from pipeline.crops import parse_crop

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def track(fixtures_dir):
    faces = pq.read_table(GOLDEN / "single_face.mp4.faces.parquet")
    return str(fixtures_dir / "videos" / "single_face.mp4"), faces, pick_track(faces)[1]


def cut_as_before(video: str, faces, rows) -> list[bytes]:
    """prepare's cut before ``--crop`` (its code then): ``align_clip`` (tests/oracles.py) on the 16 picked faces."""
    from oracles import align_clip
    from pipeline.decode import get_decoder

    times = faces.column("time_s").to_numpy()[rows]
    slots = clip_frames(times)
    pick = rows[slots]
    frame_index = faces.column("frame_index").to_numpy()[pick]
    kps5 = faces.column("kps5").combine_chunks().flatten().to_numpy().reshape(-1, 10)[pick]
    index, first = np.unique(frame_index, return_index=True)
    got = get_decoder("pyav").read_frames(video, index, times[slots][first])
    clip = align_clip(dict(zip(got["frame_index"].tolist(), got["frames"])), frame_index, kps5)
    jpgs = []
    for frame in clip:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        jpgs.append(buf.getvalue())
    return jpgs


def jpgs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


def test_default_crop_cuts_the_same_bytes_as_before(tmp_path, track):
    video, faces, rows = track
    got = cut_clip(video, faces, rows, tmp_path / "clip", "hash")
    files = jpgs(tmp_path / "clip")
    assert [f.name for f in files] == [f"{i:05d}.jpg" for i in range(1, 17)]
    before = cut_as_before(video, faces, rows)
    assert [f.read_bytes() for f in files] == before
    info = json.loads((tmp_path / "clip" / "clip.json").read_text())
    assert info["crop"] == DEFAULT_CROP == "template:0.25@224" and info["frame_index"] == got["frame_index"]


def test_another_crop_is_recorded_and_changes_the_pixels(tmp_path, track):
    video, faces, rows = track
    cut_clip(video, faces, rows, tmp_path / "template", "hash")
    cut_clip(video, faces, rows, tmp_path / "box", "hash", crop="box:1.0@224")
    assert json.loads((tmp_path / "box" / "clip.json").read_text())["crop"] == "box:1@224"
    template = np.stack([np.asarray(Image.open(f), np.float32) for f in jpgs(tmp_path / "template")])
    box = np.stack([np.asarray(Image.open(f), np.float32) for f in jpgs(tmp_path / "box")])
    assert box.shape == template.shape == (16, 224, 224, 3)
    assert np.abs(box - template).mean() > 10  # another face geometry, not JPEG noise
    cut_clip(video, faces, rows, tmp_path / "small", "hash", crop="box:1.0@112")
    assert Image.open(jpgs(tmp_path / "small")[0]).size == (112, 112)


def test_a_clip_is_current_only_for_its_settings_and_crop(tmp_path, track):
    video, faces, rows = track
    folder = tmp_path / "clip"
    cut_clip(video, faces, rows, folder, "hash")
    assert _clip_is_current(folder, "hash", parse_crop(DEFAULT_CROP))
    assert not _clip_is_current(folder, "other", parse_crop(DEFAULT_CROP))
    assert not _clip_is_current(folder, "hash", parse_crop("box:1.0@224"))  # another crop: redone
    assert not _clip_is_current(folder, "hash", parse_crop("template:0@224"))
    info = json.loads((folder / "clip.json").read_text())
    del info["crop"]  # a clip.json written before crops were recorded: cut with the default
    (folder / "clip.json").write_text(json.dumps(info))
    assert _clip_is_current(folder, "hash", parse_crop(DEFAULT_CROP))
    assert not _clip_is_current(folder, "hash", parse_crop("box:1.0@224"))
