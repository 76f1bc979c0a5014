"""`s2d report`: the self-contained HTML page of a run, its pure parts, and the page in a real headless Chromium."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import cache, storage
from pipeline.align import ARCFACE_112
from pipeline.report import (PAD_L, PAD_R, PAD_B, PAD_T, SVG_H, SVG_W, _ticks, build_report, colour, columns,
                             timeline_svg, write_report)
from pipeline.summary import _covered_seconds, summarize
from pipeline.timeline import prob_columns, timeline_path, timeline_table, write_timeline
from s2d_model.labels import LABEL_SETS

DFEW, RAFDB = list(LABEL_SETS["dfew"]), list(LABEL_SETS["rafdb"])
FH = "facehash00000000"


def track(starts, ends, winners, labels=DFEW, conf=0.7) -> pd.DataFrame:
    n, c = len(starts), len(labels)
    p = np.full((n, c), (1 - conf) / (c - 1))
    p[np.arange(n), winners] = conf
    df = pd.DataFrame({"video_id": "v", "video_path": "/x/v.mp4", "track_id": 0, "segment": range(n),
                       "start_s": np.asarray(starts, float), "end_s": np.asarray(ends, float),
                       "label": [labels[w] for w in winners], "confidence": conf})
    return df.join(pd.DataFrame(p, columns=prob_columns(labels)))


# ------------------------------------------------------------------------------------------------ pure parts
def test_columns_tile_overlapping_windows_and_keep_holes():
    # 2 s windows, 1 s stride, a truncated last one, then a hole (9..12) and one more window
    g = track([0, 1, 2, 12], [2, 3, 3.5, 14], [0, 0, 1, 2])
    cols = columns(g)
    assert [c[2] for c in cols] == [0, 1, 2, 3]
    assert cols[0][0] == 0 and cols[2][1] == 3.5 and cols[3] == (12.0, 14.0, 3)
    assert cols[0][1] == pytest.approx(1.5) and cols[1][1] == pytest.approx((2 + 2.75) / 2)  # half-way, centres
    for (a0, a1, _), (b0, _, _) in zip(cols, cols[1:]):
        assert a0 <= a1 <= b0  # in time order, no overlap
    drawn = sum(t1 - t0 for t0, t1, _ in cols)
    assert drawn == pytest.approx(_covered_seconds(g.start_s.to_numpy(), g.end_s.to_numpy()))  # the face's time


def test_svg_x_axis_spans_the_whole_video():
    g = track([5, 6, 7], [7, 8, 9], [0, 0, 1])  # the face only from 5 s, in a 10 s video
    svg = ET.fromstring(timeline_svg(g, DFEW, 10.0))
    pw, ph = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B
    x = lambda t: PAD_L + pw * t / 10.0  # noqa: E731
    assert svg.get("data-duration") == "10"
    ticks = [t.text for t in svg.iter("text")]
    assert "0" in ticks and "10" in ticks
    segs = [s for s in svg.iter("g") if s.get("class") == "seg"]
    assert len(segs) == 3
    rects = [r for r in segs[0].iter("rect")]
    assert float(rects[0].get("x")) == pytest.approx(x(5), abs=0.01)  # where the face starts, not at x = 0
    assert sum(float(r.get("height")) for r in rects) == pytest.approx(ph, abs=0.05)  # probabilities stack to 1
    assert [r.get("fill") for r in rects] == [colour(c, j) for j, c in enumerate(DFEW)]
    last = list(segs[-1].iter("rect"))[0]
    assert float(last.get("x")) + float(last.get("width")) == pytest.approx(x(9), abs=0.01)
    assert segs[-1].find("title").text.startswith("7.0-9.0 s: Sad")


def test_ticks_and_colours():
    assert _ticks(1.0) == [0, 0.25, 0.5, 0.75, 1.0]
    assert _ticks(6.4) == [0, 1, 2, 3, 4, 5, 6]
    assert len(_ticks(3600)) <= 11 and _ticks(3600)[-1] == 3600
    assert colour("Happy", 0) == colour("Happiness", 3)  # one colour per emotion, whatever the label set
    assert len({colour(c, j) for j, c in enumerate(LABEL_SETS["mafw"])}) == 11


# ------------------------------------------------------------------------------ a run folder made by hand
def faces_row(frame_index, time_s, box, width, height) -> dict:
    x1, y1, x2, y2 = box
    kps = np.stack([x1 + (x2 - x1) * ARCFACE_112[:, 0] / 112, y1 + (y2 - y1) * ARCFACE_112[:, 1] / 112], 1)
    return dict(video_id="", frame_index=[frame_index], time_s=[time_s], face=[0], track_id=[0], score=[0.99],
                bbox=[box], kps5=kps.reshape(1, 10), landmarks68=np.zeros((1, 136)), width=width, height=height)


def entry(cache_dir, vid, path, faces, duration):
    meta = dict(source_path=str(path), duration_s=duration, native_fps=None, frame_count=1, sampled_frames=1,
                width=faces["width"], height=faces["height"], settings={}, status="ok", error=None)
    cache.write_entry(cache_dir, FH, vid, {**faces, "video_id": vid}, meta)


def hand_made_run(folder: Path, fixtures_dir: Path) -> Path:
    """An image (another label set), a video whose file is gone (3 windows from 5 s of 10 s), an error, an
    interrupted file: timelines and cache entries written with the real writers, no Ray."""
    out, cache_dir = folder / "out", folder / "cache"
    image = fixtures_dir / "images" / "single_face.jpg"
    img_rows = dict(track_id=[0], segment=[0], start_s=[0.0], end_s=[0.0], n_face_frames=[1],
                    bbox=[[192, 145, 369, 404]])
    p = np.full((1, 7), 0.05, np.float32)
    p[0, 3] = 0.7  # Happiness
    img_tl = write_timeline(timeline_table("img0001", str(image), img_rows, p, RAFDB, "s2d-rafdb", "h", "ok"),
                            timeline_path(out, "img0001", image))
    entry(cache_dir, "img0001", image, faces_row(0, 0.0, [192, 145, 369, 404], 572, 562), 0.0)
    gone = folder / "gone" / "clip.mp4"
    g = track([5, 6, 7], [7, 8, 9], [0, 0, 1])
    rows = {c: g[c].to_numpy() for c in ("track_id", "segment", "start_s", "end_s")}
    rows.update(n_face_frames=np.full(3, 16), bbox=np.tile([1, 2, 3, 4], (3, 1)))
    vid_tl = write_timeline(timeline_table("vid0002", str(gone), rows, g[prob_columns(DFEW)].to_numpy(), DFEW,
                                           "random-tiny", "h", "ok"), timeline_path(out, "vid0002", gone))
    entry(cache_dir, "vid0002", gone, faces_row(40, 5.0, [10, 10, 60, 70], 320, 240), 10.0)
    videos = [
        {"video_id": "vid0002", "video_path": str(gone), "status": "ok", "error": None, "duration_s": 10.0,
         "timeline": str(vid_tl), "n_segments": 3, "n_tracks": 1},
        {"video_id": "vid0003", "video_path": "/in/broken.mp4", "status": "error", "error": "/in/broken.mp4: MP4/"
         "QuickTime file that cannot be parsed: truncated or corrupt", "duration_s": None, "timeline": None,
         "n_segments": 0, "n_tracks": 0},
        {"video_id": "vid0004", "video_path": "/in/late.mp4", "status": "interrupted", "error": "the run was "
         "interrupted before this video was done; run again", "timeline": None, "n_segments": 0, "n_tracks": 0},
        {"video_id": "img0001", "video_path": str(image), "status": "ok", "error": None, "duration_s": 0.0,
         "timeline": str(img_tl), "n_segments": 1, "n_tracks": 1, "kind": "image"},
    ]
    manifest = {"settings": {"weights": "s2d-dfew", "segment_s": 2.0, "stride_s": 1.0}, "face_settings": {"fps": 8},
                "face_settings_hash": FH, "cache_dir": str(cache_dir), "labels": DFEW, "warning": None,
                "weights": {"weights": "s2d-dfew", "file": {"name": "dfew.pth", "size": 1}, "labels": "dfew"},
                "image_weights": {"weights": "s2d-rafdb-image"}, "image_labels": RAFDB, "wall_seconds": 12.5,
                "clips_classified": 4, "skipped": 0, "versions": {"torch": "x"}, "videos": videos}
    storage.write(out / "manifest.json", json.dumps(manifest))
    return out


def page_text(page: str) -> str:
    page = re.sub(r"<(style|title)>.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def assert_self_contained(page: str):
    assert "http://" not in page and "https://" not in page and "url(" not in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]*)""", page)
    assert refs and all(r.startswith("data:image/jpeg;base64,") for r in refs), refs[:3]
    assert "default-src 'none'" in page  # the page itself refuses to load anything else


