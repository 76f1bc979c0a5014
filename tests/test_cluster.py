"""The commands on a real Ray cluster of several nodes on this machine (tests/loopback.py: ``ray start --head`` and
``ray start --address`` on 127.0.0.1, token authentication on, the token where Ray keeps it): the README's
"Running on a cluster" steps, a worker node killed mid-run, Ray Jobs, and a client without the token."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from golden.check import assert_timelines_equal_golden
from golden.make_golden import inputs
from loopback import running
from pipeline import storage

pytestmark = pytest.mark.ray  # nodes of its own on loopback

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, detector_weights, landmark_weights, s3):
    """A head (1 CPU, with its dashboard: the Ray Jobs server) and a worker node (2 CPUs); the nodes have the
    settings of the test S3 server (as a real cluster's nodes would have their credentials)."""
    env = {**s3.env, "S2D_DETECTOR_WEIGHTS": str(detector_weights), "S2D_LANDMARK_WEIGHTS": str(landmark_weights),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with running("s2d-lb", env, head_cpus=1, worker_cpus=2, dashboard=True) as c:
        yield c


def s2d(cluster, *args, timeout=600, **popen):
    """``s2d ARGS`` as a user's shell on this machine runs it (the token in ~/.ray/auth_token, no RAY_AUTH_MODE)."""
    cmd = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=cluster.client_env(), capture_output=True, text=True, timeout=timeout)


def s2d_background(cluster, *args):
    """``s2d ARGS`` started as ``s2d`` does, its output collected line by line -> (process, lines, reader thread)."""
    proc = subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=REPO, env=cluster.client_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_annotate_on_two_nodes_uses_both_and_equals_the_golden_copy(cluster, tmp_path):
    inputs(tmp_path / "videos")
    run = s2d(cluster, "annotate", tmp_path / "videos", "--out", tmp_path / "out", "--weights", "random-tiny",
              "--address", cluster.address)
    assert run.returncode == 0, run.stdout + run.stderr
    m = manifest(tmp_path / "out")
    assert sorted(v["status"] for v in m["videos"]) == ["no_faces", "ok", "ok", "ok"]
    assert_timelines_equal_golden([v for v in m["videos"] if v["timeline"]], out=tmp_path / "out")
    nodes = {n for v in m["videos"] for part in ("faces", "s2d") for n in v["nodes"][part]}
    assert len(nodes) == 2, m["videos"]  # the work ran on both nodes


def test_annotate_on_two_nodes_with_everything_on_s3(cluster, s3, tmp_path):
    """No folder shared between the nodes: videos read from the object store by the face actors on both nodes,
    the cache and timelines written to it by the driver."""
    root = s3.bucket("cluster")
    for f in inputs(tmp_path / "videos"):
        storage.write(f"{root}/videos/{f.name}", f.read_bytes())
    run = s2d(cluster, "annotate", f"{root}/videos", "--out", f"{root}/out", "--weights", "random-tiny",
              "--address", cluster.address)
    assert run.returncode == 0, run.stdout + run.stderr
    m = json.loads(storage.read_bytes(f"{root}/out/manifest.json"))
    assert sorted(v["status"] for v in m["videos"]) == ["no_faces", "ok", "ok", "ok"]
    assert_timelines_equal_golden([v for v in m["videos"] if v["timeline"]], out=f"{root}/out")
    assert len({n for v in m["videos"] for part in ("faces", "s2d") for n in v["nodes"][part]}) == 2, m["videos"]


def test_a_worker_node_killed_mid_run_loses_nothing(cluster, tmp_path):
    """The worker node (2 of the cluster's 3 CPUs) dies while annotate runs: the run finishes on the head alone,
    every video with the timeline a clean run writes; then a new worker node joins for the tests after this."""
    inputs(tmp_path / "videos")
    for i in range(3):  # more work, so the node dies mid-run
        shutil.copy(tmp_path / "videos" / "single_face.mp4", tmp_path / "videos" / f"single_face_{i}.mp4")
    out = tmp_path / "out"
    proc, lines, reader = s2d_background(cluster, "annotate", tmp_path / "videos", "--out", out, "--weights",
                                         "random-tiny", "--address", cluster.address)
    worker = cluster.nodes[-1]  # the worker node alive now
    try:
        end = time.time() + 300
        while (time.time() < end and proc.poll() is None and not list(out.glob("*.timeline.parquet"))
               and cluster.cpu_seconds(worker, "MapWorker") < 5):
            time.sleep(0.2)  # an actor of this run on that node has started on its work (~2 s of it is imports)
        actors = [c for c in cluster.commands(worker) if "MapWorker" in c]
        killed = cluster.kill_node(worker)
        assert actors and killed and proc.poll() is None, "".join(lines)
        assert not any("7/7 videos" in line for line in lines), "".join(lines)  # work was left for the head
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            reader.join(timeout=10)
            pytest.fail("annotate did not finish after the node died:\n" + "".join(lines)[-6000:])
        reader.join(timeout=10)
    finally:
        cluster.add_worker(cpus=2)  # the tests after this one have their two nodes again, whatever happened here
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "died while the run was on it" in log and "again, on the nodes left" in log, log  # one line says so
    m = manifest(out)
    assert sorted(v["status"] for v in m["videos"]) == ["no_faces"] + ["ok"] * 6, log
    golden = [v for v in m["videos"] if v["timeline"] and not Path(v["video_path"]).stem.startswith("single_face_")]
    assert_timelines_equal_golden(golden, out=out)
    import pyarrow.parquet as pq

    want = pq.read_table(out / next(v["timeline"] for v in m["videos"] if v["video_path"].endswith("/single_face.mp4")))
    for v in m["videos"]:
        if Path(v["video_path"]).stem.startswith("single_face_"):  # copies: the same rows but their own id/path
            got = pq.read_table(out / v["timeline"]).drop(["video_id", "video_path"])
            assert got.equals(want.drop(["video_id", "video_path"])), v["video_path"]


def test_a_client_without_the_token_gets_one_line(cluster, tmp_path, fixtures_dir):
    env = {**cluster.client_env(), "HOME": str(tmp_path),  # another machine: no ~/.ray/auth_token
           "RAY_NUM_REDIS_GET_RETRIES": "3"}  # Ray tries to connect 3 times, a second apart, not 20
    video = fixtures_dir / "videos" / "single_face.mp4"
    run = subprocess.run([sys.executable, "-m", "cli", "faces", str(video), "--cache", str(tmp_path / "c"),
                          "--address", cluster.address], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "RAY_AUTH_TOKEN" in run.stderr and "Traceback" not in run.stderr + run.stdout, run.stderr


import test_jobs_cli  # noqa: E402

videos = test_jobs_cli.videos  # the labelled raw videos fixture, used here under its own name


def job(cluster, working_dir: Path, *entrypoint) -> subprocess.CompletedProcess:
    """``ray job submit`` as the README gives it: the dashboard's address, and RAY_AUTH_MODE=token (Ray's own CLI
    sends the token from ~/.ray/auth_token only then)."""
    return subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(working_dir),
                           "--", *map(str, entrypoint)], env=cluster.client_env(RAY_AUTH_MODE="token"),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def prepared(cluster, videos, tmp_path_factory) -> Path:
    """``s2d prepare`` of the labelled videos on the cluster: the clip dataset both training tests read."""
    data = tmp_path_factory.mktemp("cluster") / "data"
    done = s2d(cluster, "prepare", videos / "videos.csv", "--out", data, "--labels", "dfew", "--address",
               cluster.address)
    assert done.returncode == 0 and (data / "train.csv").is_file(), done.stdout + done.stderr
    return data


def test_prepare_train_evaluate_faces_and_ray_jobs_on_the_cluster(cluster, prepared, videos, tmp_path):
    data, run = prepared, tmp_path / "run"

    # Ray Jobs: training with 2 workers on the 1 + 2 CPU cluster (the data pipeline keeps a CPU), then annotate
    done = job(cluster, data, "s2d", "train", "dynamic", "--data", ".", "--format", "csv", "--labels", "dfew",
               "--model", "s2d_tiny", "--epochs", "1", "--batch-size", "2", "--workers", "2", "--out", run)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout + done.stderr
    assert (run / "best.pth").is_file()
    done = job(cluster, data, "s2d", "annotate", videos / "a.mp4", "--out", tmp_path / "ann", "--weights",
               run / "best.pth")
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout + done.stderr
    assert [v["status"] for v in manifest(tmp_path / "ann")["videos"]] == ["ok"]
    listed = subprocess.run([RAY, "job", "list", "--address", cluster.dashboard],
                            env=cluster.client_env(RAY_AUTH_MODE="token"),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("SUCCEEDED") >= 2, listed.stdout + listed.stderr

    done = s2d(cluster, "evaluate", "--data", data, "--format", "csv", "--labels", "dfew", "--checkpoint",
               run / "best.pth", "--out", tmp_path / "eval", "--address", cluster.address)
    assert done.returncode == 0 and (tmp_path / "eval" / "metrics.json").is_file(), done.stdout + done.stderr
    done = s2d(cluster, "faces", videos / "a.mp4", "--cache", tmp_path / "cache", "--address", cluster.address)
    assert done.returncode == 0 and "1 ok" in done.stdout, done.stdout + done.stderr


def test_training_resumes_from_its_checkpoint_when_a_node_dies_and_finishes_when_one_joins(cluster, prepared,
                                                                                         tmp_path):
    """``train dynamic --workers 2 --max-failures 1`` on the 1 + 2 CPU cluster; the worker node is killed after the
    first checkpoint: the run waits for CPUs, a new worker node joins, and the run goes on from its latest
    checkpoint to its last epoch."""
    data, run = prepared, tmp_path / "run"
    proc, lines, reader = s2d_background(cluster, "train", "dynamic", "--data", data, "--format", "csv", "--labels",
                                         "dfew", "--model", "s2d_tiny", "--epochs", "12", "--batch-size", "2",
                                         "--workers", "2", "--max-failures", "1", "--out", run, "--address",
                                         cluster.address)
    end = time.time() + 600
    while time.time() < end and not any("epoch 3/12" in line for line in lines) and proc.poll() is None:
        time.sleep(0.2)  # two epochs reported: their checkpoints are registered with Ray Train
    assert proc.poll() is None, "".join(lines)
    assert any("RayTrainWorker" in c for c in cluster.commands(cluster.nodes[-1]))  # it trains on that node
    killed = cluster.kill_node(cluster.nodes[-1])
    assert killed
    time.sleep(5)
    cluster.add_worker(cpus=2)  # the run was waiting for CPUs; it goes on now
    proc.wait(timeout=900)
    reader.join(timeout=10)
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "resuming from" in log, log
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(epochs)) == list(range(12)), epochs
    assert (run / "best.pth").is_file() and (run / "last.pth").is_file()


def test_a_client_with_a_token_joins_a_cluster_without_authentication(tmp_path):
    """init_ray turns token mode on whenever this machine has a token: a head started without authentication
    must still accept the client."""
    with running("s2d-lbo", {"RAY_AUTH_MODE": "disabled"}, head_cpus=1) as open_head:
        code = "from pipeline.cluster import init_ray, resources; init_ray(%r); print('cpus', resources()[0])"
        run = subprocess.run([sys.executable, "-c", code % open_head.address], cwd=REPO,
                             env=open_head.client_env(), capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "cpus 1.0" in run.stdout, run.stderr
