"""Annotate speed and memory, before and after the one-pass-per-video rebuild, measured in one run.

    python bench/annotate_speed.py [--quick] [--only a,b,c,d,e] [--no-base] [--baseline DIR]
                                   [--workdir DIR] [--interval S] [--timeout S] [--out-json FILE]

"baseline" is commit a7e3743 (the chain before the rebuild: ``pipeline.run.run_annotate``; ``--baseline-commit``
names another, run through the new API), checked out as a git
worktree (``--baseline``, default ``$TMPDIR/s2d-baseline``, made with ``git worktree add --detach`` if missing;
no install: it runs with PYTHONPATH and cwd = that folder, so ``import pipeline`` resolves there). "new" is this
working tree (``pipeline.annotate_run.run_annotate``). Every measured run is a fresh subprocess
(``python bench/annotate_speed.py --one SPEC``, or ``python -m cli`` for e), one at a time, on a fresh out dir
and cache dir; ``run_annotate`` starts a local Ray inside it (plain ``ray.init()``: all CPUs of this machine),
so every run is cold (Ray start-up, actor construction and model loading are in its time) and its memory is its
own. While a child runs, this process samples every ``--interval`` s (0.5) the PSS (``Pss:`` of
/proc/PID/smaps_rollup: shared pages split among their users) summed over the child and all its descendants
(gcs_server, raylet, Ray workers and actors, ...; a process seen once in the tree is kept after it is
re-parented) and reports the peak. The child calls ``ray.shutdown()``, then waits for its descendants to exit
and kills those left after 10 s (by PID); this process does the same for any process of that tree still alive
after the child exits, before the next run starts. The table's ``value`` is the new chain's figure, ``ratio``
is new / baseline and ``vs`` gives the baseline's figure. Sections (``--only``):

a. length: one generated 30 s and one 300 s 640x360 video (``--quick``: 30 s and 60 s), random-tiny S2D
   (``AnnotateSettings(weights="random-tiny", s2d_landmark_weights=<fixture MobileFaceNet>)``), fixture
   detector and landmark weights, other settings default: wall s (``AnnotateResult.wall_seconds``: from the
   call, Ray start included, to the manifest), video-seconds per wall-second, clips/s, peak PSS of the tree,
   the 300 s / 30 s PSS ratio; for the new chain also ``first_face_seconds`` (from Ray being up to the first
   face found) and ``first_timeline_seconds``.
b. resolution: a 2 s 1920x1080 and a 2 s 7680x4320 video (``--quick``: 1920x1080 and 3840x2160), the same
   face content scaled up: peak PSS of each and the difference.
c. sum of parts: first one more new-chain run on a's longest video, timed with its PSS read every 30 s only (the
   0.5 s sampling of a costs ~9% of one core, slowing the run it measures); then, in this process, torch with 2
   threads, on the same video: decode
   (``get_decoder("pyav").iter_frames(path, 8.0)``, the time spent in the generator), RetinaFace MobileNet-0.25
   (``FaceDetector``, batches of ``FaceSettings().batch_frames`` sampled frames, 8), MobileFaceNet on the detected
   boxes (per batch), ``align_face`` per detected face, tiny S2D (``S2DWorker(...).probabilities``, one clip per
   forward as the chain runs it on CPU, as many random clips as the timed run classified, after one untimed warm-up
   call; the clips overlap as the chain's windows do: clip i is frames 8i..8i+15 of one random stream, so each
   frame's landmark features are computed once, as in the chain); their sum, the timed run's wall / that sum
   (target <= 1.3) and its video-s per wall-s (target >= 3.2, meant for the full 300 s run).
   Tracking, windowing and clip assembly are not parts: they are in the overhead.
d. base model on CPU (not with ``--quick`` or ``--no-base``): random ``s2d_base_patch16_224`` weights (seed 0)
   saved in the authors' fine-tuned layout, inputs 3 x 25 s generated videos + the 3 fixture videos:
   end-to-end clips/s (clips / wall), the model alone (the chain's own S2D class, ``probabilities`` on new random
   uint8 clips [B, 16, 224, 224, 3] each call for B = 1 and 8, 2 torch threads with OMP_WAIT_POLICY=ACTIVE, timed
   after a warm-up call, in a fresh child each; B = 1 just before and just after the end-to-end run, since this
   machine's speed drifts by several % within minutes, and their mean is its rate) and efficiency = end-to-end /
   the faster of the two batch sizes' rates (target >= 0.85 for the new chain). Then, for the new chain, batch 1
   once more inside a Ray worker (a task on ``init_ray()``'s local Ray, reserving 1 CPU as the chain's S2D actor
   does): that rate over the plain one is what Ray's own processes and worker take from the model, and end-to-end
   over it is the chain's efficiency with Ray's share left out. And the new chain's S2D actor alone, as the chain
   runs it on CPU: ``S2DWorker`` called on 8 new random clips at a time (the chain's rows per task), 2 lanes of one
   thread each (``threads=2``), in a fresh plain child: the ceiling of the actor's own scheme; end-to-end over it
   is printed too (the target stays against the model alone with 2 threads). d's runs read their PSS every 10 s
   only (as c's timing run: a 0.5 s read of the ~15 processes of a chain's tree is charged to the end-to-end run
   more than to the one process of the model alone), so d's peak PSS is coarse.
e. the README example: ``python -m cli annotate <fixtures>/videos --out <tmp> --weights random-tiny`` with
   S2D_DETECTOR_WEIGHTS / S2D_LANDMARK_WEIGHTS set to the fixture files, in each tree: the command's wall
   seconds (process start to exit: imports, Ray start and shutdown included).

f. a trained expression model (new chain only): face-api's expression net alone, in this process on 2 torch
   threads, as the chain's S2D actor calls it (``S2DWorker.probabilities`` on one clip of 16 distinct 112 px face
   frames per call, after a warm-up call): faces/s; then ``run_annotate`` with ``--weights`` the fixture's
   ``faceapi-expression`` manifest and with random-tiny on a's longest video, one after the other: video-s per
   wall-s (goal >= 6 on 2 CPUs, and faceapi-expression at least as fast as random-tiny) and peak PSS of the tree
   (goal < 3 GiB).

Inputs are generated from the real fixture face video (``single_face.mp4``'s frames played forwards and
backwards, slowly panned and zoomed so the face moves; made at 640x360 and resized up for b; 30 fps, libx264
veryfast crf 23), cached in ``--workdir`` (default ``$TMPDIR/s2d-annotate-speed``) and reused; generation time is
not measured. Random S2D weights are for speed only (labels meaningless). Timings on a shared machine are noisy:
the notes print the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from table import cached_file, print_table

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))
BASELINE_COMMIT = "a7e3743"
W, H, FPS = 640, 360, 30
FIXTURE_VIDEOS = ("single_face.mp4", "face_noface.mov", "no_face.mp4")
SECTIONS = "abcdef"
EXPRESSION = "weights/face-api/face_expression_model-weights_manifest.json"  # face-api's net, in the fixtures
IDENTITY = "weights/face-api/face_recognition_model-weights_manifest.json"  # face-api's recognition net (persons)
LINGER_S = 10.0


# ------------------------------------------------------------------------------------------ inputs
def _generated_video(path: Path, fixtures: Path, seconds: float, phase: int, size: tuple[int, int] = (W, H)) -> Path:
    """single_face.mp4's frames ping-pong looped, panned (+-60 px, +-20 px) and zoomed (0.85-1.0) slowly at
    640x360, then resized (bilinear) to ``size``."""

    def write(tmp: Path) -> None:
        import av
        import cv2

        with av.open(str(fixtures / "videos" / "single_face.mp4")) as c:
            src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        src = [cv2.resize(f, (W, H)) if f.shape[:2] != (H, W) else f for f in src]
        order = list(range(len(src))) + list(range(len(src) - 2, 0, -1))  # no jump at the seam
        n = int(round(seconds * FPS))
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=FPS)
            s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
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
                if size != (W, H):
                    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)

    return cached_file(path, write)


def _video(workdir: Path, fixtures: Path, seconds: float, size=(W, H), phase: int = 0) -> Path:
    name = f"gen{phase}_{seconds:g}".replace(".", "p") + f"s_{size[0]}x{size[1]}.mp4"
    return _generated_video(workdir / "inputs" / name, fixtures, seconds, phase, tuple(size))


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


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return float(st.duration * st.time_base) if st.duration else float(c.duration or 0) / 1e6


# ------------------------------------------------------------------------------------------ process trees
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time in clock ticks, state) or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[1]), int(rest[19]), rest[0]
    except (OSError, IndexError, ValueError):
        return None


def _all_stats() -> dict[int, tuple[int, int, str]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))) is not None:
            out[int(d)] = s
    return out


def _tree(root: int, root_start: int | None, seen: dict[int, int]) -> list[int]:
    """Live processes of root's tree: root, its descendants by parent links, and any process seen in it before
    (same start time) that is still alive, e.g. re-parented after its parent exited. Updates ``seen``."""
    stats = _all_stats()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    found = set()
    if root in stats and (root_start is None or stats[root][1] == root_start):
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(kids.get(pid, []))
    for pid, start in list(seen.items()):
        if pid in stats and stats[pid][1] == start:
            found.add(pid)
    for pid in found:
        seen[pid] = stats[pid][1]
    return [p for p in found if stats[p][2] not in ("Z", "X")]


def _pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _title(pid: int) -> str:
    """ray::FaceWorker..., raylet, gcs_server, python <script>."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        t = argv[0].split()[0]
        return t.split("MapBatches(")[-1].split(")")[0] if "MapBatches(" in t else t
    name = Path(argv[0]).name
    if name.startswith("python") and len(argv) > 1:
        if "-m" in argv:
            return f"python -m {argv[argv.index('-m') + 1]}" if argv.index("-m") + 1 < len(argv) else name
        script = next((Path(a).name for a in argv[1:] if a.endswith(".py")), Path(argv[1]).name)
        return f"python {script}"
    return name


