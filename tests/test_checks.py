"""Bad options, paths and weights fail before any work, in one line; never a wrong result (issue: hardening)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import s2d_model as S
from pipeline.settings import AnnotateSettings, FaceSettings

REPO = Path(__file__).resolve().parents[1]


def s2d(*args, env=None, timeout=120):
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **(env or {})}, timeout=timeout)
    return res, time.time() - t


@pytest.fixture(scope="module")
def env(detector_weights, landmark_weights, tmp_path_factory):
    return {"S2D_DETECTOR_WEIGHTS": str(detector_weights), "S2D_LANDMARK_WEIGHTS": str(landmark_weights),
            "S2D_HOME": str(tmp_path_factory.mktemp("home"))}


@pytest.mark.parametrize("option, value, says", [
    ("--fps", "0", "must be > 0"), ("--fps", "-1", "must be > 0"), ("--segment", "0", "must be > 0"),
    ("--stride", "-1", "must be > 0"), ("--batch-size", "0", "--batch-size"), ("--batch-size", "-1", "--batch-size"),
    ("--min-face-frames", "17", "--min-face-frames"), ("--score-threshold", "1.5", "must be in (0, 1]"),
    ("--views", "3", "--views"), ("--detector", "yolo", "--detector"), ("--device", "tpu", "--device")])
def test_bad_option_values_fail_at_parse_time(option, value, says, fixtures_dir, tmp_path):
    res, seconds = s2d("annotate", fixtures_dir / "videos", "--out", tmp_path / "o", option, value)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert seconds < 20 and not (tmp_path / "o").exists()


def test_settings_refuse_what_the_cli_refuses():
    for bad in (dict(batch_size=0), dict(batch_size=-1), dict(segment_s=0), dict(stride_s=-1),
                dict(min_face_frames=0)):
        with pytest.raises(ValueError, match="must be"):
            AnnotateSettings(**bad)
    for bad in (dict(fps=0), dict(fps=-1), dict(long_side=0), dict(score_threshold=0)):
        with pytest.raises(ValueError, match="must be"):
            FaceSettings(**bad)
    with pytest.raises(ValueError, match="unknown decoder 'opencv'"):
        FaceSettings(decoder="opencv")


def test_help_lists_choices_and_flags_plainly(fixtures_dir):
    res, _ = s2d("annotate", "--help")
    assert res.returncode == 0 and "<bool>" not in res.stdout
    for text in ("--score-threshold", "--nms-threshold", "--long-side", "retinaface-resnet50", "<pyav|decord>",
                 "<auto|cpu|cuda>", "--force"):
        assert text in res.stdout, text


def test_the_cli_choices_are_the_pipelines():
    """cli.py writes its choices out (no pipeline import for --help); they must stay what the code accepts."""
    from typing import get_args

    import cli
    from jobs.datasets import FORMATS
    from pipeline.crops import FRAME_ORDERS
    from pipeline.settings import DECODERS, DETECTORS, LANDMARKS

    def values(choice):
        return list(get_args(choice))

    assert values(cli.Detector) == list(DETECTORS) and values(cli.Landmarks) == list(LANDMARKS)
    assert values(cli.Decoder) == list(DECODERS) and values(cli.DatasetFormat) == list(FORMATS)
    assert values(cli.FrameOrder) == list(FRAME_ORDERS) and values(cli.EvalFrameOrder) == ["auto", *FRAME_ORDERS]


def test_missing_input_and_out_file_fail_before_ray(env, fixtures_dir, tmp_path):
    res, seconds = s2d("annotate", tmp_path / "nope.mp4", fixtures_dir / "videos" / "single_face.mp4", "--out",
                       tmp_path / "o", "--weights", "random-tiny", env=env)
    assert res.returncode == 1 and f"no such file or folder: {tmp_path / 'nope.mp4'}" in res.stderr
    assert seconds < 20 and "Ray" not in res.stderr
    (tmp_path / "file").write_text("x")
    res, seconds = s2d("annotate", fixtures_dir / "videos", "--out", tmp_path / "file", "--weights", "random-tiny",
                       env=env)
    assert res.returncode == 1 and "is a file, not a folder" in res.stderr and seconds < 20


def test_a_precision_that_cannot_run_fails_before_any_work(env, fixtures_dir, tmp_path):
    """--precision int8 on a GPU, or for face-api's expression net: one line saying what is possible, before Ray."""
    res, seconds = s2d("annotate", fixtures_dir / "videos", "--out", tmp_path / "o", "--weights", "random-tiny",
                       "--precision", "int8", "--device", "cuda", env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "Ray" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("error: --precision int8 runs on a CPU only: use --device cpu, "
                                                   "or --precision auto, fp32 or bf16 on a GPU")
    assert seconds < 20 and not (tmp_path / "o" / "manifest.json").exists()
    manifest = fixtures_dir / "weights" / "face-api" / "face_expression_model-weights_manifest.json"
    res, _ = s2d("annotate", fixtures_dir / "videos", "--out", tmp_path / "o", "--weights", manifest,
                 "--precision", "int8", env=env)
    assert res.returncode == 1 and "face-api's expression net runs in fp32 or bf16" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Ray" not in res.stderr


def test_device_cuda_on_a_cluster_without_a_gpu_stops_before_any_work(ray_local, fixtures_dir, face_settings,
                                                                        landmark_weights, tmp_path):
    """--device cuda where the cluster has no GPU: one ClusterError once Ray is joined, before any video is read
    (each actor used to fail on its own, every video an error row); auto picks the CPU there."""
    from pipeline.annotate_run import run_annotate
    from pipeline.cluster import ClusterError, pick_device

    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ClusterError, match="--device cuda, but the cluster has no GPU: use --device cpu"):
        run_annotate([str(fixtures_dir / "videos" / "single_face.mp4")], tmp_path / "o", None, face_settings,
                     AnnotateSettings(weights="random-tiny", s2d_landmark_weights=str(landmark_weights)),
                     device="cuda", progress=False)
    assert not list((tmp_path / "o").glob("*.parquet")) and not list((tmp_path / "o" / "cache").glob("*/*.parquet"))


