"""Annotate speed: `run_annotate` end to end on Ray vs the S2D model alone, memory, and re-runs.

    python bench/annotate_speed.py [--quick] [--model s2d_tiny|s2d_base_patch16_224] [--videos N]
                                   [--seconds S] [--workdir DIR] [--device cpu|cuda] [--out-json FILE]

Prints one table, then notes. Sections:

1. cold run: ``run_annotate`` on a fresh cache dir and a fresh out dir (local ``ray.init(num_cpus=2)``, started
   before and not timed; Ray Data start-up and actor construction are in the time, as in ``s2d annotate``):
   wall seconds, clips/s, video-seconds per wall-second; the chain streams, so instead of stage times: when the
   last video's faces were tracked (``result.faces.wall_seconds``), when the first timeline file was written
   (``result.first_timeline_seconds``: before the former when the emotion stages overlap the face stages), and the
   time the S2D actors spent in the model (``result.s2d_seconds``).
2. model only, in this same process after the runs: ``ClassifyClips(...).probabilities`` on random uint8 clips
   [B, 16, 224, 224, 3] with the run's batch size B, timed after a warm-up call at that shape, with torch's
   default thread count here and with the thread count a Ray actor of ``num_cpus=1`` gets (Ray sets
   OMP_NUM_THREADS to the actor's CPUs; checked in a Ray task). Efficiency = end-to-end clips/s / model-only
   clips/s; also the S2D actor's own rate (clips / its seconds in the model) over model-only.
3. memory: peak RSS of this driver process (``ru_maxrss``; inputs and weights are made in a separate spawned
   process so they do not count) and of the Ray processes the local ``ray.init`` started (sampled from /proc
   every 0.25 s during the cold run: the sum of RSS over all of them, the sum of PSS (every 1 s; shared pages
   split among their users), and the RSS peak per actor kind).
4. re-runs, as ratios to the cold run: the same out dir again (complete timelines are skipped), and
   ``force=True`` on that out dir with the landmark cache warm (faces reused, emotions recomputed).

Inputs: ``--videos`` generated 640x360 30 fps videos of ``--seconds`` each, made from the real fixture face
video (``single_face.mp4``'s 72 frames played forwards and backwards, slowly panned and zoomed so the face
moves, each video with its own phase; libx264 veryfast crf 23), plus the real fixture videos
(``single_face.mp4``, ``face_noface.mov``, ``no_face.mp4``; ``--no-fixtures`` leaves them out). They are cached in
``--workdir`` (default ``$TMPDIR/s2d-annotate-speed``) and reused; generation time is not measured.
S2D weights: random weights (seed 0) of ``--model`` saved in the authors' fine-tuned layout into a temp dir
(removed at the end): speed only, labels meaningless. Detector and landmark weights are the real fixtures.
Timings on a shared machine are noisy: the notes print the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from table import cached_file, print_table

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))
W, H, FPS = 640, 360, 30
FIXTURE_VIDEOS = ("single_face.mp4", "face_noface.mov", "no_face.mp4")
RANDOM_LABEL = "random weights: speed only"


# ------------------------------------------------------------------------------------------ inputs (in a child)
def _generated_video(path: Path, fixtures: Path, seconds: float, phase: int) -> Path:
    """single_face.mp4's frames ping-pong looped, panned (+-60 px, +-20 px) and zoomed (0.85-1.0) slowly."""

    def write(tmp: Path) -> None:
        import math

        import av
        import cv2

        with av.open(str(fixtures / "videos" / "single_face.mp4")) as c:
            src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        src = [cv2.resize(f, (W, H)) if f.shape[:2] != (H, W) else f for f in src]
        order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))  # no jump at the seam
        n = int(round(seconds * FPS))
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            s.options = {"preset": "veryfast", "crf": "23"}
            for i in range(n):
                t = i / FPS + 3.7 * phase
                scale = 0.925 + 0.075 * math.cos(2 * math.pi * t / 11.0)
                dx = 60 * math.sin(2 * math.pi * t / 9.0)
                dy = 20 * math.sin(2 * math.pi * t / 6.5)
                m = cv2.getRotationMatrix2D((W / 2, H / 2), 0.0, scale)
                m[:, 2] += (dx, dy)
                img = cv2.warpAffine(src[order[i % len(order)]], m, (W, H), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)

    return cached_file(path, write)


