"""pipeline.sources: list_videos (content probe), Source ids, probe()."""
from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from pipeline.decode import DecodeError
from media import write_audio_only
from pipeline.sources import Source, VideoInfo, list_videos, make_source, probe

VIDEOS = ["videos/single_face.mp4", "videos/no_face.mp4", "videos/face_noface.mov"]


@pytest.mark.parametrize("name", VIDEOS)
def test_probe_fixtures(fixtures_dir, expectations, name):
    exp = expectations["videos"][name]
    info = probe(fixtures_dir / name)
    assert isinstance(info, VideoInfo)
    assert info.codec == exp["codec"]
    assert (info.width, info.height) == (exp["width"], exp["height"])
    assert info.rotation == 0
    assert info.duration_s == pytest.approx(exp["duration_s"], abs=0.01)
    assert info.header_frames == exp.get("header_nb_frames", exp["decoded_frames"])
    assert info.has_audio
    fps = exp.get("avg_frame_rate") or exp["fps"]
    assert info.native_fps == pytest.approx(fps, rel=0.02)


def test_probe_errors(tmp_path, fixtures_dir):
    (tmp_path / "zero.mov").write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        probe(tmp_path / "zero.mov")
    write_audio_only(tmp_path / "tone.mp2", "mp2")
    with pytest.raises(DecodeError, match="audio-only"):
        probe(tmp_path / "tone.mp2")
    with pytest.raises(DecodeError, match="still image"):
        probe(fixtures_dir / "images/multi_face.jpg")
    with pytest.raises(DecodeError, match="directory"):
        probe(tmp_path)


@pytest.fixture()
def tree(tmp_path, fixtures_dir):
    """A folder with videos (one with a misleading name), junk, hidden files, an image and broken videos."""
    v = fixtures_dir / "videos"
    root = tmp_path / "in"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".hiddendir").mkdir()
    shutil.copy(v / "single_face.mp4", root / "a.mp4")
    shutil.copy(v / "no_face.mp4", root / "nested" / "b.MOV")
    shutil.copy(v / "single_face.mp4", root / "nested" / "deeper" / "c.mkv")
    shutil.copy(v / "no_face.mp4", root / "clip.dat")  # a video by content, whatever its name
    shutil.copy(v / "single_face.mp4", root / ".hidden.mp4")
    shutil.copy(v / "single_face.mp4", root / ".hiddendir" / "x.mp4")
    shutil.copy(fixtures_dir / "images/single_face.jpg", root / "photo.jpg")
    (root / "notes.txt").write_text("not a video\n")
    (root / "zero.mov").write_bytes(b"")  # broken video: kept (by extension) to be reported later
    (root / "nested" / "corrupt.mp4").write_bytes(os.urandom(4096))
    (root / "random.bin").write_bytes(os.urandom(4096))  # junk with no video extension: skipped
    write_audio_only(root / "tone.mp2", "mp2")  # valid media, no video: skipped
    return root


def test_list_videos_folder(tree):
    got = list_videos([tree])
    rel = [os.path.relpath(s.path, tree.resolve()) for s in got]
    assert rel == sorted(
        ["a.mp4", "clip.dat", "photo.jpg", "zero.mov", "nested/b.MOV", "nested/corrupt.mp4", "nested/deeper/c.mkv"]
    )  # the still image is an input too (issue 13); the text, junk, hidden and audio-only files are not
    assert all(isinstance(s, Source) and os.path.isabs(s.path) for s in got)
    sizes = {r: s.size for r, s in zip(rel, got)}
    assert sizes["zero.mov"] == 0 and sizes["a.mp4"] == 208_428


def test_list_videos_not_recursive(tree):
    rel = [os.path.relpath(s.path, tree.resolve()) for s in list_videos([tree], recursive=False)]
    assert rel == ["a.mp4", "clip.dat", "photo.jpg", "zero.mov"]


def test_a_scan_skips_the_runs_own_folders(tree):
    rel = [os.path.relpath(s.path, tree.resolve()) for s in list_videos([tree], skip=[tree / "nested", None])]
    assert rel == ["a.mp4", "clip.dat", "photo.jpg", "zero.mov"]  # nested/ and all under it left out
    rel = [os.path.relpath(s.path, tree.resolve()) for s in list_videos([tree / "nested" / "b.MOV"],
                                                                        skip=[tree / "nested"])]
    assert rel == ["nested/b.MOV"]  # a file named explicitly is an input wherever it lies


def test_list_videos_explicit_files_and_dedup(tree, tmp_path):
    link = tmp_path / "link.mp4"
    link.symlink_to(tree / "a.mp4")
    got = list_videos([tree / "notes.txt", tree, tree / "a.mp4", link, str(tree / "a.mp4"), tree / "gone.mp4"])
    paths = [s.path for s in got]
    assert paths == sorted(paths) and len(paths) == len(set(paths))
    by_name = {os.path.basename(s.path): s for s in got}
    assert "notes.txt" in by_name  # named explicitly: always included
    assert sum(p.endswith("/a.mp4") for p in paths) == 1  # folder + file + symlink + str: one entry
    gone = by_name["gone.mp4"]
    assert gone.size == -1 and re.fullmatch(r"[0-9a-f]{16}", gone.video_id)
    assert ".hidden.mp4" not in by_name and "photo.jpg" in by_name


def test_video_id_stable_and_changes(tmp_path, fixtures_dir):
    p = tmp_path / "v.mp4"
    shutil.copy(fixtures_dir / "videos/single_face.mp4", p)
    a, b = make_source(p), list_videos([p])[0]
    assert a == b and re.fullmatch(r"[0-9a-f]{16}", a.video_id)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    touched = make_source(p)
    assert touched.video_id != a.video_id and touched.size == a.size
    p.write_bytes(p.read_bytes()[:-10])  # rewritten
    assert make_source(p).video_id not in {a.video_id, touched.video_id}
    # same path, missing vs present differ; missing is stable
    q = tmp_path / "nope.mp4"
    assert make_source(q).video_id == make_source(q).video_id
    assert make_source(q).size == -1 and make_source(q).mtime == -1.0


def test_list_videos_is_cheap(tree):
    t0 = time.perf_counter()
    list_videos([tree])
    assert time.perf_counter() - t0 < 5.0