class TreeSampler:
    """Peak of the PSS summed over a process tree, sampled in a thread."""

    def __init__(self, root: int, interval: float):
        self.root, self.interval = root, interval
        st = _stat(root)
        self.root_start = st[1] if st else None
        self.seen: dict[int, int] = {}
        self.peak = 0.0
        self.peak_top: list[tuple[float, str]] = []  # the largest processes at the peak
        self.peak_procs = self.max_procs = self.samples = 0
        self.cost = 0.0  # CPU seconds spent sampling (this thread)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        t = time.thread_time()
        pids = _tree(self.root, self.root_start, self.seen)
        per = [(_pss_mib(p), p) for p in pids]
        total = sum(v for v, _ in per)
        if total > self.peak:
            self.peak, self.peak_procs = total, len(per)
            self.peak_top = [(v, _title(p)) for v, p in sorted(per, reverse=True)[:3]]
        self.max_procs = max(self.max_procs, len(per))
        self.samples += 1
        self.cost += time.thread_time() - t

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def top(self) -> str:
        return ", ".join(f"{t} {v:.0f}" for v, t in self.peak_top)


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start and st[2] not in ("Z", "X")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def end_tree(procs: dict[int, int], linger_s: float = LINGER_S, exclude: int | None = None) -> list[str]:
    """Wait until the processes {pid: start time} have exited; kill (SIGKILL, by PID) those alive after
    ``linger_s``. Returns what was killed."""
    procs = {p: s for p, s in procs.items() if p != exclude}
    deadline, killed = time.monotonic() + linger_s, []
    while True:
        for p in procs:
            _reap(p)
        left = {p: s for p, s in procs.items() if _alive(p, s)}
        if not left:
            return killed
        if time.monotonic() > deadline:
            for p, s in left.items():
                if _alive(p, s):
                    killed.append(f"{_title(p)} ({p})")
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
            time.sleep(0.5)
            for p in left:
                _reap(p)
            return killed
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ the child
def _timed(call, make, clips_per_call: int, min_s: float, min_calls: int) -> dict:
    """clips/s of ``call(make())``, new inputs each call, timed after one warm-up call."""
    x = make()
    t = time.perf_counter()
    call(x)
    warm = time.perf_counter() - t
    per, start = [], time.perf_counter()
    while len(per) < min_calls or time.perf_counter() - start < min_s:
        x = make()  # new frames: nothing to reuse
        t = time.perf_counter()
        call(x)
        per.append(time.perf_counter() - t)
    return dict(clips_per_s=clips_per_call * len(per) / sum(per), calls=len(per), seconds=sum(per), warm_s=warm)


