"""Persons (face tracks grouped by face descriptors): how well, and at what cost.

    python bench/persons.py [--quick] [--runs N] [--workdir DIR] [--interval S] [--timeout S]

1. accuracy: tests/edits.py's STANDARD_EDIT (10 shots, 6 people, hard cuts, two people side by side, one man as a
   video and as a still) written to a temp folder, ``run_faces`` on it with identities on (default threshold), the
   tracks labelled with the truth (``label_tracks``; tracks labelled "none" are left out). Over pairs of tracks:
   precision and recall of "same person" (predicted: same person_id; true: same label), persons found vs true, and
   the Euclidean distances between tracks' mean descriptors (max same-person, min different-person). Then a
   threshold sweep: the cache's descriptors re-grouped with ``pipeline.persons.video_persons`` (no decode).
2. cost: ``run_annotate`` (random-tiny S2D, fixture detector and landmarks, as bench/annotate_speed.py's section a)
   on annotate_speed's generated 300 s 640x360 video (``--quick``: 30 s), identities off and on alternately (off,
   on, off, on; ``--quick``: one each), each a fresh child process (annotate_speed's runner: the PSS of the child and
   all its descendants sampled every ``--interval`` s, its peak reported, lingering processes killed). Video-s per
   wall-s (``AnnotateResult.wall_seconds``) and peak PSS per mode (mean over its runs), on / off, and the chips
   described (faces through the recognition net: the cache's tracks' ``n_chips``) per video-second.
   Cost runs first, while this process has no torch or Ray loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import annotate_speed as A
from table import print_table

REPO = A.REPO
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # pipeline, and tests/edits.py
GOAL_P = GOAL_R = 0.95
GOAL_SLOWER, GOAL_PSS_MIB = 0.10, 200.0


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measured annotate run (a JSON spec)
    ap.add_argument("--quick", action="store_true", help="cost on a 30 s video, one run per mode")
    ap.add_argument("--runs", type=int, default=None, help="runs per mode in part 2 (default 2; --quick 1)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2d-annotate-speed",
                    help="annotate_speed's input cache (generated videos are reused); run folders go here too")
    ap.add_argument("--fixtures", type=Path, default=A.FIXTURES)
    ap.add_argument("--interval", type=float, default=0.5, help="PSS sampling interval, seconds")
    ap.add_argument("--timeout", type=float, default=None, help="per cost run, seconds (default 3600; --quick 900)")
    return ap.parse_args()


def _identity_weights(fx: Path) -> str | None:
    """The fixture's face-api recognition manifest if present, else None (the usual lookup)."""
    p = fx / "weights" / "face-api" / "face_recognition_model-weights_manifest.json"
    return str(p) if p.is_file() else None


# ------------------------------------------------------------------------------------------ 2. cost (child)
def _annotate(spec: dict) -> dict:
    """One run_annotate in this child (replaces annotate_speed._annotate in its child_main)."""
    import numpy as np

    from pipeline import cache
    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings, FaceSettings

    faces = FaceSettings(detector_weights=spec["mnet"], landmark_weights=spec["mfn"], identities=spec["identities"],
                         identity_weights=spec["idw"])
    settings = AnnotateSettings(weights="random-tiny", s2d_landmark_weights=spec["mfn"])
    r = run_annotate(spec["videos"], spec["out"], spec["cache"], faces, settings, device="cpu", progress=False)
    chips = tracks = 0
    for vid in cache.list_entries(r.cache_dir, r.faces.settings_hash):
        n = np.asarray(cache.read_tracks(r.cache_dir, r.faces.settings_hash, vid).column("n_chips"))
        chips, tracks = chips + int(n.sum()), tracks + len(n)
    return dict(wall_seconds=r.wall_seconds, clips=r.clips, statuses=[v["status"] for v in r.videos],
                persons=sum(v["n_persons"] for v in r.videos), chips=chips, tracks=tracks)


def child(spec: dict) -> None:
    A._annotate = _annotate  # annotate_speed's child: subreaper, run, ray.shutdown, lingering processes killed
    A.child_main(spec)


