"""How the face crop changes a trained expression net's labels: face-api's expression net on the fixtures, one
row per crop geometry. Prints a markdown table (the README's "Crops" table):

- vs upstream: face-api's own outputs (``reference.json``) for its own crops of the same faces (its detector box
  widened by 15%): mean |p - p_ref| over the 7 classes and the 8 reference faces, and how many argmaxes agree;
- stills: the labelled posed stills (surprise, happiness, anger, disgust) read right;
- video: ``single_face.mp4`` at 8 fps read neutral before the smile (t < 0.57 s) and happy once it is broad
  (t >= 0.67 s), frames right of frames.

    python bench/crop_geometry.py [--fixtures ../shared/fixtures]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.crops import parse_crop  # noqa: E402

CROPS = ["box:1.0@112", "box:1.1@112", "box:1.15@112", "box:1.2@112", "box:1.3@112", "box:1.45@112",
         "template:0@112", "template:0.1@112", "template:0.25@112", "mtcnn@112"]
STILLS = {"0-f1-su-ph.jpg": "surprised", "0-f15-hao-ph.jpg": "happy", "15-f13-anc-ph.jpg": "angry",
          "45-m7-di-ph.jpg": "disgusted"}


def faces_of(detector, frame):
    d = detector(frame[None])[0]
    return d["bbox"], d["kps5"]


def nearest(boxes, box) -> int:
    """The detection whose centre is nearest the centre of ``box``."""
    c = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return int(np.argmin([np.hypot(*(np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) - c)) for b in boxes]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures")
    args = ap.parse_args()
    from s2d_model.faceapi import CLASSES, expression_probs, load_expression_net
    from pipeline.decode import get_decoder
    from pipeline.images import read_image
    from pipeline.detector import FaceDetector

    fx = args.fixtures
    net = load_expression_net(fx / "weights/face-api/face_expression_model-weights_manifest.json")
    detector = FaceDetector(fx / "weights/mobilenet0.25_Final.pth", long_side=640)
    ref = json.loads((fx / "weights/face-api/reference.json").read_text())
    sources: dict[str, np.ndarray] = {}
    for c in ref["crops"]:  # the reference faces' source frames
        src = c["source"]
        if src.startswith("videos/"):  # "videos/single_face.mp4 (frame 45, PTS 1.5 s = ...)"
            path, index = src.split(" ")[0], int(src.split("frame ")[1].split(",")[0])
            sources[src] = next(f for i, _, f in get_decoder().iter_frames(fx / path, None) if i == index)
        else:
            sources[src] = read_image(fx / src)
        c["key"] = src
    video = [(t, f) for _, t, f in get_decoder().iter_frames(fx / "videos/single_face.mp4", 8.0)]
    found = {k: faces_of(detector, f) for k, f in sources.items()}
    stills = {n: faces_of(detector, read_image(fx / "images" / n)) for n in STILLS}
    frames = [(t, faces_of(detector, f), f) for t, f in video]
    print("| crop | vs upstream: mean abs diff | argmax agrees | stills right | video frames right |")
    print("|---|---|---|---|---|")
    for spec in CROPS:
        crop = parse_crop(spec)
        diffs, agree = [], 0
        for c in ref["crops"]:
            boxes, kps = found[c["key"]]
            x1, y1, x2, y2 = c["crop_box_xyxy_in_source"]
            i = nearest(boxes, (x1, y1, x2, y2))
            p = expression_probs(net, crop.cut(sources[c["key"]], boxes[i], kps[i])[None])[0]
            diffs.append(np.abs(p - np.asarray(c["expressions"])).mean())
            agree += int(p.argmax() == int(np.argmax(c["expressions"])))
        right = sum(CLASSES[expression_probs(net, crop.cut(read_image(fx / "images" / n), b[0], k[0])[None])[0]
                            .argmax()] == want for n, want in STILLS.items() for b, k in [stills[n]])
        good = n = 0
        for t, (b, k), f in frames:
            want = "neutral" if t < 0.57 else "happy" if t >= 0.67 else None
            if want is None or not len(b):
                continue
            n += 1
            good += CLASSES[expression_probs(net, crop.cut(f, b[0], k[0])[None])[0].argmax()] == want
        print(f"| `{spec}` | {np.mean(diffs):.3f} | {agree}/{len(ref['crops'])} | {right}/{len(STILLS)} | "
              f"{good}/{n} |")


if __name__ == "__main__":
    main()
