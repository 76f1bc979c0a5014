"""pipeline.decode: PTS sampling, chunking, rotation, read_frames, backends agreeing, bad inputs."""
from __future__ import annotations

import math
import os
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import DecodeError, PtsSampler, PyAVDecoder, get_decoder
from pipeline.decord_decoder import DecordDecoder
from pipeline.sources import probe

from media import write_audio_only, write_video

VIDEOS = ["videos/single_face.mp4", "videos/no_face.mp4", "videos/face_noface.mov"]


# --------------------------------------------------------------------------- helpers


def collect(chunks) -> dict:
    chunks = list(chunks)
    return {
        "n_chunks": len(chunks),
        "sizes": [len(c["frame_index"]) for c in chunks],
        "frame_index": np.concatenate([c["frame_index"] for c in chunks]),
        "time_s": np.concatenate([c["time_s"] for c in chunks]),
        "frames": np.concatenate([c["frames"] for c in chunks]),
    }


_FULL: dict = {}


def full_decode(path: Path) -> dict:
    """Every frame via PyAV iter_chunks(fps=None), cached per path."""
    key = str(path)
    if key not in _FULL:
        _FULL[key] = collect(PyAVDecoder().iter_chunks(path, fps=None, chunk_size=64))
    return _FULL[key]


def oracle_sample(times: np.ndarray, fps: float) -> list[int]:
    """Independent statement of the rule: for each grid time k/fps, the first frame at or after it."""
    picked = set()
    for k in range(int(math.floor(times.max() * fps + 1e-9)) + 1):
        at_or_after = np.nonzero(times >= k / fps - 1e-9)[0]
        if at_or_after.size:
            picked.add(int(at_or_after[0]))
    return sorted(picked)