def test_the_annotate_driver_needs_no_torch_before_ray_with_random_tiny(env, fixtures_dir, tmp_path):
    """``s2d annotate --weights random-tiny`` checks its inputs, weights and settings without importing torch or
    timm (the S2D actor reads the weights; importing them here made the README example 1.4-4.6 s slower on 2
    cores): with both blocked, the run gets as far as starting Ray, which this child replaces by a one-line stop."""
    code = ("import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None\n"
            "import pipeline.driver as D, pipeline.cluster as C\n"
            "def stop(address=None): raise C.ClusterError('stopped where Ray would start')\n"
            "D.init_ray = stop\n"
            f"sys.argv = ['s2d', 'annotate', {str(fixtures_dir / 'videos')!r}, '--out', {str(tmp_path / 'o')!r}, "
            "'--weights', 'random-tiny']\n"
            "runpy.run_module('cli', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **env}, timeout=120)
    assert res.returncode == 1 and "error: stopped where Ray would start" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_every_missing_weights_file_is_named_at_once(fixtures_dir, tmp_path):
    res, seconds = s2d("annotate", fixtures_dir / "videos", "--out", tmp_path / "o",
                       env={"S2D_HOME": str(tmp_path / "home"), "S2D_WEIGHTS_DIR": str(tmp_path / "none")})
    assert res.returncode == 1 and "3 weights files are missing" in res.stderr, res.stderr
    for name in ("retinaface-mobilenet", "mobilefacenet", "s2d-dfew"):
        assert name in res.stderr
    assert seconds < 20 and "Traceback" not in res.stderr


def test_a_checkpoint_that_does_not_fit_its_labels_fails_before_ray(env, fixtures_dir, tmp_path):
    model = S.create_model("s2d_tiny", 7)
    path = tmp_path / "seven.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="s2d_tiny")}, path)
    res, seconds = s2d("annotate", fixtures_dir / "videos" / "single_face.mp4", "--out", tmp_path / "o",
                       "--weights", path, "--labels", "mafw", env=env)
    assert res.returncode == 1 and "7 classes, but label set 'mafw' has 11" in res.stderr, res.stderr
    assert seconds < 30 and "ActorDiedError" not in res.stderr and "Traceback" not in res.stderr


class _Code:
    """Pickles as a call of os.getpid: harmless, but code, which torch's weights-only loader refuses."""

    def __reduce__(self):
        return os.getpid, ()


@pytest.mark.ray
def test_weights_holding_code_are_refused_in_one_line_unless_trusted(env, fixtures_dir, tmp_path):
    model = S.create_model("s2d_tiny", 7)
    path = tmp_path / "code.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model="s2d_tiny"), "x": _Code()}, path)
    video = fixtures_dir / "videos" / "single_face.mp4"
    res, seconds = s2d("annotate", video, "--out", tmp_path / "o", "--weights", path, env=env)
    assert res.returncode == 1 and seconds < 30 and "Traceback" not in res.stderr, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert "holds pickled Python code (posix.getpid), so it was not loaded" in line and "--trust" in line
    assert "weights_only" not in line and not (tmp_path / "o").exists()
    res, _ = s2d("annotate", video, "--out", tmp_path / "o", "--weights", path, "--trust", "--device", "cpu",
                 env=env, timeout=300)
    assert res.returncode == 0 and "1 ok" in res.stdout, res.stderr[-2000:]  # the S2D actor loaded it too
    # quiet by default: none of Ray's start-up chatter; the bar shows video-seconds and no time-left estimate
    for chatter in ("Token authentication", "core_worker", "constructor arguments", "Progress bars disabled",
                    "Started a local Ray", "Execution plan", " INFO "):
        assert chatter not in res.stderr, (chatter, res.stderr[-2000:])
    bar = res.stderr.replace("\r", "\n").splitlines()
    assert any("1/1 videos" in x and "single_face.mp4: ok" in x and "video-s/s" in x for x in bar), res.stderr[-2000:]
    assert not [x for x in bar if "videos [" in x and "<" in x]


def test_a_clip_without_probabilities_fails_its_video_never_a_nan_row(tmp_path, detector_weights, landmark_weights):
    from test_run_parts import _clip, _segment, _unit

    from pipeline.annotate_run import Labelling, Timelines
    from pipeline.classifier import resolve_classifier
    from pipeline.settings import plan_faces
    from pipeline.sources import Source

    plan = plan_faces(FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights)))
    video = Labelling(resolve_classifier("random-tiny", None, str(landmark_weights)), "m", "h", "h")
    t = Timelines({"a": Source("/v/a.mp4", "a", 1, 0.0)}, plan, tmp_path / "c", tmp_path / "o",
                  {"video": video, "image": None}, {})
    t.add(_unit("a", n_clips=2, tracks=(0,)))
    t.add(_clip("a", _segment(0, 0), np.eye(7, dtype=np.float32)[0]))
    rec = t.add(_clip("a", _segment(0, 1), np.full(7, np.nan, np.float32))).record
    assert rec.status == "error" and "1 of 2 clips were not classified" in rec.error
    assert rec.timeline is None and not (tmp_path / "o").exists()