def _actor_alone(weights: str, mfn: str, threads: int, min_s: float, min_calls: int) -> dict:
    """The new chain's S2D actor as the chain calls it on CPU: 8 clips per call, one at a time in each of its lanes."""
    import numpy as np

    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker
    from pipeline.units import Clip

    clf = S2DWorker(resolve_classifier(weights, None, mfn), "cpu", 1, threads=threads)
    rng = np.random.default_rng(0)

    def batch() -> dict:
        return {"item": [Clip("v", 0, None, rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8))
                         for _ in range(8)]}

    return {**_timed(clf, batch, 8, min_s, min_calls), "lanes": clf.lanes}


def _before_rebuild() -> bool:
    """This child runs a tree of the chain before the rebuild (``pipeline/run.py``; cwd is the tree)."""
    return Path("pipeline", "run.py").is_file()


def _s2d_actor_api():
    """(S2DWorker, resolve_classifier) of this tree: before the house issue they lived in ``pipeline.emotions``."""
    try:
        from pipeline.classifier import resolve_classifier
        from pipeline.s2d_actor import S2DWorker
    except ImportError:
        from pipeline.emotions import S2DWorker, resolve_classifier
    return S2DWorker, resolve_classifier


def _model_alone(chain: str, weights: str, mfn: str, batch: int, threads: int, min_s: float, min_calls: int,
                 precision: str | None = None) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    if chain == "baseline" and _before_rebuild():
        from pipeline.classify import ClassifyClips, resolve_classifier

        clf = ClassifyClips(resolve_classifier(weights, None, mfn), device="cpu", batch_size=batch)
    else:
        S2DWorker, resolve_classifier = _s2d_actor_api()

        c = resolve_classifier(weights, None, mfn, **({"precision": precision} if precision else {}))
        clf = S2DWorker(c, "cpu", batch, threads=threads)
    rng = np.random.default_rng(0)
    return {**_timed(clf.probabilities, lambda: rng.integers(0, 256, (batch, 16, 224, 224, 3), dtype=np.uint8),
                     batch, min_s, min_calls), "threads": torch.get_num_threads()}


def _annotate(spec: dict) -> dict:
    if spec["chain"] == "baseline" and _before_rebuild():
        from pipeline.run import AnnotateSettings, FaceSettings, run_annotate
    else:
        from pipeline.annotate_run import run_annotate
        from pipeline.settings import AnnotateSettings, FaceSettings
    faces = FaceSettings(detector_weights=spec["mnet"], landmark_weights=spec["mfn"],
                         **({"identity_weights": spec["identity"]}  # a tree with persons (issue 36 on)
                            if spec.get("identity") and "identity_weights" in FaceSettings.__dataclass_fields__
                            else {}))
    settings = AnnotateSettings(weights=spec["weights"], s2d_landmark_weights=spec["mfn"],
                                **({"precision": spec["precision"]} if spec.get("precision") else {}))
    r = run_annotate(spec["videos"], spec["out"], spec["cache"], faces, settings, device="cpu", progress=False)
    import ray

    out = dict(wall_seconds=r.wall_seconds, clips=r.clips, s2d_seconds=r.s2d_seconds,
               first_timeline_seconds=r.first_timeline_seconds,
               first_face_seconds=getattr(r, "first_face_seconds", None),
               faces_wall_seconds=r.faces.wall_seconds if r.faces else None, summary=r.summary(),
               statuses=[v["status"] for v in r.videos], errors=[v.get("error") for v in r.videos if v.get("error")],
               warning=r.warning, ray_cpus=ray.cluster_resources().get("CPU") if ray.is_initialized() else None)
    if ray.is_initialized():  # which tree the Ray workers imported (PYTHONPATH): after the timed run
        out["worker_pipeline"] = ray.get(ray.remote(num_cpus=0)(lambda: __import__("pipeline").__file__).remote())
    return out


def child_main(spec: dict) -> None:
    """One measured run in this fresh process; the result goes to spec["result"] as JSON."""
    t0 = time.perf_counter()
    try:  # orphans of this run (a double fork) stay in this tree: PR_SET_CHILD_SUBREAPER
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except Exception:
        pass
    res: dict = {"chain": spec["chain"], "kind": spec["kind"]}
    try:
        if spec["kind"] == "annotate":
            res.update(_annotate(spec))
        else:
            args = (spec["chain"], spec["weights"], spec["mfn"], spec.get("batch", 8), spec.get("threads", 2),
                    spec.get("min_s", 10.0), spec.get("min_calls", 3), spec.get("precision"))
            if spec.get("lanes"):  # the new chain's S2D actor, as the chain calls it
                res.update(_actor_alone(spec["weights"], spec["mfn"], spec.get("threads", 2), spec.get("min_s", 10.0),
                                        spec.get("min_calls", 3)))
            elif spec.get("in_actor"):  # the same, as a Ray task that reserves one CPU, as the chain's S2D actor
                import ray

                from pipeline.cluster import init_ray

                init_ray()
                res.update(ray.get(ray.remote(num_cpus=1)(_model_alone).remote(*args)))
            else:
                res.update(_model_alone(*args))
        import pipeline

        res["pipeline"] = pipeline.__file__
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        res["failed"] = f"{type(exc).__name__}: {exc}"
    t = time.perf_counter()
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    me = os.getpid()
    procs: dict[int, int] = {}
    _tree(me, None, procs)
    res["lingered_killed"] = end_tree(procs, exclude=me)
    res["shutdown_s"] = time.perf_counter() - t
    res["child_s"] = time.perf_counter() - t0
    Path(spec["result"]).write_text(json.dumps(res, default=str))