def test_hand_made_run(tmp_path, fixtures_dir):
    out = hand_made_run(tmp_path, fixtures_dir)
    page = build_report(out)
    text = page_text(page)
    assert_self_contained(page)
    assert "WARNING" not in text  # trained weights: no warning
    assert "ok 2" in text and "error 1" in text and "interrupted 1" in text and "wall time 12.5 s" in text
    # errors table: every file without a timeline, with its reason
    assert "broken.mp4 error /in/broken.mp4: MP4/QuickTime file that cannot be parsed" in text
    assert "late.mp4 interrupted the run was interrupted" in text
    # the video whose file is gone: its timeline, a placeholder face and a note, shares of its 3 segments
    assert "clip.mp4 (ok)" in text and "duration 10.00 s" in text and "no thumbnails: DecodeError" in text
    assert "file not found" in text and "no thumbnail" in text
    assert "person 0 (track 0): dominant Happy , 5.0-9.0 s (4.0 s with the face, 3 segments" in text
    assert "share of time 67% 33% 0% 0% 0% 0% 0%" in text
    assert 'data-duration="10"' in page
    # the image: its face with its label, in its own label set (read from the timeline file)
    assert "single_face.jpg (ok)" in text and "face 0: Happiness 0.70" in text
    assert "Happiness" in text and "image classes Surprise, Fear" in text and "s2d-rafdb-image" in text
    imgs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(imgs) == 1
    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(imgs[0]))).size == (96, 96)