def _random_s2d(path: Path, model_name: str) -> Path:
    """Random S2D weights (seed 0) in the authors' fine-tuned layout: {"model", "optimizer", "epoch", "args"}."""
    import torch

    import s2d_model as S

    torch.manual_seed(0)
    model = S.create_model(model_name, 7)
    with torch.no_grad():  # as tests/test_annotate.py: non-trivial weights (an untrained init is near-uniform)
        for name, p in model.named_parameters():
            if not name.startswith("landmark."):
                p.add_(torch.randn_like(p) * 0.02)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "scaler": {},
                "args": argparse.Namespace(model=model_name, nb_classes=7)}, tmp)
    os.replace(tmp, path)
    return path


def prepare(workdir: str, fixtures: str, n_videos: int, seconds: float, with_fixtures: bool, model_name: str,
            weights_dir: str) -> dict:
    """Runs in a spawned child (so the driver's ru_maxrss is the pipeline's): inputs and random S2D weights."""
    import av

    t = time.perf_counter()
    fx, wd = Path(fixtures), Path(workdir)
    folder = wd / "inputs"
    videos = []
    for k in range(n_videos):
        tag = f"{seconds:g}".replace(".", "p")
        videos.append(_generated_video(folder / f"gen{k:02d}_{tag}s.mp4", fx, seconds, k))
    if with_fixtures:
        for name in FIXTURE_VIDEOS:
            dst = folder / name
            if not dst.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(fx / "videos" / name, dst)
            videos.append(dst)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    ckpt = _random_s2d(Path(weights_dir) / f"{model_name}-random-seed0.pth", model_name)
    durations = {}
    for v in videos:
        with av.open(str(v)) as c:
            st = c.streams.video[0]
            durations[v.name] = float(st.duration * st.time_base) if st.duration else float(c.duration or 0) / 1e6
    return dict(videos=[str(v) for v in videos], durations=durations, weights=str(ckpt),
                weights_mib=ckpt.stat().st_size / 2**20, gen_s=gen_s, weights_s=time.perf_counter() - t,
                bytes=sum(v.stat().st_size for v in videos))


# ------------------------------------------------------------------------------------------ Ray process memory
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _title(pid: int) -> str:
    """Ray workers set their process title (ray::IDLE, ray::MapWorker(MapBatches(DetectFaces)), ...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    name = Path(argv[0]).name
    if name.startswith("python") and len(argv) > 1:
        script = next((Path(a).name for a in argv[1:] if a.endswith(".py")), argv[1])
        return f"python {script}"
    return name


def _pss_mib(pid: int) -> float:
    """Proportional set size: shared pages (torch's libraries, the object store) split among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kind(title: str) -> str:
    """ray::MapWorker(MapBatches(ClassifyClips)) -> ClassifyClips; ray::_StatsActor.method -> ray::_StatsActor."""
    if "MapBatches(" in title:
        return title.split("MapBatches(")[-1].split(")")[0]
    if title.startswith("ray::"):
        return "ray::" + title[5:].split(".")[0]
    return title


class RaySampler:
    """Samples the RSS of every descendant of this process (the local Ray cluster) in a thread; every
    ``pss_every``-th sample also their PSS (smaps_rollup: dearer to read, but it does not count shared pages
    once per process)."""

    def __init__(self, interval: float = 0.25, pss_every: int = 4):
        self.interval, self.pss_every = interval, pss_every
        self.peak_sum = 0.0
        self.peak_pss = 0.0
        self.peak_by_kind: dict[str, float] = {}
        self.pids: set[int] = set()
        self.kinds: dict[int, str] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        root = os.getpid()
        while True:
            kids = _children_map()
            todo, total, pss = list(kids.get(root, [])), 0.0, 0.0
            with_pss = self.samples % self.pss_every == 0
            while todo:
                pid = todo.pop()
                todo.extend(kids.get(pid, []))
                title = _title(pid)  # a process on its way out has no cmdline: keep what it was called
                kind = self.kinds[pid] = _kind(title) if title != "?" else self.kinds.get(pid, "(exiting)")
                rss = _rss_mib(pid)
                total += rss
                pss += _pss_mib(pid) if with_pss else 0.0
                self.pids.add(pid)
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0.0), rss)
            self.peak_sum = max(self.peak_sum, total)
            self.peak_pss = max(self.peak_pss, pss)
            self.samples += 1
            if self._stop.wait(self.interval):
                return