# ------------------------------------------------------------------------------------------ the parent
class Runner:
    def __init__(self, trees: dict[str, Path], runs_dir: Path, fixtures: Path, interval: float, timeout: float):
        self.trees, self.runs_dir, self.fx = trees, runs_dir, fixtures
        self.interval, self.timeout = interval, timeout
        self.n, self.killed, self.log = 0, [], []
        self.sample_cost, self.samples, self.sampled_s = 0.0, 0, 0.0

    def env(self, chain: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
        env["PYTHONPATH"] = str(self.trees[chain])
        return env

    def measure(self, label: str, chain: str, cmd: list[str], env: dict | None = None,
                interval: float | None = None) -> dict:
        """Run ``cmd`` (cwd = the chain's tree), sampling its tree's PSS every ``interval`` s (default: the run's);
        then make sure the tree is gone."""
        self.n += 1
        log = self.runs_dir / f"{self.n:02d}_{label}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {label} ({chain}) ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=self.trees[chain], env=env or self.env(chain), stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            sampler = TreeSampler(proc.pid, interval or self.interval)
            with sampler:
                try:
                    rc = proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    rc = None
                    proc.kill()
                    proc.wait()
            wall = time.perf_counter() - t
        killed = end_tree(dict(sampler.seen), exclude=proc.pid)
        self.killed += [f"{label}: {k}" for k in killed]
        self.sample_cost += sampler.cost
        self.samples += sampler.samples
        self.sampled_s += wall
        tail = log.read_text(errors="replace")[-1500:]
        out = dict(label=label, chain=chain, rc=rc, process_s=wall, peak_pss=sampler.peak, top=sampler.top(),
                   procs=sampler.peak_procs, max_procs=sampler.max_procs, samples=sampler.samples, log_tail=tail)
        print(f"[{time.strftime('%H:%M:%S')}]   rc {rc}, {wall:.1f} s, peak PSS {sampler.peak:.0f} MiB",
              file=sys.stderr, flush=True)
        if rc != 0:
            print(f"  {label} ({chain}) failed (rc {rc}); end of its log:\n{tail}", file=sys.stderr)
        return out

    def one(self, label: str, chain: str, spec: dict, env: dict | None = None, interval: float | None = None) -> dict:
        result = self.runs_dir / f"{self.n + 1:02d}_{label}.json"
        spec = dict(spec, chain=chain, result=str(result))
        m = self.measure(label, chain, [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)],
                         env, interval)
        r = json.loads(result.read_text()) if result.is_file() else {"failed": f"no result (rc {m['rc']})"}
        if r.get("pipeline") and not r["pipeline"].startswith(str(self.trees[chain])):
            r["failed"] = f"imported pipeline from {r['pipeline']}, not {self.trees[chain]}"
        if r.get("worker_pipeline") and not r["worker_pipeline"].startswith(str(self.trees[chain])):
            r["failed"] = f"Ray workers imported pipeline from {r['worker_pipeline']}"
        self.killed += [f"{label} (in the child): {k}" for k in r.get("lingered_killed", [])]
        return {**m, **r}

    def annotate(self, label: str, chain: str, videos: list[Path], weights: str,
                 interval: float | None = None, precision: str | None = None) -> dict:
        d = self.runs_dir / f"{label}_{chain}"
        spec = dict(kind="annotate", videos=[str(v) for v in videos], out=str(d / "out"), cache=str(d / "cache"),
                    weights=weights, mnet=str(self.fx / "weights" / "mobilenet0.25_Final.pth"),
                    mfn=str(self.fx / "weights" / "mobilefacenet_68pt.pth.tar"), precision=precision,
                    identity=str(self.fx / IDENTITY))
        r = self.one(label, chain, spec, interval=interval)
        shutil.rmtree(d, ignore_errors=True)
        return r

    def readme(self, chain: str) -> dict:
        out = self.runs_dir / f"readme_{chain}"
        env = self.env(chain)
        env["S2D_DETECTOR_WEIGHTS"] = str(self.fx / "weights" / "mobilenet0.25_Final.pth")
        env["S2D_LANDMARK_WEIGHTS"] = str(self.fx / "weights" / "mobilefacenet_68pt.pth.tar")
        env["S2D_IDENTITY_WEIGHTS"] = str(self.fx / IDENTITY)
        m = self.measure("readme", chain, [sys.executable, "-m", "cli", "annotate", str(self.fx / "videos"),
                                           "--out", str(out), "--weights", "random-tiny"], env)
        m["manifest"] = (out / "manifest.json").is_file()
        shutil.rmtree(out, ignore_errors=True)
        return m


def expression_alone(fx: Path, min_s: float = 10.0) -> float:
    """faces/s of face-api's expression net as the chain's S2D actor runs it (``f``), 2 torch threads."""
    import numpy as np

    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker

    worker = S2DWorker(resolve_classifier(str(fx / EXPRESSION)), threads=2)
    clip = np.random.default_rng(0).integers(0, 256, (1, 16, 112, 112, 3), dtype=np.uint8)
    worker.probabilities(clip)  # warm-up: the model loads
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        worker.probabilities(clip)
        calls += 1
    return 16 * calls / (time.perf_counter() - t0)


def ensure_baseline(path: Path, commit: str = BASELINE_COMMIT) -> Path:
    path = path.expanduser().resolve()
    if not (path / "pipeline" / "__init__.py").is_file():
        if path.exists() and any(path.iterdir()):
            sys.exit(f"--baseline {path} exists but holds no pipeline/ (expected a checkout of {commit})")
        cmd = ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:  # e.g. registered, folder deleted
            subprocess.run(cmd[:5] + ["--force"] + cmd[5:], check=True, stdout=subprocess.DEVNULL)
    return path