def test_persons_and_people(tmp_path):
    """tests/test_people.py's hand-made run: a person's tracks on one row (the gap between them empty) with the face
    of its track with the most chips; the people section once people.parquet is there, and a note when it is stale."""
    from test_people import made_up_run, thumb

    from pipeline.people_link import write_people

    out = made_up_run(tmp_path)
    page = build_report(out)
    text = page_text(page)
    assert_self_contained(page)
    assert "a.mp4 person 0 Happy Happy 0.0-2.0 s, Happy 5.0-7.0 s" in text  # the overview, per person
    assert "persons 3" in text and "tracks 4" in text
    assert "person 0 (tracks 0, 2): dominant Happy , 0.0-7.0 s (4.0 s with the face, 2 segments" in text
    assert "person 2 (track 3): dominant Happy" in text
    blocks = dict(re.findall(r'<div class="track" id="p-(\w+-\d)">(.*?)</div></div>', page))
    assert sorted(blocks) == ["va-0", "va-1", "va-2", "vb-0", "vb-1"]  # a block per person, not per track
    assert f'src="{thumb("va", 0)}"' in blocks["va-0"]  # 7 chips against 1
    assert f'src="{thumb("vb", 2)}"' in blocks["vb-1"]  # 2 chips each: the earlier track (1.0 s against 3.0 s)
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", blocks["va-0"]).group(0))
    assert [(s.get("data-t0"), s.get("data-t1")) for s in svg.iter("g")] == [("0.000", "2.000"), ("5.000", "7.000")]
    assert "People across the run" not in text

    write_people(out)
    page = build_report(out)
    text = page_text(page)
    assert_self_contained(page)
    section = text.split("People across the run (5)")[1].split("Videos (")[0]
    assert "person 0 : 2 files a.mp4 person 0, b.mp4 person 1 " in section
    assert "person 1 : 2 files a.mp4 person 1, c.jpg person 0" in section and "person 4 : 1 file c.jpg person 1" in section
    people = re.search(r'<section id="people">.*?</section>', page).group(0)
    assert re.findall(r'src="([^"]+)"', people) == [thumb(v, t) for v, t in (("va", 0), ("va", 1), ("va", 3),
                                                                             ("vb", 0), ("vc", 1))]
    assert "does not match" not in text
    m = json.loads((out / "manifest.json").read_text())
    storage.write(out / "manifest.json", json.dumps({**m, "videos": m["videos"][:2]}))  # b.mp4, c.jpg gone since
    assert "people.parquet does not match the timelines of this run" in page_text(build_report(out))


def test_no_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        write_report(tmp_path)


# --------------------------------------------------------------------------- a real run, in a real browser
def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: .ci/run installs Debian's package before the tests "
                    "(apt-get install chromium); install it the same way to run this test")
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--hide-scrollbars", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "the page logged to the console (it has no scripts: an error or a blocked load):\n" + \
        "\n".join(console)
    return res


def reason(rec: dict) -> str:
    return rec["error"] or ("no faces found" if rec["status"] == "no_faces" else "")