def test_a_broken_symlink_in_a_folder_is_an_error_row(tmp_path, fixtures_dir):
    from pipeline.sources import list_videos, probe
    from pipeline.units import plan_units

    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", tmp_path / "good.mp4")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "moved_away.mp4")
    (tmp_path / "song.m4a").symlink_to(tmp_path / "nothing.m4a")  # not a video by its name: not scanned
    sources = list_videos([tmp_path])
    assert [Path(s.path).name for s in sources] == ["gone.mp4", "good.mp4"]
    assert sources[0].path == str(tmp_path / "gone.mp4")  # the link the user has, not its target
    (unit,) = plan_units(sources[0].video_id, sources[0].path, 8.0, 60.0, 2.0)
    assert "broken symbolic link" in unit.error and "moved_away.mp4" in unit.error
    probe(sources[1].path)


@pytest.fixture(scope="module")
def long_video(fixtures_dir, tmp_path_factory) -> Path:
    """single_face.mp4 played forwards and backwards for 96 s: still being worked on when a short video's timeline is
    written (at 38 s it was done ~2 s after one: that one's clips wait for the S2D actor to load its model)."""
    import av

    from media import write_video

    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return write_video(tmp_path_factory.mktemp("long") / "b.mp4", (frames + frames[::-1]) * 20, fps=30)