def sum_of_parts(video: Path, fx: Path, clips: int, threads: int = 2) -> dict:
    """Each part of the face + S2D work alone, in this process, one streaming pass over the video."""
    import numpy as np
    import torch

    from pipeline.align import align_face
    from pipeline.decode import get_decoder
    from pipeline.classifier import resolve_classifier
    from pipeline.s2d_actor import S2DWorker
    from pipeline.landmarks import get_landmarker
    from pipeline.detector import FaceDetector
    from pipeline.settings import FaceSettings

    torch.set_num_threads(threads)
    mfn = fx / "weights" / "mobilefacenet_68pt.pth.tar"
    t = time.perf_counter()
    det = FaceDetector(fx / "weights" / "mobilenet0.25_Final.pth", "mobilenet0.25")
    lm = get_landmarker("mobilefacenet", mfn)
    load_s = time.perf_counter() - t
    parts = dict(decode=0.0, retinaface=0.0, mobilefacenet=0.0, alignment=0.0)
    frames = faces = 0

    def face_batch(batch: list) -> None:
        nonlocal faces
        arr = np.stack(batch)
        t = time.perf_counter()
        dets = det(arr)
        parts["retinaface"] += time.perf_counter() - t
        t = time.perf_counter()
        lm(arr, [d["bbox"] for d in dets])
        parts["mobilefacenet"] += time.perf_counter() - t
        t = time.perf_counter()
        for f, d in zip(batch, dets):
            for kps in d["kps5"]:
                align_face(f, kps)
                faces += 1
        parts["alignment"] += time.perf_counter() - t

    it, batch = get_decoder("pyav").iter_frames(str(video), 8.0), []
    while True:
        t = time.perf_counter()
        try:
            _, _, frame = next(it)
        except StopIteration:
            parts["decode"] += time.perf_counter() - t
            break
        parts["decode"] += time.perf_counter() - t
        frames += 1
        batch.append(frame)
        if len(batch) == FaceSettings().batch_frames:  # the chain's default
            face_batch(batch)
            batch = []
    if batch:
        face_batch(batch)

    s2d = S2DWorker(resolve_classifier("random-tiny", None, str(mfn)), "cpu", 1, threads=threads)
    rng = np.random.default_rng(0)
    s2d.probabilities(rng.integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8))  # warm-up, not counted
    # the chain's clip stream: one track's 2 s windows at a 1 s stride share half their 16 frames (8 fps)
    stream = rng.integers(0, 256, (8 * clips + 8, 224, 224, 3), dtype=np.uint8)
    t = time.perf_counter()
    for i in range(clips):  # one clip per forward, as the chain runs S2D on CPU (its fastest)
        s2d.probabilities(stream[None, 8 * i:8 * i + 16])
    parts["s2d"] = time.perf_counter() - t
    return dict(parts=parts, frames=frames, faces=faces, clips=clips, load_s=load_s, threads=torch.get_num_threads(),
                batch=FaceSettings().batch_frames)


# ------------------------------------------------------------------------------------------ table helpers
def _row(rows, sec, item, new, base, unit, detail="", higher=None):
    """value = new, ratio = new / baseline, vs = the baseline's figure."""
    from table import fmt

    ratio = new / base if isinstance(new, (int, float)) and isinstance(base, (int, float)) and base else None
    vs = f"baseline {fmt(base)}" if isinstance(base, (int, float)) else (base or "")
    rows.append(dict(section=sec, item=item, value=new, unit=unit, ratio=ratio, vs=vs, detail=detail,
                     baseline=base if isinstance(base, (int, float)) else None))


def _ok(r: dict) -> bool:
    return r.get("rc") == 0 and not r.get("failed")


def _get(r: dict, key: str):
    return r.get(key) if _ok(r) else None


def _per(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _status(r: dict) -> str:
    if not _ok(r):
        return f"FAILED ({r.get('failed') or 'rc ' + str(r.get('rc'))})"
    counts: dict[str, int] = {}
    for s in r.get("statuses", []):
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# ------------------------------------------------------------------------------------------ main
def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measured run (a JSON spec)
    ap.add_argument("--quick", action="store_true", help="small run: 30 s + 60 s in a, 1080p vs 2160p in b, no d")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,c (default: all)")
    ap.add_argument("--no-base", action="store_true", help="skip d (the base model on CPU)")
    ap.add_argument("--baseline", type=Path, default=Path(tempfile.gettempdir()) / "s2d-baseline",
                    help="checkout of --baseline-commit (made as a git worktree if missing)")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT,
                    help=f"the baseline's commit (default {BASELINE_COMMIT}, the chain before the rebuild; a later "
                         "one runs through the same API as the new tree)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s2d-annotate-speed",
                    help="generated inputs are cached here; run folders go here too and are removed at the end")
    ap.add_argument("--fixtures", type=Path, default=FIXTURES, help="the shared fixtures folder")
    ap.add_argument("--interval", type=float, default=0.5, help="PSS sampling interval, seconds")
    ap.add_argument("--timeout", type=float, default=None, help="per run, seconds (default 3600; --quick 900)")
    ap.add_argument("--out-json", type=Path, default=None, help="also write the rows and notes as JSON")
    return ap.parse_args()


def _sections(args: argparse.Namespace) -> set[str]:
    """The sections to run: --only, less d with --quick or --no-base (exits on an unknown one)."""
    only = set(args.only.replace(",", "").replace(" ", ""))
    if bad := only - set(SECTIONS):
        sys.exit(f"--only: unknown section(s) {', '.join(sorted(bad))}; choose from {','.join(SECTIONS)}")
    if args.quick or args.no_base:
        only.discard("d")
    return only


def _check_fixtures(fx: Path) -> None:
    for p in (fx / "weights" / "mobilenet0.25_Final.pth", fx / "weights" / "mobilefacenet_68pt.pth.tar",
              *(fx / "videos" / n for n in FIXTURE_VIDEOS)):
        if not p.is_file():
            sys.exit(f"missing fixture {p}: clone next to shared/ or set S2D_FIXTURES / --fixtures")