# ------------------------------------------------------------------------------------------ 2. cost (parent)
def cost(rows: list, args, fx: Path, seconds: float, runs: int) -> None:
    workdir = args.workdir.expanduser().resolve()
    video = A._video(workdir, fx, seconds)
    dur = A._duration(video)
    runs_dir = Path(tempfile.mkdtemp(prefix="persons_", dir=workdir))
    runner = A.Runner({"new": REPO}, runs_dir, fx, args.interval, args.timeout or (900 if args.quick else 3600))
    res: dict[bool, list[dict]] = {False: [], True: []}
    try:
        for i in range(runs):
            for on in (False, True):  # alternating: off, on, off, on
                label = f"identities_{'on' if on else 'off'}_{i}"
                d = runs_dir / label
                spec = dict(kind="annotate", chain="new", videos=[str(video)], out=str(d / "out"),
                            cache=str(d / "cache"), identities=on, idw=_identity_weights(fx),
                            mnet=str(fx / "weights" / "mobilenet0.25_Final.pth"),
                            mfn=str(fx / "weights" / "mobilefacenet_68pt.pth.tar"), result=str(d / "result.json"))
                d.mkdir(parents=True)
                m = runner.measure(label, "new", [sys.executable, str(Path(__file__).resolve()), "--one",
                                                  json.dumps(spec)])
                got = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).is_file() else {}
                r = {**m, **got}
                if A._ok(r):
                    r["speed"] = dur / r["wall_seconds"]
                res[on].append(r)
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)

    def mean(on: bool, key: str):
        v = [r.get(key) for r in res[on]]
        return None if not v or None in v else sum(v) / len(v)

    sec, tag = "2 cost", f"{dur:g} s {A.W}x{A.H}"
    sp = {on: mean(on, "speed") for on in (False, True)}
    pss = {on: mean(on, "peak_pss") if all(A._ok(r) for r in res[on]) else None for on in (False, True)}
    each = {on: ", ".join(f"{r['speed']:.2f}" if r.get("speed") else A._status(r) for r in res[on])
            for on in (False, True)}
    each_pss = {on: ", ".join(f"{r['peak_pss']:.0f}" for r in res[on]) for on in (False, True)}
    rows.append(dict(section=sec, item=f"{tag}, identities off: video-s per wall-s", value=sp[False],
                     unit="video-s/s", detail=f"{runs} run(s): {each[False]}; {A._status(res[False][0])}"))
    ratio = A._per(sp[True], sp[False])
    rows.append(dict(section=sec, item="  identities on: video-s per wall-s", value=sp[True], unit="video-s/s",
                     ratio=ratio, vs=f"goal >= {1 - GOAL_SLOWER:.2f}x", detail=f"{runs} run(s): {each[True]}; " + (
                         f"{100 * (ratio - 1):+.1f}% speed vs off: " + ("meets goal" if ratio >= 1 - GOAL_SLOWER else
                                                                   "misses goal") if ratio else "FAILED")))
    rows.append(dict(section=sec, item="  peak PSS, whole tree, identities off", value=pss[False], unit="MiB",
                     detail=f"each: {each_pss[False]}; largest {res[False][-1]['top']}"))
    extra = pss[True] - pss[False] if None not in pss.values() else None
    rows.append(dict(section=sec, item="  peak PSS, whole tree, identities on", value=pss[True], unit="MiB",
                     ratio=A._per(pss[True], pss[False]), vs=f"goal <= off + {GOAL_PSS_MIB:.0f}",
                     detail=f"each: {each_pss[True]}; "
                            + (f"{extra:+.0f} MiB: " + ("meets goal" if extra <= GOAL_PSS_MIB else "misses goal")
                               if extra is not None else "FAILED") + f"; largest {res[True][-1]['top']}"))
    on = res[True][-1]
    rows.append(dict(section=sec, item="  chips described per video-second (on)",
                     value=A._per(A._get(on, "chips"), dur), unit="chips/s",
                     detail=f"{A._get(on, 'chips')} chips over {A._get(on, 'tracks')} tracks, "
                            f"{A._get(on, 'persons')} persons (off: {A._get(res[False][-1], 'tracks')} tracks, "
                            f"{A._get(res[False][-1], 'persons')} persons; persons = those with segments); "
                            f"clips classified {A._get(on, 'clips')}"))


# ------------------------------------------------------------------------------------------ 1. accuracy
def pairs(labels: dict[int, str], persons: dict[int, int]) -> tuple[float | None, float | None, int]:
    """(precision, recall, persons found) of "same person" over the pairs of labelled tracks."""
    tp = fp = fn = 0
    for a, b in combinations(sorted(labels), 2):
        same, pred = labels[a] == labels[b], persons[a] == persons[b]
        tp, fp, fn = tp + (same and pred), fp + (pred and not same), fn + (same and not pred)
    return A._per(tp, tp + fp) if tp + fp else 1.0, A._per(tp, tp + fn) if tp + fn else 1.0, \
        len({persons[t] for t in labels})