def test_report_in_chromium(annotated, tmp_path):
    """The fixture run (videos and, when the run has them, images) through write_report, loaded by Chromium."""
    written = (annotated / "report.html").read_text()  # by the fixture's annotate, at the end of its run
    path = write_report(annotated)
    assert path == annotated / "report.html"
    page = path.read_text()
    assert page == written
    assert_self_contained(page)
    m = json.loads((annotated / "manifest.json").read_text())
    records = m["videos"]
    dom = chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    text = page_text(dom)
    assert f"WARNING: {m['warning']}" in text and "untrained" in text
    for status, n in Counter(r["status"] for r in records).items():
        assert f" {status} {n} " in text  # counts by status
    bad = [r for r in records if r["status"] != "ok"]
    assert f"Errors and files without a timeline ({len(bad)})" in text and any(r["status"] == "no_faces" for r in bad)
    faces = tracks = 0
    for rec in records:
        name = Path(rec["video_path"]).name
        assert f"{name} ({rec['status']})" in text
        if rec["status"] != "ok":
            assert f"{name} {rec['status']} {reason(rec)}" in text  # the errors table, with the reason
            continue
        df = pd.read_parquet(annotated / rec["timeline"])
        tracks += df.track_id.nunique()
        faces += df.track_id.nunique() if rec.get("kind") == "image" else df.person_id.nunique()  # a face each
        assert rec["n_persons"] == df.person_id.nunique()
        if rec.get("kind") == "image":
            for r in df.itertuples():
                assert f"face {r.track_id}: {r.label} {r.confidence:.2f}" in text
            continue
        for s in summarize(df, m["labels"]).itertuples():
            assert f"person {s.person_id} (track{'s' if s.n_tracks > 1 else ''} {s.tracks}): dominant {s.dominant} ," \
                in text
            assert f'id="p-{rec["video_id"]}-{s.person_id}"' in dom
        assert f'data-duration="{rec["duration_s"]:g}"' in dom  # every track's axis: the whole video
    assert tracks == sum(r["n_tracks"] for r in records) >= 3  # group.mp4 alone has several faces
    section = re.search(r'<section id="people">.*?</section>', dom, re.S).group(0)  # annotate wrote people.parquet
    assert dom.replace(section, "").count('class="thumb" src="data:image/jpeg;base64,') == faces  # one per person

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri())
    from PIL import Image

    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 2000)
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 200  # text, tables, faces, stacked colours: not blank

    # the same run with one more error record and a cache without its entries (its timelines where they are, as an
    # older manifest names them): errors table; the thumbnails come from the timelines, which hold them (the decoded
    # fallback needs the cache: test_hand_made_run)
    run2 = tmp_path / "run2"
    records = [{**r, "timeline": r["timeline"] and str(annotated / r["timeline"])} for r in records]
    m["videos"] = records + [{"video_id": "0000broken", "video_path": "/in/broken.mp4", "status": "error",
                              "error": "/in/broken.mp4: empty file (0 bytes)", "timeline": None, "n_segments": 0,
                              "n_tracks": 0}]
    m["cache_dir"] = str(tmp_path / "empty_cache")
    storage.write(run2 / "manifest.json", json.dumps(m))
    text2 = page_text(dom2 := chromium(tmp_path, "--dump-dom", write_report(run2).as_uri()).stdout)
    assert f"Errors and files without a timeline ({len(bad) + 1})" in text2
    assert "broken.mp4 error /in/broken.mp4: empty file (0 bytes)" in text2
    assert "no landmark cache entry" not in text2
    assert dom2.count('class="thumb" src="data:image/jpeg;base64,') == faces

    # the run's people.parquet (annotate writes it, as s2d people does): the people section, a real face for each
    # global person; the man of single_face.mp4 is the man of the stills, the group video's five people are
    # multi_face.jpg's five
    from pipeline.people_link import link_people

    people = pd.read_parquet(annotated / "people.parquet")
    assert people.equals(link_people(annotated))
    assert section.count('class="thumb" src="data:image/jpeg;base64,') == people.global_person_id.nunique()
    captions = [page_text(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", section, re.S)]
    jin = next(c for c in captions if "single_face.mp4 person 0" in c)
    assert "single_face.jpg person 0" in jin and "rotated.jpg person 0" in jin and "group.mp4" not in jin
    files = people.groupby("global_person_id").video_path.apply(lambda p: sorted(Path(x).name for x in p))
    assert sum(f == ["group.mp4", "multi_face.jpg"] for f in files) == 5


def test_stored_thumbnails_are_the_decoded_ones(annotated):
    """The thumbnails annotate stores in each timeline (made by the face actor from the frames it decoded) are,
    byte for byte, those the report would make by decoding the video again at the cache entry's best face rows."""
    from pipeline.cache import read_entry
    from pipeline.thumbnails import thumbnails
    from pipeline.timeline import timeline_thumbnails

    m = json.loads((annotated / "manifest.json").read_text())
    n = Counter()
    for rec in m["videos"]:
        if not rec.get("n_tracks"):
            continue
        stored = timeline_thumbnails(storage.read_table(annotated / rec["timeline"]))
        faces = read_entry(annotated / m["cache_dir"], m["face_settings_hash"], rec["video_id"])[0]
        assert stored == thumbnails(rec, faces), rec["video_path"]
        assert len(stored) == rec["n_tracks"]
        n[rec["kind"]] += len(stored)
    assert n["video"] >= 3 and n["image"] >= 5, n  # group.mp4 has several faces; multi_face.jpg too


def test_cli(annotated, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["report", str(annotated), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"report: {tmp_path / 'r.html'}" and (tmp_path / "r.html").stat().st_size > 1000
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "manifest.json not found" in res.output