@pytest.mark.ray
@pytest.mark.parametrize("command, sig", [("annotate", "SIGTERM"), ("faces", "SIGINT")])
def test_an_interrupted_run_keeps_what_is_done_and_marks_the_rest(command, sig, env, fixtures_dir, long_video,
                                                                  tmp_path):
    """a.mp4 (short) and b.mp4 (long); the signal once a.mp4 is done: exit 130 within seconds, a.mp4 kept, b.mp4
    counted "interrupted". annotate (SIGTERM, as a job scheduler sends it): the manifest says so; faces (Ctrl-C):
    a.mp4's cache entry only, and a re-run would do b.mp4. Both signals reach the same loop in both commands."""
    import json
    import signal

    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", tmp_path / "a.mp4")
    shutil.copy(long_video, tmp_path / "b.mp4")
    out = tmp_path / "out"
    if command == "annotate":  # -v: Ray's own messages are shown
        args, finished = ["--out", str(out), "--weights", "random-tiny", "-v"], "a.*.timeline.parquet"
    else:
        args, finished = ["--cache", str(out)], "faces/*/*.meta.parquet"

    def done() -> list:
        return list(out.glob(finished))

    # `python -m cli`, with Ctrl-C's handler set as in a terminal: a shell starts a background job (`pytest ... &`)
    # with SIGINT ignored, and Python keeps a signal ignored that it started with
    cli = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "runpy.run_module('cli', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", cli, command, str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"),
                             *args, "--device", "cpu"], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while time.time() < end and not done() and proc.poll() is None:
        time.sleep(0.2)
    assert done(), "a.mp4 was never finished"
    proc.send_signal(getattr(signal, sig))
    t = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.time() - t < 30 and proc.returncode == 130, stderr[-2000:]
    assert "1 interrupted" in stdout and "interrupted: " in stderr and "Traceback" not in stderr, stderr[-2000:]
    if command == "annotate":
        manifest = json.loads((out / "manifest.json").read_text())
        status = {Path(v["video_path"]).name: v["status"] for v in manifest["videos"]}
        assert status == {"a.mp4": "ok", "b.mp4": "interrupted"}
        assert "Started a local Ray" in stderr, stderr[-2000:]
    else:
        assert len(done()) == 1 and "videos: 1 ok" in stdout, stdout  # b.mp4 has no entry: a re-run does it
        assert "Started a local Ray" not in stderr, stderr[-2000:]


