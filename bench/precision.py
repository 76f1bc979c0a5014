"""S2D's precision on CPU: speed and accuracy cost of bf16 and int8 against fp32, the model alone and end to end.

    python bench/precision.py [--threads 2] [--min-s 20] [--only 1,2,3,4] [--e2e-seconds 25] [--workdir DIR]

1. speed: the full-size S2D (``s2d_base_patch16_224``, random weights, seed 0, saved in the authors' fine-tuned
   layout as bench/annotate_speed.py does) through ``S2DWorker.probabilities``, one clip per forward (as the chain
   runs it on CPU), ``--threads`` torch threads, new random uint8 clips each call (the landmark branch's 16 frames
   included), timed after a warm-up call, in a fresh child per precision (fp32, bf16, int8, then fp32 again: this
   machine's speed drifts): clips/s and the ratio to the mean of the fp32 runs; also s2d_tiny.
2. accuracy: real face clips cut from the fixture videos (single_face.mp4, face_noface.mov: the man's face in every
   frame, RetinaFace + ArcFace-template alignment at 224 px, 16-frame windows 6 frames apart) through the same
   models: per precision, relative logit error ||p - fp32|| / ||fp32|| per clip (max and mean), the largest
   probability difference, and top-1 agreement (meaningful only for trained weights: random ones are given).
   face-api's trained expression net on the fixture stills' crops in fp32 and bf16: top-1 agreement and the
   largest probability difference (auto keeps it fp32; int8 is refused for it: no Linear layers to speak of).
3. face stage: RetinaFace-mnet (``FaceDetector``, 8 frames a batch) on the fixture videos' frames at 8 fps and the
   fixture stills, then MobileFaceNet (``MobileFaceNetLandmarks``) on its boxes, each network's forward in bf16
   (autocast, outputs back to fp32 before decoding) against fp32, in this process, fp32 / bf16 / fp32 again:
   frames/s, faces/s, same face counts per frame, largest box and landmark difference (boxes matched in sorted
   order). Adopted only if faster with the same detections (counts equal, boxes within 1 px).
4. end to end: per precision, ``run_annotate`` with the full-size model on bench/annotate_speed.py section d's
   inputs (3 generated videos of ``--e2e-seconds`` s + the 3 fixture videos; section d's Runner: a fresh child, its
   process tree's PSS read every 10 s), the model alone at batch 1 just before and just after it in a fresh child
   (same precision, 2 threads, OMP_WAIT_POLICY=ACTIVE): end-to-end clips/s, efficiency = that / the mean of the
   two model-alone rates (goal >= 0.85), and the run's peak PSS.
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
PRECISIONS = ("fp32", "bf16", "int8")


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
    """Real aligned face clips uint8 [N, 16, 224, 224, 3] from the fixture videos (every frame, windows 6 frames
    apart)."""
    import av
    import numpy as np

    from pipeline.align import align_face
    from pipeline.detector import FaceDetector
    from pipeline.settings import DETECTORS

    det = FaceDetector(fx / "weights" / "mobilenet0.25_Final.pth", DETECTORS["retinaface-mobilenet"])
    clips = []
    for name in ("single_face.mp4", "face_noface.mov"):
        faces = []
        with av.open(str(fx / "videos" / name)) as f:
            for fr in f.decode(video=0):
                rgb = fr.to_ndarray(format="rgb24")
                d = det(rgb[None])[0]
                if len(d["score"]):
                    faces.append(align_face(rgb, d["kps5"][int(np.argmax(d["score"]))]))
        clips += [np.stack(faces[i:i + 16]) for i in range(0, len(faces) - 15, 6)]
    return np.stack(clips)


def _accuracy(weights: str, mfn: str, clips) -> dict:
    """Each precision's logits against fp32's, of one model on ``clips``, as the S2D actor computes them."""
    import numpy as np

    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    logits = {}
    for p in PRECISIONS:
        worker = S2DWorker(resolve_classifier(weights, None, mfn, precision=p), threads=2)
        logits[p] = np.concatenate([worker.logits(clips[i:i + 1]).numpy() for i in range(len(clips))])
    a = logits["fp32"]
    out = {}
    for p in PRECISIONS[1:]:
        b = logits[p]
        rel = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
        pa, pb = (np.exp(x - x.max(1, keepdims=True)) for x in (a, b))
        pa, pb = pa / pa.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True)
        out[p] = {"rel_max": float(rel.max()), "rel_mean": float(rel.mean()), "p_diff": float(np.abs(pa - pb).max()),
                  "top1": float((a.argmax(1) == b.argmax(1)).mean()), "n": len(a)}
    return out


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


# ------------------------------------------------------------------------------------------ 3. face stage
def _bf16(module):
    """``module`` with its forward under bf16 autocast and its outputs back in fp32."""
    import torch

    class BF16(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.inner(x)
            return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()

    return BF16()


def face_stage(fx: Path, threads: int) -> dict:
    """{run: (detections, landmarks, frames/s, faces/s)} for fp32, bf16, fp32 again (section 3)."""
    import av
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.detector import FaceDetector
    from pipeline.landmarks import MobileFaceNetLandmarks
    from pipeline.settings import DETECTORS

    torch.set_num_threads(threads)
    batches = []  # 8 frames at 8 fps per batch, then each still alone
    for name in A.FIXTURE_VIDEOS:
        frames, next_t = [], 0.0
        with av.open(str(fx / "videos" / name)) as f:
            for fr in f.decode(video=0):
                if fr.time + 1e-6 >= next_t:
                    next_t += 0.125
                    frames.append(fr.to_ndarray(format="rgb24"))
        batches += [np.stack(frames[i:i + 8]) for i in range(0, len(frames), 8)]
    batches += [np.asarray(Image.open(p).convert("RGB"))[None] for p in sorted((fx / "images").iterdir())
                if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    det = FaceDetector(fx / "weights" / "mobilenet0.25_Final.pth", DETECTORS["retinaface-mobilenet"])
    lmk = MobileFaceNetLandmarks(fx / "weights" / "mobilefacenet_68pt.pth.tar")
    nets = det.model, lmk.net
    runs, boxes = {}, None  # landmarks on fp32's boxes in every run: MobileFaceNet's own difference
    for run in ("fp32", "bf16", "fp32#2"):
        det.model, lmk.net = nets if run != "bf16" else tuple(_bf16(n) for n in nets)
        for _ in range(2):  # the first pass warms up
            t = time.perf_counter()
            found = [d for b in batches for d in det(b)]
            t_det = time.perf_counter() - t
            frames = [f for b in batches for f in b]
            t = time.perf_counter()
            boxes = boxes or [d["bbox"] for d in found]
            points = [p for f, b in zip(frames, boxes) for p in lmk(f[None], [b])]
            t_lmk = time.perf_counter() - t
        faces = sum(len(b) for b in boxes)
        runs[run] = (found, points, len(frames) / t_det, faces / t_lmk)
    return runs


def _face_rows(runs: dict) -> list:
    import numpy as np

    def rows_sorted(v):
        return v[np.lexsort(v.reshape(len(v), -1).T[::-1])] if len(v) else v

    (a, la, *_), (b, lb, *_) = runs["fp32"], runs["bf16"]
    same = sum(len(x["bbox"]) == len(y["bbox"]) for x, y in zip(a, b))
    box = max((float(np.abs(rows_sorted(x["bbox"]) - rows_sorted(y["bbox"])).max()) for x, y in zip(a, b)
               if len(x["bbox"]) == len(y["bbox"]) and len(x["bbox"])), default=0.0)
    pts = max((float(np.abs(x - y).max()) for x, y in zip(la, lb) if x.shape == y.shape and len(x)), default=0.0)
    rows = []
    for i, (what, unit) in enumerate((("RetinaFace-mnet", "frames/s"), ("MobileFaceNet", "faces/s"))):
        ref = (runs["fp32"][2 + i] + runs["fp32#2"][2 + i]) / 2
        rows.append(dict(section="3 face stage", item=f"{what} fp32", value=ref, unit=unit, ratio=1.0, vs="fp32",
                         detail=f"fp32 runs {runs['fp32'][2 + i]:.1f}, {runs['fp32#2'][2 + i]:.1f}"))
        rows.append(dict(section="3 face stage", item=f"{what} bf16", value=runs["bf16"][2 + i], unit=unit,
                         ratio=runs["bf16"][2 + i] / ref, vs="fp32"))
    adopt = {"RetinaFace-mnet": same == len(a) and box <= 1.0 and rows[1]["ratio"] > 1.0,
             "MobileFaceNet": pts <= 1.0 and rows[3]["ratio"] > 1.0}
    rows += [dict(section="3 face stage", item="bf16: same face counts", value=same, unit=f"of {len(a)} frames",
                  detail=f"{sum(len(x['bbox']) for x in a)} faces in fp32, {sum(len(x['bbox']) for x in b)} in bf16"),
             dict(section="3 face stage", item="bf16: largest box difference", value=box, unit="px",
                  detail="RetinaFace: rule <= 1 px"),
             dict(section="3 face stage", item="bf16: largest landmark difference", value=pts, unit="px",
                  detail="MobileFaceNet on the same (fp32's) boxes: rule <= 1 px"),
             dict(section="3 face stage", item="bf16 adopted", value=", ".join(k for k, v in adopt.items() if v)
                  or "neither", unit="", detail="rule: faster with the same detections")]
    return rows


# ------------------------------------------------------------------------------------------ 4. end to end
def end_to_end(workdir: Path, fx: Path, ckpt: Path, mfn: str, seconds: float, threads: int) -> list:
    runs_dir = Path(tempfile.mkdtemp(prefix="runs_", dir=workdir))
    run = A.Runner({"new": REPO}, runs_dir, fx, interval=10.0, timeout=7200)
    vids = [A._video(workdir, fx, seconds, phase=k) for k in range(3)] + [fx / "videos" / n for n in A.FIXTURE_VIDEOS]
    rows = []
    def alone(p: str, when: str) -> dict:
        return run.one(f"{p}_model_alone_{when}", "new", dict(
            kind="model", weights=str(ckpt), mfn=mfn, batch=1, threads=threads, min_s=10.0, min_calls=3,
            precision=p), env={**run.env("new"), "OMP_WAIT_POLICY": "ACTIVE"}, interval=10.0)

    for p in PRECISIONS:
        before = alone(p, "before")
        r = run.annotate(f"{p}_annotate", "new", vids, str(ckpt), interval=10.0, precision=p)
        after = alone(p, "after")
        rates = [A._get(x, "clips_per_s") for x in (before, after)]
        model = sum(rates) / 2 if None not in rates else None
        e2e = A._per(A._get(r, "clips"), A._get(r, "wall_seconds"))
        eff = A._per(e2e, model)
        sec = f"4 end to end {p}"
        rows += [dict(section=sec, item="end-to-end clips/s", value=e2e, unit="clips/s",
                      detail=f"{A._get(r, 'clips')} clips in {A._get(r, 'wall_seconds') or 0:.1f} s ({A._status(r)})"),
                 dict(section=sec, item="model alone clips/s, batch 1", value=model, unit="clips/s",
                      detail=f"before {rates[0] or 0:.3f}, after {rates[1] or 0:.3f}"),
                 dict(section=sec, item="efficiency: end-to-end / model alone", value=eff, unit="",
                      detail="goal >= 0.85: " + ("meets" if (eff or 0) >= 0.85 else "misses")),
                 dict(section=sec, item="peak PSS, whole tree", value=r["peak_pss"], unit="MiB", detail=r["top"])]
    for r in rows:  # ratios of each precision's figures to fp32's
        ref = next(x for x in rows if x["section"] == "4 end to end fp32" and x["item"] == r["item"])
        if r["item"] != "efficiency: end-to-end / model alone" and r["value"] and ref["value"]:
            r.update(ratio=r["value"] / ref["value"], vs="fp32")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-s", type=float, default=20.0, help="time each speed row at least this long")
    ap.add_argument("--only", default="1,2,3,4", help="sections to run, e.g. 1,3")
    ap.add_argument("--e2e-seconds", type=float, default=25.0, help="length of section 4's generated videos")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2d-annotate-speed")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_speed(json.loads(args.one))))
        return
    from pipeline.precision import native_bf16

    only = set(args.only.split(","))
    fx = A.FIXTURES
    mfn = str(fx / "weights" / "mobilefacenet_68pt.pth.tar")
    base = cached_file(args.workdir / "weights" / "s2d_base_random.pth",
                       lambda p: A._random_s2d(p, "s2d_base_patch16_224"))
    rows = []
    for name, weights in (("base", str(base)), ("tiny", "random-tiny")) if "1" in only else ():
        got = {p: _child(dict(weights=weights, mfn=mfn, precision=p.split("#")[0], threads=args.threads,
                              min_s=args.min_s)) for p in (*PRECISIONS, "fp32#2")}
        fp32 = [got[p]["clips_s"] for p in ("fp32", "fp32#2") if "clips_s" in got[p]]
        ref = sum(fp32) / len(fp32) if fp32 else None
        goal = {"bf16": "; goal >= 1.7x", "int8": "; goal >= 2.5x"}
        for p in PRECISIONS:
            r = got[p]
            if "failed" in r:
                rows.append(dict(section=f"1 speed {name}", item=p, value=None, unit="", detail=r["failed"]))
                continue
            value = ref if p == "fp32" else r["clips_s"]
            rows.append(dict(section=f"1 speed {name}", item=f"{p}, {args.threads} threads, batch 1", value=value,
                             unit="clips/s", ratio=value / ref if ref else None, vs="fp32",
                             detail=(f"fp32 runs {', '.join(f'{v:.3f}' for v in fp32)}" if p == "fp32" else
                                     f"{r['clips']} clips") + (goal.get(p, "") if name == "base" else "")))
    if "2" in only:
        clips = face_clips(fx)
        for name, weights in (("base", str(base)), ("tiny", "random-tiny")):
            for p, a in _accuracy(weights, mfn, clips).items():
                sec, limit = f"2 accuracy {name} {p}", {"bf16": 0.01, "int8": 0.05}[p]
                rows += [dict(section=sec, item="relative logit error, max", value=a["rel_max"], unit="",
                              detail=f"mean {a['rel_mean']:.4f} over {a['n']} real face clips; goal <= {limit}"),
                         dict(section=sec, item="largest probability difference", value=a["p_diff"], unit=""),
                         dict(section=sec, item="top-1 agreement (random weights)", value=a["top1"], unit="")]
        f = _faceapi(fx)
        rows += [dict(section="2 accuracy face-api (trained) bf16", item="top-1 agreement vs fp32", value=f["top1"],
                      unit="", detail=f"{f['n']} face crops (weights/face-api/reference)"),
                 dict(section="2 accuracy face-api (trained) bf16", item="largest probability difference",
                      value=f["p_diff"], unit="")]
    if "3" in only:
        rows += _face_rows(face_stage(fx, args.threads))
    if "4" in only:
        rows += end_to_end(args.workdir, fx, base, mfn, args.e2e_seconds, args.threads)
    print(f"S2D precision on CPU ({os.cpu_count()} cores; native bf16: {native_bf16() or 'none'}), "
          f"torch threads {args.threads}\n")
    print_table(rows)


if __name__ == "__main__":
    main()