CHAINS = ("baseline", "new")


def section_length(rows: list, run: Runner, workdir: Path, fx: Path, lengths: tuple) -> None:
    """a. length."""
    a: dict = {}
    for L in lengths:
        v = _video(workdir, fx, L)
        dur = _duration(v)
        for ch in CHAINS:
            a[L, ch] = dict(run.annotate(f"len{L:g}s", ch, [v], "random-tiny"), video_s=dur)
    sec = "a length"
    for L in lengths:
        b, n = a[L, "baseline"], a[L, "new"]
        for r in (b, n):
            r["wall"] = _get(r, "wall_seconds")
            r["speed"] = _per(r["video_s"], r["wall"])
            r["cps"] = _per(_get(r, "clips"), r["wall"])
        tag = f"{L:g} s {W}x{H}"
        _row(rows, sec, f"{tag}: wall", n["wall"], b["wall"], "s",
             f"new {_status(n)}; baseline {_status(b)}; processes {n['process_s']:.0f} / {b['process_s']:.0f} s")
        _row(rows, sec, "  video-s per wall-s", n["speed"], b["speed"], "video-s/s", f"{n['video_s']:.1f} s of video")
        _row(rows, sec, "  clips/s", n["cps"], b["cps"], "clips/s",
             f"clips new {_get(n, 'clips')}, baseline {_get(b, 'clips')}")
        _row(rows, sec, "  peak PSS, whole tree", n["peak_pss"], b["peak_pss"], "MiB",
             f"new: {n['procs']} procs, largest {n['top']}; baseline: {b['procs']} procs, largest {b['top']}")
        _row(rows, sec, "  first face found (new)", _get(n, "first_face_seconds"), None, "s",
             "from Ray being up (face actor's clock)")
        _row(rows, sec, "  first timeline written", _get(n, "first_timeline_seconds"),
             _get(b, "first_timeline_seconds"), "s", "from the call")
    l0, l1 = lengths
    _row(rows, sec, f"peak PSS {l1:g} s / {l0:g} s", _per(a[l1, "new"]["peak_pss"], a[l0, "new"]["peak_pss"]),
         _per(a[l1, "baseline"]["peak_pss"], a[l0, "baseline"]["peak_pss"]), "x",
         "1.0 = memory does not grow with length")


def section_resolution(rows: list, run: Runner, workdir: Path, fx: Path, sizes: tuple) -> None:
    """b. resolution."""
    sec, bres = "b resolution", {}
    for w, h in sizes:
        v = _video(workdir, fx, 2.0, (w, h))
        for ch in CHAINS:
            bres[w, ch] = run.annotate(f"res{w}x{h}", ch, [v], "random-tiny")
    for w, h in sizes:
        n, b = bres[w, "new"], bres[w, "baseline"]
        _row(rows, sec, f"2 s {w}x{h}: peak PSS", n["peak_pss"], b["peak_pss"], "MiB",
             f"new {_status(n)}, wall {_get(n, 'wall_seconds') or 0:.1f} s, largest {n['top']}; "
             f"baseline {_status(b)}, wall {_get(b, 'wall_seconds') or 0:.1f} s, largest {b['top']}")
    (w0, h0), (w1, h1) = sizes
    _row(rows, sec, f"{w1}x{h1} minus {w0}x{h0}", bres[w1, "new"]["peak_pss"] - bres[w0, "new"]["peak_pss"],
         bres[w1, "baseline"]["peak_pss"] - bres[w0, "baseline"]["peak_pss"], "MiB",
         "peak PSS difference: what the larger frames cost")


def section_parts(rows: list, run: Runner, workdir: Path, fx: Path, lengths: tuple) -> None:
    """c. sum of parts."""
    sec, L = "c sum of parts", lengths[-1]
    # the timed run: PSS read every 30 s only (every 0.5 s the sampler takes ~9% of one core here, 45 ms
    # of kernel time per sample of ~12 processes, slowing the run it measures)
    n = run.annotate(f"len{L:g}s_timing", "new", [_video(workdir, fx, L)], "random-tiny", interval=30.0)
    if not _ok(n):
        rows.append(dict(section=sec, item="skipped", value=None, unit="",
                         detail=f"the new {L:g} s run failed: {_status(n)}"))
        return
    n["video_s"] = _duration(_video(workdir, fx, L))
    print(f"[{time.strftime('%H:%M:%S')}] sum of parts on {L:g} s (this process) ...", file=sys.stderr,
          flush=True)
    sp = sum_of_parts(_video(workdir, fx, L), fx, n["clips"])
    p, total = sp["parts"], sum(sp["parts"].values())
    what = dict(decode=f"{sp['frames']} frames sampled at 8 fps",
                retinaface=f"{sp['frames']} frames, batches of {sp['batch']}",
                mobilefacenet=f"{sp['faces']} faces", alignment=f"{sp['faces']} faces, 224 px",
                s2d=f"{sp['clips']} random clips, half their frames shared as in the chain, "
                    "one per forward, tiny")
    for k, v in p.items():
        rows.append(dict(section=sec, item=f"{k}", value=v, unit="s", ratio=v / total, vs="sum",
                         detail=what[k]))
    rows.append(dict(section=sec, item="sum of parts", value=total, unit="s",
                     detail=f"{sp['threads']} torch threads, one process; model loading "
                            f"{sp['load_s']:.1f} s not counted"))
    rows.append(dict(section=sec, item=f"new {L:g} s run, PSS sampled every 30 s: wall",
                     value=n["wall_seconds"], unit="s", detail=f"{_status(n)}; first face "
                     f"{_get(n, 'first_face_seconds') or 0:.2f} s from Ray being up"))
    ratio = n["wall_seconds"] / total
    rows.append(dict(section=sec, item=f"new {L:g} s run wall / sum of parts", value=ratio, unit="x",
                     vs="target <= 1.3", detail=f"{n['wall_seconds']:.1f} s / {total:.1f} s: "
                     + ("meets target" if ratio <= 1.3 else "misses target")))
    speed = n["video_s"] / n["wall_seconds"]
    rows.append(dict(section=sec, item=f"new {L:g} s run video-s per wall-s", value=speed,
                     unit="video-s/s", vs="target >= 3.2",
                     detail=("meets target" if speed >= 3.2 else "misses target")
                     + ("" if L >= 300 else f" (target is for 300 s; this is {L:g} s)")))