def accuracy(rows: list, fx: Path) -> None:
    import numpy as np
    import ray

    from edits import STANDARD_EDIT, label_tracks, make_edit
    from pipeline import cache
    from pipeline.faces_run import run_faces
    from pipeline.persons import video_persons
    from pipeline.settings import IDENTITY_THRESHOLD, FaceSettings

    sec = "1 accuracy"
    with tempfile.TemporaryDirectory(prefix="s2d-persons-") as tmp:
        print(f"[{time.strftime('%H:%M:%S')}] accuracy: writing STANDARD_EDIT, run_faces ...", file=sys.stderr,
              flush=True)
        path = Path(tmp) / "standard_edit.mp4"
        truth = make_edit(path, fx, STANDARD_EDIT)
        t = time.perf_counter()
        r = run_faces([path], Path(tmp) / "cache", FaceSettings(
            detector_weights=str(fx / "weights" / "mobilenet0.25_Final.pth"),
            landmark_weights=str(fx / "weights" / "mobilefacenet_68pt.pth.tar"),
            identity_weights=_identity_weights(fx)), progress=False)
        wall = time.perf_counter() - t
        if ray.is_initialized():
            ray.shutdown()
        df = cache.read_faces(r.cache_dir, r.settings_hash)
        tr = cache.read_tracks(r.cache_dir, r.settings_hash, r.videos[0]["video_id"]).to_pydict()
    every = label_tracks(df, truth)
    labels = {t: p for t, p in every.items() if p != "none"}
    true_n = len({f["person"] for f in truth})
    cached = dict(zip(tr["track_id"], tr["person_id"]))
    desc = {t: np.asarray(d, np.float64) for t, d in zip(tr["track_id"], tr["descriptor"]) if d is not None}
    p, rc, found = pairs(labels, cached)
    by = {}
    for t, lab in sorted(labels.items()):
        by.setdefault(lab, []).append(t)
    rows.append(dict(section=sec, item="tracks (labelled by the truth)", value=str(len(labels)), unit="tracks",
                     detail=f"{len(every)} tracks, {len(every) - len(labels)} 'none'; {len(desc)} with a "
                            f"descriptor; run_faces {wall:.0f} s; " + ", ".join(f"{k}: {v}" for k, v in by.items())))
    rows.append(dict(section=sec, item=f"persons found (threshold {IDENTITY_THRESHOLD:g})", value=found,
                     unit="persons", vs=f"true {true_n}", detail=f"{len(set(cached.values()))} persons in the video "
                                                                 "('none' tracks included)"))
    for name, v, goal in (("pairwise precision", p, GOAL_P), ("pairwise recall", rc, GOAL_R)):
        rows.append(dict(section=sec, item=name, value=v, unit="", vs=f"goal >= {goal}",
                         detail="meets goal" if v >= goal else "misses goal"))
    same, diff = [], []
    for a, b in combinations(sorted(t for t in labels if t in desc), 2):
        d = float(np.linalg.norm(desc[a] - desc[b]))
        (same if labels[a] == labels[b] else diff).append((d, a, b))
    for name, v in (("max same-person distance", max(same, default=None)),
                    ("min different-person distance", min(diff, default=None))):
        rows.append(dict(section=sec, item=name, value=v[0] if v else None, unit="L2",
                         detail=f"tracks {v[1]} ({labels[v[1]]}) and {v[2]} ({labels[v[2]]})" if v else "no pair"))
    if same and diff:
        rows.append(dict(section=sec, item="gap (min different - max same)", value=min(diff)[0] - max(same)[0],
                         unit="L2", detail=f"default threshold {IDENTITY_THRESHOLD:g}; track means, not group means"))

    sec = "1b threshold sweep"
    args = (df["frame_index"].to_numpy(), df["track_id"].to_numpy(), df["time_s"].to_numpy(), desc)
    regroup = video_persons(*args, IDENTITY_THRESHOLD)
    rows.append(dict(section=sec, item="re-grouped at the default = the cache's persons", unit="",
                     value="yes" if regroup == cached else "NO", detail="video_persons from the cache's descriptors"))
    for th in sorted({*np.round(np.arange(0.25, 0.5001, 0.03), 3).tolist(), IDENTITY_THRESHOLD}):
        p, rc, found = pairs(labels, video_persons(*args, th))
        ok = p >= GOAL_P and rc >= GOAL_R
        rows.append(dict(section=sec, item=f"threshold {th:.2f}" + (" (default)" if th == IDENTITY_THRESHOLD else ""),
                         value=p, unit="precision", vs=f"recall {rc:.3f}",
                         detail=f"{found} persons of {true_n}; " + ("meets both goals" if ok else "misses")))


def main() -> None:
    args = _args()
    if args.one:
        return child(json.loads(args.one))
    fx = args.fixtures.resolve()
    A._check_fixtures(fx)
    seconds, runs = (30.0, args.runs or 1) if args.quick else (300.0, args.runs or 2)
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows: list[dict] = []
    cost(rows, args, fx, seconds, runs)  # first: this process holds no torch or Ray yet
    accuracy(rows, fx)
    load1 = os.getloadavg()
    rows.sort(key=lambda r: r["section"])
    print(f"\nPersons: accuracy on STANDARD_EDIT and cost on a {seconds:g} s video "
          f"({'quick' if args.quick else 'full'} run), {os.cpu_count()} CPUs, CPU only\n")
    print_table(rows)
    print(f"\nnotes:\n- goals: pairwise precision and recall >= {GOAL_P}; identities on at most "
          f"{100 * GOAL_SLOWER:.0f}% slower and at most +{GOAL_PSS_MIB:.0f} MiB peak PSS than off.\n"
          f"- cost: each run a fresh child (run_annotate, random-tiny S2D, local Ray on all CPUs), runs alternating "
          f"off/on; PSS of the whole process tree sampled every {args.interval:g} s; values are means over runs.\n"
          f"- load average before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/"
          f"{load1[2]:.2f}: a shared machine, treat timings as rough. Total {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