def _ray_threads() -> dict:
    """What a Ray task/actor with num_cpus=1 gets: OMP_NUM_THREADS and torch's thread count."""
    import ray

    @ray.remote(num_cpus=1)
    def probe():
        import torch

        return {"omp": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()}

    return ray.get(probe.remote())


# ------------------------------------------------------------------------------------------ model only
def model_only(classifier, device: str, batch: int, threads: int | None, min_seconds: float,
               min_calls: int) -> dict:
    """clips/s of ClassifyClips.probabilities on random uint8 clips, after one warm-up call at this shape."""
    import numpy as np
    import torch

    from pipeline.classify import ClassifyClips

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        clf = ClassifyClips(classifier, device=device)
        clips = np.random.default_rng(0).integers(0, 256, (batch, 16, 224, 224, 3), dtype=np.uint8)
        t = time.perf_counter()
        clf.probabilities(clips)
        warm = time.perf_counter() - t
        per, start = [], time.perf_counter()
        while len(per) < min_calls or time.perf_counter() - start < min_seconds:
            t = time.perf_counter()
            probs = clf.probabilities(clips)
            per.append(time.perf_counter() - t)
        assert probs.shape == (batch, len(classifier.class_names))
        return dict(threads=torch.get_num_threads(), mean=batch * len(per) / sum(per), best=batch / min(per),
                    median=batch / statistics.median(per), calls=len(per), seconds=sum(per), warm_s=warm)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ output