@pytest.mark.ray
def test_a_killed_driver_leaves_no_ray_processes(env, fixtures_dir, tmp_path):
    import signal

    from pipeline.watchdog import alive as _running, descendants

    proc = subprocess.Popen([sys.executable, "-m", "cli", "annotate", str(fixtures_dir / "videos"), "--out",
                             str(tmp_path / "out"), "--weights", "random-tiny", "--device", "cpu"], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[str, str] = {}
    try:
        end = time.time() + 90
        while time.time() < end and not any("FaceWorker" in _cmdline(p) for p in seen):
            seen.update(descendants(str(proc.pid)))
            time.sleep(0.3)
        assert any("raylet" in _cmdline(p) for p in seen), "Ray never started"
        seen.update(descendants(str(proc.pid)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        end = time.time() + 20
        while _running(seen) and time.time() < end:
            time.sleep(0.5)
        left = {p: _cmdline(p) for p in _running(seen)}
        assert not left, f"still running 20 s after the driver was killed: {left}"
    finally:
        for pid in _running(seen):  # only what this test started
            os.kill(pid, signal.SIGKILL)


@pytest.mark.ray
@pytest.mark.parametrize("stage, after", [("agents", 0.0), ("workers", 1.0)], ids=["ray-starting", "ray-just-up"])
def test_a_driver_killed_while_ray_starts_leaves_nothing(stage, after, env, fixtures_dir, tmp_path):
    """A SIGKILL at any moment of the local Ray's start (the watchdog starts before ``ray.init``), here: as the
    raylet's agents appear, and 1 s after its first workers appear (``ray.init`` has returned), leaves none of the
    processes the command started after a few seconds, not ~1 min. The moments are Ray's stages, not times: its
    first process shows 1.3-2.2 s after the start here, with the load (at ~1 s there is none yet), and what the
    driver starts itself dies with it (Ray's fate sharing); what its raylet starts is what lingers. What the
    command started: its descendants, noted every 0.05 s while it ran and, after the kill, those of the noted ones
    that still run (a worker started since), and its process group, its own here (a raylet's agents that were not
    noted: the raylet died with the driver)."""
    import signal

    from pipeline.watchdog import alive as _running, descendants

    def started(pid: str) -> bool:  # the process that marks the stage
        head = " ".join(_cmdline(int(pid)).split()[:3])
        if stage == "agents":
            return "Agent" in head or head.endswith(("dashboard/agent.py", "agent/main.py"))
        return "default_worker.py" in head or head.startswith("ray::IDLE")

    proc = subprocess.Popen([sys.executable, "-m", "cli", "annotate", str(fixtures_dir / "videos"), "--out",
                             str(tmp_path / "out"), "--weights", "random-tiny", "--device", "cpu"], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            process_group=0)
    seen: dict[str, str] = {}
    try:
        end, kill_at = time.time() + 60, None
        while time.time() < end and (kill_at is None or time.time() < kill_at) and proc.poll() is None:
            seen.update(descendants(str(proc.pid)))
            if kill_at is None and any(map(started, seen)):
                kill_at = time.time() + after
            time.sleep(0.05)
        assert kill_at is not None and proc.poll() is None, f"no {stage} of Ray's seen before the command ended"
        seen.update(descendants(str(proc.pid)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t = time.time()
        while time.time() - t < 8:
            for pid in _running(seen):
                seen.update(descendants(str(pid)))
            seen.update(_group(proc.pid))
            if not _running(seen):
                break
            time.sleep(0.2)
        left = {p: _cmdline(p) for p in _running(seen)}
        assert not left, f"still running {time.time() - t:.0f} s after the driver was killed: {left}"
    finally:
        seen.update(_group(proc.pid))
        for pid in _running(seen):  # only what this test started
            os.kill(pid, signal.SIGKILL)


def _group(pgid: int) -> dict[str, str]:
    """{PID: start time} of the live processes in process group ``pgid``."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, _, group, *rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if group == str(pgid) and state not in "ZX":
            found[pid] = rest[16]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_training_leaves_the_data_pipeline_cpus_or_says_why_it_cannot():
    from pipeline.plans import plan_workers

    assert plan_workers(1, 1.0, 0, 2.0, 0) == (1.0, None)  # fits: as asked
    each, note = plan_workers(2, 1.0, 0, 2.0, 0)  # 2 x 1 CPU on 2 CPUs hung: the data pipeline had none
    assert each == 0.5 and "each worker reserves 0.5 CPUs instead, 1 stay for the data pipeline" in note
    assert plan_workers(4, 2.0, 0, 16.0, 0) == (2.0, None)
    assert plan_workers(1, 1.0, 0, 1.0, 0)[0] == 0.5  # a 1-CPU cluster: half each
    with pytest.raises(ValueError, match="needs 2 GPUs; the cluster has 1"):
        plan_workers(2, 1.0, 1.0, 8.0, 1.0)
    with pytest.raises(ValueError, match="use at most 10 workers"):
        plan_workers(20, 1.0, 0, 2.0, 0)
    from pipeline.plans import data_task_cpus

    for workers, cpus in ((1, 1.0), (2, 1.0), (2, 2.0), (2, 3.0), (4, 16.0), (9, 2.0)):
        each = plan_workers(workers, 1.0, 0, cpus, 0)[0]
        task = data_task_cpus(cpus, workers, each)  # a data task fits beside the workers: it can always start
        assert 0 < task <= 1.0 and workers * each + task <= cpus + 1e-9, (workers, cpus, each, task)
    assert data_task_cpus(1.0, 2, plan_workers(2, 1.0, 0, 1.0, 0)[0]) == 0.5  # not Ray Data's default of 1


@pytest.mark.parametrize("breakage, says", [
    ("truncated", "face_recognition_model.bin: truncated"),
    ("expression", "missing tensor conv32_down/conv/filters"),
    ("not json", "not JSON"),
])
def test_a_corrupt_or_mismatched_identity_weights_file_fails_before_any_work(env, fixtures_dir, tmp_path, breakage,
                                                                             says):
    """--identity-weights: read and checked (numpy only) before Ray starts, in one line naming the file."""
    face_api = fixtures_dir / "weights" / "face-api"
    if breakage == "expression":
        manifest = face_api / "face_expression_model-weights_manifest.json"
    else:
        manifest = tmp_path / "face_recognition_model-weights_manifest.json"
        shutil.copy(face_api / manifest.name, manifest)
        data = (face_api / "face_recognition_model.bin").read_bytes()
        (tmp_path / "face_recognition_model.bin").write_bytes(data[:-64] if breakage == "truncated" else data)
        if breakage == "not json":
            manifest.write_text("<html>404</html>")
    code = ("import runpy, sys; sys.modules['torch'] = sys.modules['timm'] = None\n"
            "import pipeline.driver as D, pipeline.cluster as C\n"
            "def stop(address=None): raise C.ClusterError('stopped where Ray would start')\n"
            "D.init_ray = stop\n"
            f"sys.argv = ['s2d', 'annotate', {str(fixtures_dir / 'videos')!r}, '--out', {str(tmp_path / 'o')!r}, "
            f"'--weights', 'random-tiny', '--identity-weights', {str(manifest)!r}]\n"
            "runpy.run_module('cli', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **env}, timeout=120)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 1 and len(errors) == 1 and says in errors[0], res.stderr[-2000:]
    assert str(manifest.parent) in errors[0] and "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_a_missing_identity_weights_file_is_named_with_the_others(tmp_path, fixtures_dir):
    env = {k: v for k, v in os.environ.items() if k != "S2D_IDENTITY_WEIGHTS"}
    res = subprocess.run([sys.executable, "-m", "cli", "annotate", str(fixtures_dir / "videos"), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**env, "S2D_HOME": str(tmp_path / "home"), "S2D_WEIGHTS_DIR": str(tmp_path / "none")})
    assert res.returncode == 1 and "4 weights files are missing" in res.stderr and "faceapi-recognition" in res.stderr
    no_ids = subprocess.run([sys.executable, "-m", "cli", "annotate", str(fixtures_dir / "videos"), "--out",
                             str(tmp_path / "o"), "--no-identities"], capture_output=True, text=True, cwd=REPO,
                            timeout=120, env={**env, "S2D_HOME": str(tmp_path / "home"),
                                              "S2D_WEIGHTS_DIR": str(tmp_path / "none")})
    assert "3 weights files are missing" in no_ids.stderr and "faceapi-recognition" not in no_ids.stderr