def quadrant_pattern(h: int, w: int) -> np.ndarray:
    """Red top-left quadrant, blue bottom-right, black elsewhere."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[h // 2 :, w // 2 :] = (0, 0, 255)
    return img


def remux(src_path: Path, dst_path: Path, **open_kwargs) -> None:
    """Copy the video packets of src_path into a new container (no re-encoding)."""
    with av.open(str(src_path)) as src, av.open(str(dst_path), "w", **open_kwargs) as out:
        vs = src.streams.video[0]
        stream = out.add_stream_from_template(vs)
        for p in src.demux(vs):
            if p.dts is not None:
                p.stream = stream
                out.mux(p)


def gray_frames(n: int, h: int = 48, w: int = 64, step: int = 20) -> list[np.ndarray]:
    return [np.full((h, w, 3), (i * step) % 256, np.uint8) for i in range(n)]


# --------------------------------------------------------------------------- sampler unit


def test_pts_sampler_rule():
    s = PtsSampler(10)
    times = [0.0, 0.04, 0.08, 0.3, 0.31, 0.32, 0.33, 0.7, 1.0, 1.01, 1.5]
    assert [i for i, t in enumerate(times) if s.keep(t)] == [0, 3, 7, 8, 10]
    every = PtsSampler(None)
    assert all(every.keep(t) for t in times)
    assert all(PtsSampler(0).keep(t) for t in times)
    # a PTS exactly on a grid point is kept, and that grid point is not used again
    s = PtsSampler(8)
    assert [s.keep(t) for t in (0.0, 0.125, 0.125 + 1e-12, 0.2, 0.25)] == [True, True, False, False, True]


# --------------------------------------------------------------------------- real fixtures


@pytest.mark.parametrize("name", VIDEOS)
def test_every_frame_counts_and_pts(fixtures_dir, expectations, name):
    exp = expectations["videos"][name]
    full = full_decode(fixtures_dir / name)
    n = exp["decoded_frames"]  # 72, 95 (header says 98), 169
    assert len(full["frame_index"]) == n
    np.testing.assert_array_equal(full["frame_index"], np.arange(n))
    assert full["time_s"][0] == pytest.approx(exp["first_pts"], abs=1e-3)
    assert full["time_s"][-1] == pytest.approx(exp["last_pts"], abs=1e-3)
    assert np.all(np.diff(full["time_s"]) > 0)
    assert full["frames"].dtype == np.uint8
    assert full["frames"].shape[1:] == (exp["height"], exp["width"], 3)


def test_no_face_header_overcounts(fixtures_dir):
    info = probe(fixtures_dir / "videos/no_face.mp4")
    assert info.header_frames == 98
    assert len(full_decode(fixtures_dir / "videos/no_face.mp4")["frame_index"]) == 95


def test_sampling_fps8_single_face(fixtures_dir):
    path = fixtures_dir / "videos/single_face.mp4"
    s = collect(PyAVDecoder().iter_chunks(path, fps=8))
    t = s["time_s"]
    assert t[0] == 0.0
    assert t[1] == pytest.approx(4 / 30)  # first frame at/after 0.125 s
    assert 19 <= len(t) <= 20
    assert np.all(np.abs(np.diff(t) - 1 / 8) <= 1 / 30 + 1e-9)
    full = full_decode(path)
    assert s["frame_index"].tolist() == oracle_sample(full["time_s"], 8)
    np.testing.assert_array_equal(s["frames"], full["frames"][s["frame_index"]])


def test_sampling_fps8_vfr_fixture_follows_pts(fixtures_dir):
    path = fixtures_dir / "videos/face_noface.mov"
    s = collect(PyAVDecoder().iter_chunks(path, fps=8))
    t, idx = s["time_s"], s["frame_index"]
    full = full_decode(path)
    assert np.all(np.diff(t) > 0)
    assert 6.2 <= t[-1] <= 6.3604 + 1e-3
    assert idx.tolist() == oracle_sample(full["time_s"], 8)
    np.testing.assert_allclose(t, full["time_s"][idx])  # times are the frames' PTS
    late = idx[t > 2.45]
    assert late.size > 20
    # after 2.4 s the 24 fps section makes index/30 wrong by up to ~0.76 s; we report PTS
    assert np.max(np.abs(t[t > 2.45] - late / 30.0)) > 0.5
    # one sample per grid interval
    assert np.all(np.diff(np.floor(t * 8 + 1e-9)) >= 1)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_chunks_are_bounded(fixtures_dir, backend):
    chunks = get_decoder(backend).iter_chunks(fixtures_dir / "videos/no_face.mp4", fps=None, chunk_size=7)
    s = collect(chunks)
    assert max(s["sizes"]) <= 7
    assert all(n == 7 for n in s["sizes"][:-1])
    assert sum(s["sizes"]) == 95
    np.testing.assert_array_equal(s["frame_index"], np.arange(95))


@pytest.mark.parametrize("name", VIDEOS)
def test_pyav_and_decord_agree(fixtures_dir, name):
    path = fixtures_dir / name
    a = collect(PyAVDecoder().iter_chunks(path, fps=8, chunk_size=16))
    b = collect(DecordDecoder().iter_chunks(path, fps=8, chunk_size=16))
    np.testing.assert_array_equal(a["frame_index"], b["frame_index"])
    np.testing.assert_allclose(a["time_s"], b["time_s"], atol=1e-3)
    assert a["frames"].shape == b["frames"].shape
    diff = np.abs(a["frames"].astype(np.int16) - b["frames"].astype(np.int16))
    assert diff.mean() < 2.0


@pytest.mark.parametrize("name", VIDEOS)
def test_read_frames_matches_iter_chunks(fixtures_dir, name):
    path = fixtures_dir / name
    full = full_decode(path)
    n = len(full["frame_index"])
    idx = sorted({0, 1, n // 3, n // 3 + 1, n // 2 + 5, n - 16, n - 2, n - 1})
    if name.endswith(".mov"):
        idx = sorted(set(idx) | {71, 72, 73, 74, 120})  # across the 30 -> 24 fps switch
    expect_t, expect_f = full["time_s"][idx], full["frames"][idx]

    for got in (
        PyAVDecoder().read_frames(path, idx, full["time_s"][idx]),  # seek + match by PTS
        PyAVDecoder().read_frames(path, idx),  # no times: sequential by index
    ):
        np.testing.assert_array_equal(got["frame_index"], idx)
        np.testing.assert_array_equal(got["time_s"], expect_t)
        np.testing.assert_array_equal(got["frames"], expect_f)

    got = DecordDecoder().read_frames(path, idx)
    np.testing.assert_array_equal(got["frame_index"], idx)
    np.testing.assert_allclose(got["time_s"], expect_t, atol=1e-3)
    assert np.abs(got["frames"].astype(np.int16) - expect_f.astype(np.int16)).mean() < 2.0

    # requested order and repeats are kept; times within float32 error (decord's) still match
    req = [idx[-1], idx[0], idx[-1]]
    got = PyAVDecoder().read_frames(path, req, full["time_s"][req] + 2e-4)
    np.testing.assert_array_equal(got["frame_index"], req)
    np.testing.assert_array_equal(got["frames"], full["frames"][req])


def test_read_frames_bad_index(fixtures_dir):
    path = fixtures_dir / "videos/single_face.mp4"
    with pytest.raises(DecodeError, match="not in the video"):
        PyAVDecoder().read_frames(path, [5, 500])
    with pytest.raises(DecodeError, match="not in the video"):
        DecordDecoder().read_frames(path, [5, 500])
    # wrong times: falls back to the index, still exact
    got = PyAVDecoder().read_frames(path, [10], [99.0])
    np.testing.assert_array_equal(got["frames"][0], full_decode(path)["frames"][10])
    empty = PyAVDecoder().read_frames(path, [])
    assert empty["frames"].shape[0] == 0 and empty["frame_index"].dtype == np.int64


# --------------------------------------------------------------------------- synthetic files


@pytest.mark.parametrize(
    "rotation, expect_k",
    [(-90, -1), (90, 1), (180, 2)],  # expect_k: np.rot90 turns (counter-clockwise) of the stored picture
)
def test_rotation_metadata_applied(tmp_path, rotation, expect_k):
    stored = quadrant_pattern(48, 64)
    path = write_video(tmp_path / f"rot{rotation}.mp4", [stored] * 10, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if rotation in (90, -90) else (64, 48))

    s = collect(PyAVDecoder().iter_chunks(path, fps=None))
    assert s["frames"].shape == (10, info.height, info.width, 3)
    upright = np.rot90(stored, expect_k)
    assert np.abs(s["frames"][0].astype(int) - upright).mean() < 12
    if rotation == -90:
        # stored top-left (red) ends at the top-right after a clockwise quarter turn (rotate tag 90)
        f = s["frames"][0]
        assert f[8, -8, 0] > 200 and f[8, -8, 2] < 60  # top-right red
        assert f[-8, 8, 2] > 200 and f[-8, 8, 0] < 60  # bottom-left blue
    got = PyAVDecoder().read_frames(path, [3, 7], s["time_s"][[3, 7]])
    np.testing.assert_array_equal(got["frames"], s["frames"][[3, 7]])

    if rotation == 180:  # decord 0.6 rotates 180 itself, correctly
        d = collect(DecordDecoder().iter_chunks(path, fps=None))
        assert np.abs(d["frames"].astype(int) - s["frames"].astype(int)).mean() < 2
    else:  # decord 0.6 returns a wrongly shaped buffer for +-90: refused
        with pytest.raises(DecodeError, match="rotated"):
            list(DecordDecoder().iter_chunks(path))


def test_synthetic_vfr_samples_by_pts(tmp_path):
    pts_ms = [0, 40, 80, 300, 310, 320, 330, 700, 1000, 1010, 1500]
    path = write_video(tmp_path / "vfr.mp4", gray_frames(len(pts_ms)), fps=25, pts_ms=pts_ms)
    full = collect(PyAVDecoder().iter_chunks(path, fps=None))
    np.testing.assert_allclose(full["time_s"], np.array(pts_ms) / 1000, atol=1e-6)

    for backend in ("pyav", "decord"):
        s = collect(get_decoder(backend).iter_chunks(path, fps=10, chunk_size=2))
        assert s["frame_index"].tolist() == [0, 3, 7, 8, 10]
        np.testing.assert_allclose(s["time_s"], [0.0, 0.3, 0.7, 1.0, 1.5], atol=1e-3)
        # gray level identifies the frame: i * 20
        np.testing.assert_allclose(s["frames"].reshape(5, -1).mean(1), [0, 60, 140, 160, 200], atol=3)
        assert max(s["sizes"]) <= 2
    got = PyAVDecoder().read_frames(path, [7, 3], [0.7, 0.3])
    np.testing.assert_array_equal(got["frames"], full["frames"][[7, 3]])


def test_read_frames_seeks_across_keyframes(tmp_path):
    """Many keyframes and B-frames: seek + PTS matching returns exactly the sequential frames."""
    path = write_video(tmp_path / "gop.mp4", gray_frames(120, step=2), fps=10, gop=8)
    full = collect(PyAVDecoder().iter_chunks(path, fps=None))
    assert len(full["frame_index"]) == 120
    idx = [0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 55, 56, 100, 119]
    got = PyAVDecoder().read_frames(path, idx, full["time_s"][idx])
    np.testing.assert_array_equal(got["frame_index"], idx)
    np.testing.assert_array_equal(got["time_s"], full["time_s"][idx])
    np.testing.assert_array_equal(got["frames"], full["frames"][idx])


def test_frames_without_pts_get_synthesised_times(tmp_path, fixtures_dir):
    """A raw H.264 elementary stream has no timestamps: times become previous + 1/native fps."""
    raw = tmp_path / "raw.h264"
    remux(fixtures_dir / "videos/single_face.mp4", raw, format="h264")
    with av.open(str(raw)) as c:
        assert next(c.decode(video=0)).pts is None  # the premise of this test
    info = probe(raw)
    s = collect(PyAVDecoder().iter_chunks(raw, fps=None))
    assert len(s["time_s"]) == 72
    np.testing.assert_allclose(s["time_s"], np.arange(72) / info.native_fps)
    # not seekable: read_frames falls back to the sequential pass and still returns the same frames
    got = PyAVDecoder().read_frames(raw, [5, 40], s["time_s"][[5, 40]])
    np.testing.assert_array_equal(got["frames"], s["frames"][[5, 40]])


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, fixtures_dir):
    d = tmp_path_factory.mktemp("bad")
    src = (fixtures_dir / "videos/single_face.mp4").read_bytes()
    (d / "zero.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(src[: int(len(src) * 0.3)])
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("this is not a video\n" * 20)
    write_audio_only(d / "audio_only.mp4")
    return d


BAD_CASES = [
    ("zero.mp4", "empty file"),
    ("truncated.mp4", "truncated or corrupt"),
    ("random.mp4", "not a media file"),
    ("audio_only.mp4", "audio-only"),
    ("notes.txt", "looks like text"),
    ("missing.mp4", "not found"),
]


@pytest.mark.parametrize("name, reason", BAD_CASES)
@pytest.mark.parametrize("op", ["probe", "pyav", "decord"])
def test_bad_inputs_raise_decode_error(bad_files, name, reason, op):
    path = bad_files / name
    with pytest.raises(DecodeError, match=reason) as err:
        if op == "probe":
            probe(path)
        else:
            list(get_decoder(op).iter_chunks(path))
    assert str(path) in str(err.value)


def test_image_is_not_a_video(fixtures_dir):
    with pytest.raises(DecodeError, match="still image"):
        probe(fixtures_dir / "images/single_face.jpg")


def test_unreadable_file(tmp_path, fixtures_dir):
    path = tmp_path / "locked.mp4"
    path.write_bytes((fixtures_dir / "videos/single_face.mp4").read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: file permissions are not enforced")
        with pytest.raises(DecodeError, match="permission denied"):
            probe(path)
        with pytest.raises(DecodeError, match="permission denied"):
            list(PyAVDecoder().iter_chunks(path))
    finally:
        path.chmod(0o644)


def test_unreadable_file_simulated(tmp_path, fixtures_dir, monkeypatch):
    """Same check where chmod cannot bite (root): os.access says no."""
    import pipeline.video as video

    path = tmp_path / "locked.mp4"
    path.write_bytes((fixtures_dir / "videos/single_face.mp4").read_bytes())
    monkeypatch.setattr(video.os, "access", lambda p, mode: False)
    with pytest.raises(DecodeError, match="permission denied"):
        probe(path)


def test_truncated_mid_file_reports_frame(tmp_path, fixtures_dir):
    """moov at the front (faststart) so it opens; cut in half it fails partway: DecodeError names the frame."""
    full = tmp_path / "fast.mp4"
    remux(fixtures_dir / "videos/single_face.mp4", full, options={"movflags": "faststart"})
    data = full.read_bytes()
    assert data[36:40] == b"moov" or b"moov" in data[:2000]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).header_frames == 72  # the header is intact
    seen = []
    with pytest.raises(DecodeError, match=r"decode failed at frame \d+") as err:
        for chunk in PyAVDecoder().iter_chunks(cut, fps=None, chunk_size=8):
            seen.extend(chunk["frame_index"].tolist())
    assert str(cut) in str(err.value)
    assert 0 < len(seen) < 72


def test_get_decoder_names():
    assert isinstance(get_decoder("pyav"), PyAVDecoder)
    assert isinstance(get_decoder("decord"), DecordDecoder)
    with pytest.raises(ValueError):
        get_decoder("opencv")