def _statuses(result) -> str:
    counts: dict[str, int] = {}
    for v in result.videos:
        counts[v["status"]] = counts.get(v["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["s2d_tiny", "s2d_base_patch16_224"], default=None,
                    help="S2D configuration (random weights; default: s2d_tiny on CPU, base on CUDA)")
    ap.add_argument("--videos", type=int, default=None, help="generated videos (default 3; --quick 1)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each generated video (default 25; "
                                                                "--quick 6)")
    ap.add_argument("--no-fixtures", action="store_true", help="leave the real fixture videos out of the inputs")
    ap.add_argument("--quick", action="store_true", help="small run (< ~3 min on 2 cores)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2d-annotate-speed",
                    help="where generated videos are cached (reused across runs); runs' out/cache dirs go here "
                         "too and are removed at the end")
    ap.add_argument("--fixtures", type=Path, default=FIXTURES, help="the shared fixtures folder")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (CI: 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per S2D forward (AnnotateSettings default 8)")
    ap.add_argument("--min-seconds", type=float, default=None, help="model-only: time at least this long")
    ap.add_argument("--out-json", type=Path, default=None, help="also write the rows and notes as JSON")
    args = ap.parse_args()

    quick = args.quick
    n_videos = args.videos if args.videos is not None else (1 if quick else 3)
    seconds = args.seconds if args.seconds is not None else (6.0 if quick else 25.0)
    min_s = args.min_seconds if args.min_seconds is not None else (3.0 if quick else 8.0)
    min_calls = 2 if quick else 3
    fx = args.fixtures
    mnet = fx / "weights" / "mobilenet0.25_Final.pth"
    mfn = fx / "weights" / "mobilefacenet_68pt.pth.tar"
    for p in (mnet, mfn, *(fx / "videos" / n for n in FIXTURE_VIDEOS)):
        if not p.is_file():
            sys.exit(f"missing fixture {p}: clone next to shared/ or set S2D_FIXTURES / --fixtures")
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    t_all = time.perf_counter()
    load0 = os.getloadavg()
    weights_dir = Path(tempfile.mkdtemp(prefix="weights_", dir=workdir))
    runs_dir = Path(tempfile.mkdtemp(prefix="runs_", dir=workdir))
    try:
        # 0. inputs and random S2D weights, in a spawned child so that none of it is in this process's peak RSS
        import torch  # noqa: F401  (the imports are part of the driver's baseline, not of the runs)

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model_name = args.model or ("s2d_base_patch16_224" if device == "cuda" else "s2d_tiny")
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            inp = ex.submit(prepare, str(workdir), str(fx), n_videos, seconds, not args.no_fixtures, model_name,
                            str(weights_dir)).result()
        videos = inp["videos"]
        if not videos:
            sys.exit("no inputs: --videos 0 and --no-fixtures")

        import av
        import ray

        from pipeline.classify import resolve_classifier
        from pipeline.run import AnnotateSettings, FaceSettings, run_annotate

        faces = FaceSettings(detector_weights=str(mnet), landmark_weights=str(mfn))
        settings = AnnotateSettings(weights=inp["weights"], s2d_landmark_weights=str(mfn),
                                    batch_size=args.batch_size)
        t = time.perf_counter()
        if not ray.is_initialized():
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t
        rss_base = _maxrss_mib()

        # 1. cold: fresh out and cache
        out, cache = runs_dir / "out", runs_dir / "cache"
        with RaySampler() as cold_mem:
            cold = run_annotate(videos, out, cache, faces, settings, device=device, progress=False)
        rss_cold = _maxrss_mib()
        # 4. warm re-run (all timelines complete: skipped), then force with the landmark cache warm
        warm = run_annotate(videos, out, cache, faces, settings, device=device, progress=False)
        with RaySampler() as force_mem:
            forced = run_annotate(videos, out, cache, faces, settings, device=device, force=True, progress=False)
        rss_runs = _maxrss_mib()

        # 2. model only, same process, same batch size: torch's default threads here, and what a Ray actor gets
        ray_thr = _ray_threads()
        classifier = resolve_classifier(settings.weights, settings.labels, settings.s2d_landmark_weights)
        m_default = model_only(classifier, device, args.batch_size, None, min_s, min_calls)
        m_actor = None
        if device == "cpu" and ray_thr["torch"] != m_default["threads"]:
            m_actor = model_only(classifier, device, args.batch_size, ray_thr["torch"], min_s, min_calls)
        load1 = os.getloadavg()
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        shutil.rmtree(weights_dir, ignore_errors=True)
        shutil.rmtree(runs_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- the table
    rows: list[dict] = []
    video_s = sum(v["duration_s"] or 0.0 for v in cold.faces.videos if v["status"] != "error")
    wall, face_s = cold.wall_seconds, cold.faces.wall_seconds
    first_s, s2d_s = cold.first_timeline_seconds, cold.s2d_seconds
    e2e, in_actor = cold.clips / wall, cold.clips / s2d_s if s2d_s > 0 else float("nan")
    sec = "1 cold run"
    rows.append(dict(section=sec, item="run_annotate, cold (fresh cache + out)", value=wall, unit="s",
                     detail=f"{len(videos)} video{'s' if len(videos) != 1 else ''} ({_statuses(cold)}), {video_s:.1f} s of video, "
                            f"{cold.clips} clips; ray.init before it: {init_s:.1f} s (not counted)"))
    rows.append(dict(section=sec, item="  end-to-end clips/s", value=e2e, unit="clips/s",
                     detail=f"{cold.clips} clips / {wall:.1f} s"))
    rows.append(dict(section=sec, item="  video-s per wall-s", value=video_s / wall, unit="video-s/s",
                     detail=f"{video_s:.1f} s of video / {wall:.1f} s"))
    rows.append(dict(section=sec, item="  last video's faces tracked at", value=face_s, unit="s", ratio=face_s / wall,
                     vs="cold wall", detail=f"{video_s / face_s:.2f} video-s/s; "
                                            f"{sum(v['sampled_frames'] for v in cold.faces.videos)} frames sampled "
                                            f"at {faces.fps:g} fps; {cold.faces.decoded} decoded, "
                                            f"{cold.faces.cached} cached"))
    rows.append(dict(section=sec, item="  first timeline written at", value=first_s, unit="s",
                     ratio=first_s / wall if first_s else None, vs="cold wall",
                     detail="streaming: " + ("before" if first_s and first_s < face_s else "not before")
                            + " the last video's faces were done"))
    rows.append(dict(section=sec, item="  S2D actors in the model", value=s2d_s, unit="s", ratio=s2d_s / wall,
                     vs="cold wall", detail=f"normalise + forward, summed over clips: {in_actor:.3g} clips/s"))

    sec = "2 model only"
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    for m, label in ((m_default, "torch default here"), (m_actor, "as in the Ray actor")):
        if m is None:
            continue
        rows.append(dict(section=sec, item=f"ClassifyClips.probabilities, batch {args.batch_size}, "
                                           f"{m['threads']} thread{'s' if m['threads'] != 1 else ''} ({label})",
                         value=m["mean"], unit="clips/s",
                         ratio=m["mean"] / m_default["mean"] if m is not m_default else None,
                         vs=f"{m_default['threads']} threads" if m is not m_default else "",
                         detail=f"{dev_name}; {m['calls']} call(s) in {m['seconds']:.1f} s after a "
                                f"{m['warm_s']:.1f} s warm-up; best {m['best']:.3g}, median {m['median']:.3g}"))
    ref = m_default["mean"]
    rows.append(dict(section=sec, item="pipeline efficiency: end-to-end / model-only", value=e2e / ref, unit="",
                     detail=f"{e2e:.3g} / {ref:.3g} clips/s ({m_default['threads']} threads)"
                            + (f"; vs {m_actor['threads']} thread: {e2e / m_actor['mean']:.3g}" if m_actor else "")))
    rows.append(dict(section=sec, item="S2D in its actor / model-only", value=in_actor / ref, unit="",
                     detail=f"{in_actor:.3g} / {ref:.3g} clips/s"
                            + (f"; vs {m_actor['threads']} thread: {in_actor / m_actor['mean']:.3g}" if m_actor else "")))

    sec = "3 memory"
    rows.append(dict(section=sec, item="driver peak RSS (ru_maxrss), after cold run", value=rss_cold,
                     unit="MiB", ratio=rss_cold / rss_base, vs="before it",
                     detail=f"{rss_base:.0f} MiB after imports + ray.init; {rss_runs:.0f} after all three runs "
                            f"(before the model-only rows)"))
    rows.append(dict(section=sec, item="Ray processes, sum of PSS at peak (cold run)", value=cold_mem.peak_pss,
                     unit="MiB", detail=f"shared pages split among their users; force run {force_mem.peak_pss:.0f} "
                                        f"MiB; sampled every {cold_mem.interval * cold_mem.pss_every:g} s"))
    rows.append(dict(section=sec, item="Ray processes, sum of RSS at peak (cold run)", value=cold_mem.peak_sum,
                     unit="MiB", detail=f"{len(cold_mem.pids)} processes, {cold_mem.samples} samples every "
                                        f"{cold_mem.interval:g} s; force run {force_mem.peak_sum:.0f} MiB; counts "
                                        f"shared pages once per process"))
    stages = ("DecodeChunks", "DetectFaces", "FindLandmarks", "TrackVideos", "PlanSegments", "CutClips", "ClassifyClips")
    for kind in stages:
        if kind in cold_mem.peak_by_kind:
            rows.append(dict(section=sec, item=f"  Ray worker peak RSS: {kind}", value=cold_mem.peak_by_kind[kind],
                             unit="MiB", detail="RSS of its one actor; force run " +
                             (f"{force_mem.peak_by_kind[kind]:.0f} MiB" if kind in force_mem.peak_by_kind
                              else "(not started: cache hit)")))
    others = sorted(((v, k) for k, v in cold_mem.peak_by_kind.items() if k not in stages), reverse=True)
    rows.append(dict(section=sec, item="  other Ray processes (largest)", value=others[0][0] if others else None,
                     unit="MiB", detail=", ".join(f"{k} {v:.0f}" for v, k in others[:4])))

    sec = "4 re-runs"
    rows.append(dict(section=sec, item="warm re-run (same out: timelines complete)", value=warm.wall_seconds,
                     unit="s", ratio=warm.wall_seconds / wall, vs="cold",
                     detail=f"{warm.skipped} of {len(warm.videos)} skipped, {warm.clips} clips"))
    ff = forced.faces
    rows.append(dict(section=sec, item="force=True, landmark cache warm", value=forced.wall_seconds, unit="s",
                     ratio=forced.wall_seconds / wall, vs="cold",
                     detail=f"{ff.cached} of {len(ff.videos)} videos' faces from the cache (last at "
                            f"{ff.wall_seconds:.1f} s), {forced.clips} clips, S2D {forced.s2d_seconds:.1f} s"))

    print(f"\nAnnotate speed ({'quick' if quick else 'full'} run) on {platform.machine()} {os.cpu_count()} CPUs, "
          f"device {device}{' (' + dev_name + ')' if device == 'cuda' else ''}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), PyAV {av.__version__}, Ray {ray.__version__} "
          f"(local, num_cpus={args.num_cpus})\n"
          f"S2D {model_name}, {RANDOM_LABEL}; batch {args.batch_size}\n")
    print_table(rows)
    gen_names = [Path(v).name for v in videos if Path(v).name not in FIXTURE_VIDEOS]
    fix_names = [Path(v).name for v in videos if Path(v).name in FIXTURE_VIDEOS]
    notes = [
        f"inputs: {len(gen_names)} generated ({W}x{H}, {FPS} fps, {seconds:g} s each: single_face.mp4 looped, "
        f"panned and zoomed, x264 veryfast crf 23) + {len(fix_names)} fixture videos ({', '.join(fix_names) or '-'}); "
        f"{inp['bytes'] / 1e6:.1f} MB in {workdir / 'inputs'}; already in the page cache (generated or read just "
        f"before).",
        f"S2D weights: {model_name} with {RANDOM_LABEL} ({inp['weights_mib']:.0f} MiB file in the authors' layout, "
        f"seed 0); detector mobilenet0.25_Final.pth and landmarks mobilefacenet_68pt.pth.tar are the real fixtures.",
        f"Ray: one S2D actor (num_cpus=1) on this {args.num_cpus}-CPU cluster; in it OMP_NUM_THREADS="
        f"{ray_thr['omp']} and torch uses {ray_thr['torch']} thread(s), while this driver's torch uses "
        f"{m_default['threads']}. One streaming chain: the face actors, the clip cutter and S2D all run at once, "
        f"sharing the cores.",
        f"efficiency: end-to-end clips/s counts the face stages too; 'S2D in its actor' is clips / the actor's "
        f"seconds in the model, over the model-only rate. Model-only rates are the mean over the timed calls.",
        f"cold run: {cold.summary()}; warm re-run: {warm.summary()}; forced: {forced.summary()}.",
        f"setup (not measured): generated inputs in {inp['gen_s']:.1f} s (0 when reused), random weights "
        f"{inp['weights_s']:.1f} s; total {time.perf_counter() - t_all:.0f} s.",
        f"load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} on {os.cpu_count()} CPUs: other processes may have been "
        f"running, so treat the numbers as rough.",
    ]
    if cold.clips != forced.clips or warm.clips != 0:
        notes.append(f"CHECK: clips cold {cold.clips}, warm {warm.clips} (expected 0), forced {forced.clips} "
                     f"(expected {cold.clips}).")
    if cold.warning:
        notes.append(f"warning from the run: {cold.warning}")
    print("\nnotes:")
    for n in notes:
        print(f"- {n}")
    if args.out_json:
        args.out_json.write_text(json.dumps(dict(quick=quick, model=model_name, device=device, rows=rows,
                                                 notes=notes, loadavg_before=load0, loadavg_after=load1),
                                            indent=2, default=str))
        print(f"\nwrote {args.out_json}")


if __name__ == "__main__":
    main()
