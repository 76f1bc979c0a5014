"""Writes the golden outputs that tests/test_golden.py compares the chain against.

The files in this folder were made by this script on commit a7e3743 (the chain before the one-pass rebuild):
``python tests/golden/make_golden.py``. Run it again only for a deliberate change of outputs, and say why in the
commit. Persons (issue 36) added a ``person_id`` column to both kinds of file, inserted into these files after the
track ids were checked unchanged: each track its own person, numbered by first appearance (the five faces of
``group.mp4`` are five people; the other videos have one track each). Inputs: the three fixture videos and ``group.mp4`` (five still faces, kept here as it was encoded).
Weights: the fixture RetinaFace and MobileFaceNet files, S2D ``random-tiny`` (seeded, so the same numbers).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))
VIDEOS = ("single_face.mp4", "no_face.mp4", "face_noface.mov")
RUNS = {"default": {}, "views2": dict(segment_s=4.0, views=2)}  # name -> AnnotateSettings overrides


def inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in VIDEOS:
        shutil.copy(FIXTURES / "videos" / name, folder / name)
    shutil.copy(HERE / "group.mp4", folder / "group.mp4")
    return [folder / n for n in (*VIDEOS, "group.mp4")]


def main() -> None:
    import tempfile

    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings, FaceSettings

    faces = FaceSettings(detector_weights=str(FIXTURES / "weights" / "mobilenet0.25_Final.pth"),
                         landmark_weights=str(FIXTURES / "weights" / "mobilefacenet_68pt.pth.tar"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = inputs(Path(tmp) / "videos")
        for run, extra in RUNS.items():
            settings = AnnotateSettings(weights="random-tiny", s2d_landmark_weights=faces.landmark_weights, **extra)
            out = Path(tmp) / run
            result = run_annotate(paths, out, out / "cache", faces, settings, device="cpu", progress=False)
            for v in result.videos:
                name = Path(v["video_path"]).name
                table = pq.read_table(v["timeline"]).drop(["video_id", "video_path"])
                pq.write_table(table, HERE / f"{run}.{name}.timeline.parquet")
            if run == "default":
                for meta in result.faces.videos:
                    name = Path(meta["source_path"]).name
                    faces_file = next((out / "cache" / "faces").glob(f"*/{meta['video_id']}.faces.parquet"))
                    pq.write_table(pq.read_table(faces_file).drop(["video_id"]), HERE / f"{name}.faces.parquet")


if __name__ == "__main__":
    main()