def _base_runs(run: Runner, workdir: Path, fx: Path, mfn: str, model: str) -> dict:
    """d's measured runs: per chain the model alone (batch 1 before and after, batch 8) around the end-to-end
    run; for the new chain also the model in a Ray worker and the S2D actor's lanes."""
    wdir = Path(tempfile.mkdtemp(prefix="weights_", dir=workdir))
    try:
        ckpt = _random_s2d(wdir / f"{model}-random-seed0.pth", model)
        vids = [_video(workdir, fx, 25.0, phase=k) for k in range(3)] + [fx / "videos" / n
                                                                         for n in FIXTURE_VIDEOS]
        dres = {}

        def alone(ch: str, b: int, when: str, in_actor: bool = False, lanes: bool = False) -> dict:
            return run.one(f"base_model_alone_b{b}_{when}", ch, dict(  # OpenMP threads spinning
                kind="model", weights=str(ckpt), mfn=mfn, batch=b, threads=2, min_s=10.0, min_calls=3,
                in_actor=in_actor, lanes=lanes), env={**run.env(ch), "OMP_WAIT_POLICY": "ACTIVE"},
                interval=10.0)

        for ch in CHAINS:  # batch 1 just before and just after the end-to-end run: the machine's drift
            dres[ch, "model", 1, "before"] = alone(ch, 1, "before")
            dres[ch] = run.annotate("base", ch, vids, str(ckpt), interval=10.0)
            dres[ch, "model", 1, "after"] = alone(ch, 1, "after")
            dres[ch, "model", 8] = alone(ch, 8, "after")
            if ch == "new":  # Ray's share: the model alone again, in a Ray worker; the actor's lanes
                dres[ch, "actor", 1] = alone(ch, 1, "in_actor", in_actor=True)
                dres[ch, "lanes"] = alone(ch, 8, "in_lanes", lanes=True)
            b1 = [_get(dres[ch, "model", 1, w], "clips_per_s") for w in ("before", "after")]
            dres[ch, "model", 1] = {**dres[ch, "model", 1, "after"],
                                    "clips_per_s": sum(b1) / 2 if None not in b1 else None}
    finally:
        shutil.rmtree(wdir, ignore_errors=True)
    return dres


def section_base(rows: list, run: Runner, workdir: Path, fx: Path, mfn: str) -> None:
    """d. base model."""
    sec = "d base model"
    dres = _base_runs(run, workdir, fx, mfn, "s2d_base_patch16_224")
    e2e = {ch: _per(_get(dres[ch], "clips"), _get(dres[ch], "wall_seconds")) for ch in CHAINS}
    alone = {ch: max(_get(dres[ch, "model", b], "clips_per_s") or 0 for b in (1, 8)) or None
             for ch in CHAINS}
    eff = {ch: _per(e2e[ch], alone[ch]) for ch in CHAINS}
    nb, bb = dres["new"], dres["baseline"]
    _row(rows, sec, "end-to-end clips/s", e2e["new"], e2e["baseline"], "clips/s",
         f"new {_get(nb, 'clips')} clips in {_get(nb, 'wall_seconds') or 0:.1f} s ({_status(nb)}), "
         f"baseline {_get(bb, 'clips')} in {_get(bb, 'wall_seconds') or 0:.1f} s; peak PSS "
         f"{nb['peak_pss']:.0f} / {bb['peak_pss']:.0f} MiB")
    for what, key in (("batch 1, just before end-to-end", ("model", 1, "before")),
                      ("batch 1, just after end-to-end", ("model", 1, "after")),
                      ("batch 1, the mean of the two", ("model", 1)), ("batch 8", ("model", 8))):
        m = dres[("new",) + key]
        _row(rows, sec, f"model alone clips/s, {what}", _get(m, "clips_per_s"),
             _get(dres[("baseline",) + key], "clips_per_s"), "clips/s",
             f"2 threads, {_get(m, 'calls')} calls after a {_get(m, 'warm_s') or 0:.1f} s warm-up")
    _row(rows, sec, "efficiency: end-to-end / model alone", eff["new"], eff["baseline"], "",
         "target >= 0.85 (new): " + ("meets target" if (eff["new"] or 0) >= 0.85 else "misses target"))
    act = dres["new", "actor", 1]
    a1 = _get(act, "clips_per_s")
    _row(rows, sec, "model alone clips/s, batch 1, in a Ray worker (new)", a1, None, "clips/s",
         f"a local Ray up, a task reserving 1 CPU, 2 threads, {_get(act, 'calls')} calls; "
         f"/ the batch-1 mean: {_per(a1, _get(dres['new', 'model', 1], 'clips_per_s')) or 0:.3f}; "
         f"end-to-end / this: {_per(e2e['new'], a1) or 0:.3f}")
    la = dres["new", "lanes"]
    _row(rows, sec, "the S2D actor alone, 8 clips per call, 2 lanes (new)", _get(la, "clips_per_s"), None,
         "clips/s", f"{_get(la, 'lanes')} lanes of one thread each, {_get(la, 'calls')} calls after a "
                    f"{_get(la, 'warm_s') or 0:.1f} s warm-up; end-to-end / this: "
                    f"{_per(e2e['new'], _get(la, 'clips_per_s')) or 0:.3f}")


