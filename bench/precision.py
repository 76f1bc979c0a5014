"""S2D's precision on CPU: speed and accuracy cost of bf16 against fp32, the model as the chain's S2D actor runs it.

    python bench/precision.py [--threads 2] [--min-s 20] [--workdir DIR]

1. speed: the full-size S2D (``s2d_base_patch16_224``, random weights, seed 0, saved in the authors' fine-tuned
   layout as bench/annotate_speed.py does) through ``S2DWorker.probabilities``, one clip per forward (as the chain
   runs it on CPU), ``--threads`` torch threads, new random uint8 clips each call, timed after a warm-up call,
   in a fresh child per precision (fp32, bf16, then fp32 again: this machine's speed drifts): clips/s and the
   ratio to the mean of the fp32 runs; also s2d_tiny.
2. accuracy: real face clips cut from the fixture videos (single_face.mp4, face_noface.mov: the man's face,
   RetinaFace + ArcFace-template alignment at 224 px, 16 frames sampled at 8 fps, windows 8 frames apart) through
   the same models: relative logit error ||bf16 - fp32|| / ||fp32|| per clip (max and mean), the largest
   probability difference, and top-1 agreement (meaningful only for trained weights: random ones are given).
   face-api's trained expression net on the fixture stills' crops in fp32 and bf16: top-1 agreement and the
   largest probability difference (auto keeps it fp32; this says what bf16 would cost).
The CPU's native bf16 flag is printed (pipeline.precision): bf16 without one runs emulated.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import annotate_speed as A
from table import cached_file, print_table

REPO = A.REPO
sys.path.insert(0, str(REPO))


def _speed(spec: dict) -> dict:
    """One precision's clips/s, in this (fresh) process."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    c = resolve_classifier(spec["weights"], None, spec["mfn"], precision=spec["precision"])
    worker = S2DWorker(c, threads=spec["threads"])
    worker.load("video")
    rng = np.random.default_rng(0)
    clip = lambda: rng.integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8)  # noqa: E731
    worker.probabilities(clip())
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < spec["min_s"]:
        worker.probabilities(clip())
        n += 1
    return {"clips_s": n / (time.perf_counter() - t0), "clips": n}


def _child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})
    if out.returncode:
        return {"failed": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def face_clips(fx: Path):
    """Real aligned face clips uint8 [N, 16, 224, 224, 3] from the fixture videos (8 fps, windows 8 frames
    apart)."""
    import av
    import numpy as np

    from pipeline.align import align_face
    from pipeline.detector import FaceDetector
    from pipeline.settings import DETECTORS

    det = FaceDetector(fx / "weights" / "mobilenet0.25_Final.pth", DETECTORS["retinaface-mobilenet"])
    clips = []
    for name in ("single_face.mp4", "face_noface.mov"):
        faces, next_t = [], 0.0
        with av.open(str(fx / "videos" / name)) as f:
            for fr in f.decode(video=0):
                if fr.time + 1e-6 < next_t:
                    continue
                next_t += 0.125
                rgb = fr.to_ndarray(format="rgb24")
                d = det(rgb[None])[0]
                if len(d["score"]):
                    faces.append(align_face(rgb, d["kps5"][int(np.argmax(d["score"]))]))
        clips += [np.stack(faces[i:i + 16]) for i in range(0, len(faces) - 15, 8)]
    return np.stack(clips)


def _accuracy(weights: str, mfn: str, clips) -> dict:
    """fp32 against bf16 logits of one model on ``clips``, as the S2D actor computes them."""
    import numpy as np

    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    logits = {}
    for p in ("fp32", "bf16"):
        worker = S2DWorker(resolve_classifier(weights, None, mfn, precision=p), threads=2)
        logits[p] = np.concatenate([worker.logits(clips[i:i + 1]) for i in range(len(clips))])
    a, b = logits["fp32"], logits["bf16"]
    rel = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
    pa, pb = (np.exp(x - x.max(1, keepdims=True)) for x in (a, b))
    pa, pb = pa / pa.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True)
    return {"rel_max": float(rel.max()), "rel_mean": float(rel.mean()), "p_diff": float(np.abs(pa - pb).max()),
            "top1": float((a.argmax(1) == b.argmax(1)).mean()), "n": len(a)}


def _faceapi(fx: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from s2d_model.faceapi import load_expression_net, to_input

    net = load_expression_net(fx / "weights" / "face-api" / "face_expression_model-weights_manifest.json")
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((fx / "weights/face-api/reference").glob("*.png"))]
    x = to_input(crops)
    with torch.inference_mode():
        a = net(x).float().softmax(-1).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = net(x).float().softmax(-1).numpy()
    return {"top1": float((a.argmax(1) == b.argmax(1)).mean()), "p_diff": float(np.abs(a - b).max()), "n": len(a)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-s", type=float, default=20.0, help="time each speed row at least this long")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2d-annotate-speed")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_speed(json.loads(args.one))))
        return
    from pipeline.precision import native_bf16

    fx = A.FIXTURES
    mfn = str(fx / "weights" / "mobilefacenet_68pt.pth.tar")
    base = str(cached_file(args.workdir / "weights" / "s2d_base_random.pth",
                           lambda p: A._random_s2d(p, "s2d_base_patch16_224")))
    rows = []
    for name, weights in (("base", base), ("tiny", "random-tiny")):
        got = {p: _child(dict(weights=weights, mfn=mfn, precision=p.split("#")[0], threads=args.threads,
                              min_s=args.min_s)) for p in ("fp32", "bf16", "fp32#2")}
        fp32 = [got[p]["clips_s"] for p in ("fp32", "fp32#2") if "clips_s" in got[p]]
        ref = sum(fp32) / len(fp32) if fp32 else None
        for p in ("fp32", "bf16"):
            r = got[p]
            if "failed" in r:
                rows.append(dict(section=f"1 speed {name}", item=p, value=None, unit="", detail=r["failed"]))
                continue
            value = ref if p == "fp32" else r["clips_s"]
            rows.append(dict(section=f"1 speed {name}", item=f"{p}, {args.threads} threads, batch 1", value=value,
                             unit="clips/s", ratio=value / ref if ref else None, vs="fp32",
                             detail=(f"fp32 runs {', '.join(f'{v:.3f}' for v in fp32)}" if p == "fp32" else
                                     f"{r['clips']} clips") + ("; goal >= 1.7x" if name == "base" and p == "bf16"
                                                               else "")))
    clips = face_clips(fx)
    for name, weights in (("base", base), ("tiny", "random-tiny")):
        a = _accuracy(weights, mfn, clips)
        rows += [dict(section=f"2 accuracy {name}", item="relative logit error, max (mean)", value=a["rel_max"],
                      unit="", detail=f"mean {a['rel_mean']:.4f} over {a['n']} real face clips; goal <= 0.01"),
                 dict(section=f"2 accuracy {name}", item="largest probability difference", value=a["p_diff"],
                      unit=""),
                 dict(section=f"2 accuracy {name}", item="top-1 agreement (random weights)", value=a["top1"],
                      unit="")]
    f = _faceapi(fx)
    rows += [dict(section="2 accuracy face-api (trained)", item="top-1 agreement bf16 vs fp32", value=f["top1"],
                  unit="", detail=f"{f['n']} face crops (weights/face-api/reference)"),
             dict(section="2 accuracy face-api (trained)", item="largest probability difference", value=f["p_diff"],
                  unit="")]
    print(f"S2D precision on CPU ({os.cpu_count()} cores; native bf16: {native_bf16() or 'none'}), "
          f"torch threads {args.threads}\n")
    print_table(rows)


if __name__ == "__main__":
    main()