def section_expression(rows: list, run: Runner, workdir: Path, fx: Path, lengths: tuple) -> None:
    """f. a trained expression model."""
    sec = "f trained expression model"
    _row(rows, sec, "face-api expression net alone, 2 threads", expression_alone(fx), None, "faces/s",
         "S2DWorker.probabilities, 16 distinct 112 px faces per call (one 2 s clip at 8 fps)")
    v = _video(workdir, fx, lengths[-1])
    dur = _duration(v)
    fr = {w: run.annotate(f"expr_{i}", "new", [v], w) for i, w in enumerate((str(fx / EXPRESSION),
                                                                              "random-tiny"))}
    ex, tiny = fr[str(fx / EXPRESSION)], fr["random-tiny"]
    for r in (ex, tiny):
        r["speed"] = _per(dur, _get(r, "wall_seconds"))
    _row(rows, sec, f"{dur:g} s {W}x{H}: faceapi-expression", ex["speed"], None, "video-s/s",
         f"{_status(ex)}; clips {_get(ex, 'clips')}; goal >= 6")
    _row(rows, sec, "  random-tiny, same video", tiny["speed"], None, "video-s/s",
         f"{_status(tiny)}; clips {_get(tiny, 'clips')}; faceapi / tiny: {_per(ex['speed'], tiny['speed']) or 0:.3f}")
    _row(rows, sec, "  peak PSS, whole tree: faceapi-expression", ex["peak_pss"], None, "MiB",
         f"random-tiny: {tiny['peak_pss']:.0f} MiB; goal < 3072; largest {ex['top']}")


def section_readme(rows: list, run: Runner) -> None:
    """e. README example."""
    sec = "e README example"
    er = {ch: run.readme(ch) for ch in CHAINS}
    _row(rows, sec, "s2d annotate fixtures --weights random-tiny", er["new"]["process_s"] if
         er["new"]["rc"] == 0 else None, er["baseline"]["process_s"] if er["baseline"]["rc"] == 0 else None,
         "s", f"python -m cli, process start to exit; rc new {er['new']['rc']}, baseline "
              f"{er['baseline']['rc']}; manifest written: new {er['new']['manifest']}, baseline "
              f"{er['baseline']['manifest']}; peak PSS {er['new']['peak_pss']:.0f} / "
              f"{er['baseline']['peak_pss']:.0f} MiB")


def _git(*a):
    return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()


def _print_header(quick: bool, baseline: Path) -> None:
    import av
    import ray
    import torch

    dirty = len([x for x in _git("status", "--porcelain").splitlines() if x.strip()])
    print(f"\nAnnotate speed, before and after ({'quick' if quick else 'full'} run) on {platform.machine()} "
          f"{os.cpu_count()} CPUs, CPU only; torch {torch.__version__}, PyAV {av.__version__}, Ray {ray.__version__}\n"
          f"baseline {_git('-C', str(baseline), 'rev-parse', '--short', 'HEAD')} at {baseline}; new = {REPO} (HEAD {_git('rev-parse', '--short', 'HEAD')} "
          f"+ {dirty} changed paths)\n")


def _run_notes(interval: float, run: Runner, workdir: Path, load0, load1, t_all: float) -> list[str]:
    return [
        "value = new chain, ratio = new / baseline, vs = baseline's figure. Each run: a fresh child process on a "
        "fresh out + cache dir, local Ray started by run_annotate (plain ray.init(): all CPUs), one run at a time.",
        f"peak PSS: sum of Pss over the child and all its descendants, sampled every {interval:g} s "
        f"(c's timing run 30 s, d's runs 10 s; {run.samples} samples in {run.sampled_s:.0f} s of runs; the sampler used {run.sample_cost:.1f} CPU-s, "
        f"{100 * run.sample_cost / max(run.sampled_s, 1e-9):.0f}% of one core); largest = the biggest processes "
        f"at the peak (MiB).",
        f"inputs: generated from single_face.mp4 (looped, panned, zoomed), {FPS} fps, x264 veryfast crf 23, cached in "
        f"{workdir / 'inputs'}; S2D weights random (speed only); detector/landmarks: the fixture files.",
        f"lingering processes killed after {LINGER_S:g} s: " + ("; ".join(run.killed) if run.killed else "none"),
        f"load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} on {os.cpu_count()} CPUs: other processes may have been "
        f"running, so treat the numbers as rough. Total {time.perf_counter() - t_all:.0f} s.",
    ]


def main() -> None:
    args = _parse_args()
    if args.one:
        return child_main(json.loads(args.one))

    quick = args.quick
    only = _sections(args)
    fx = args.fixtures.resolve()
    _check_fixtures(fx)
    sys.path.insert(0, str(REPO))  # this process (section c) uses the new tree
    baseline = ensure_baseline(args.baseline, args.baseline_commit)
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (900 if quick else 3600)

    t_all, load0 = time.perf_counter(), os.getloadavg()
    runs_dir = Path(tempfile.mkdtemp(prefix="runs_", dir=workdir))
    run = Runner({"baseline": baseline, "new": REPO}, runs_dir, fx, args.interval, timeout)
    mfn = str(fx / "weights" / "mobilefacenet_68pt.pth.tar")
    rows: list[dict] = []
    notes: list[str] = []
    lengths = (30.0, 60.0) if quick else (30.0, 300.0)
    sizes = ((1920, 1080), (3840, 2160)) if quick else ((1920, 1080), (7680, 4320))
    try:
        if "a" in only:
            section_length(rows, run, workdir, fx, lengths)
        if "b" in only:
            section_resolution(rows, run, workdir, fx, sizes)
        if "c" in only:
            section_parts(rows, run, workdir, fx, lengths)
        if "d" in only:
            section_base(rows, run, workdir, fx, mfn)
        if "f" in only:
            section_expression(rows, run, workdir, fx, lengths)
        if "e" in only:
            section_readme(rows, run)
        load1 = os.getloadavg()
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)

    _print_header(quick, baseline)
    print_table(rows)
    notes += _run_notes(args.interval, run, workdir, load0, load1, t_all)
    print("\nnotes:")
    for n in notes:
        print(f"- {n}")
    if args.out_json:
        args.out_json.write_text(json.dumps(dict(quick=quick, sections=sorted(only), rows=rows, notes=notes,
                                                 loadavg_before=load0, loadavg_after=load1), indent=2, default=str))
        print(f"\nwrote {args.out_json}")


if __name__ == "__main__":
    main()
