"""Ray Train jobs end to end on CPU with real Ray, the tiny model and tiny datasets made from the fixture faces.

One module-scoped local Ray (4 logical CPUs: 2 training workers plus room for the Ray Data decode tasks).
The chain: static stage (RAF-DB layout, 2 workers; it is also the learnability check, two real faces as two
classes) -> dynamic stage from its checkpoint (DFEW layout, 2 workers, oversampling + self-distillation,
a worker killed in epoch 1 and survived) -> a re-run resumes -> the checkpoint reloads with s2d_model and
evaluates (DFEW test split, and a CSV of a frame folder, a video and an image). Plus the oversampling draw
through Ray Data (run first: it also warms the Ray worker processes the later runs reuse).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import s2d_model as S
from jobs.evaluate import evaluate
from jobs.train import read_metrics, train_dynamic, train_static
from conftest import ensure_ray
from test_jobs_data import (AUTHORS_ORDER, assign, clip_frames, faces, frame_numbers, make_dfew, make_rafdb,
                            numbered_clip, write_frames)


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    return ensure_ray(4)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("jobs_data")
    fl = faces(fixtures_dir)
    raf = make_rafdb(root / "RAF-DB", fl, assign(12, 7, [0, 3, 6]), assign(3, 7, [0, 3, 6]))
    two = {0: fl[0], 3: fl[6]}  # the man of single_face.jpg, the woman of 0-f1-su-ph.jpg
    two_faces = make_rafdb(root / "two-faces", fl, [0, 3] * 8, [0, 3] * 4, face_of=lambda i, label: two[label], seed=5)
    dfew = make_dfew(root / "DFEW", fl, assign(12, 7, [0, 1, 2]), assign(3, 7, [0, 1, 2]))
    # a generic CSV dataset: a 20-frame folder (two different test views), a real video, an image
    csv_root = root / "mine"
    write_frames(csv_root / "clip", clip_frames(fl[4], 20))
    shutil.copy(fixtures_dir / "videos" / "single_face.mp4", csv_root / "smile.mp4")
    Image.fromarray(fl[6][:224, :224]).save(csv_root / "still.jpg")
    (csv_root / "test.csv").write_text("path,label\nclip,Neutral\nsmile.mp4,Happy\nstill.jpg,Surprise\n")
    return {"root": root, "rafdb": raf, "two_faces": two_faces, "dfew": dfew, "csv": csv_root}


def test_oversampled_epochs_are_fresh_and_balanced(ray_local, datasets):
    from jobs.datasets import load_split, train_dataset

    samples = load_split(datasets["rafdb"], "rafdb", "train").samples  # 12 images, classes 0, 3, 6
    imbalanced = [s for s in samples if s["label"] == 0] * 9 + [s for s in samples if s["label"] == 3]  # 36 : 4
    ds = train_dataset(imbalanced, image_mode=True, augment=False, oversample=True, decode_batch_size=8)
    passes = [np.concatenate([b["label"] for b in ds.iter_batches(batch_size=None)]) for _ in range(3)]
    assert all(len(p) == 40 for p in passes)  # len(dataset) draws per epoch
    drawn = np.concatenate(passes)
    assert 0.3 < np.mean(drawn == 3) < 0.7  # 10 % in the data, ~50 % drawn
    assert len({p.tobytes() for p in passes}) > 1  # every pass draws afresh


def test_missing_landmark_weights_stop_before_training(tmp_path, monkeypatch, datasets):
    from s2d_model.weights import WeightsNotFound

    monkeypatch.setenv("S2D_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("S2D_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFound, match=r"(?s)mobilefacenet.*mobilefacenet_model_best\.pth\.tar"):
        train_dynamic(datasets["dfew"], "dfew", tmp_path / "run", fold=1, model="s2d_tiny")
    with pytest.raises(WeightsNotFound, match="not found: .*nope.pth"):
        train_dynamic(datasets["dfew"], "dfew", tmp_path / "run", fold=1, model="s2d_tiny",
                      landmark_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(TypeError, match="unknown option"):
        train_static(datasets["rafdb"], "rafdb", tmp_path / "run", epoch=3)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def static_run(ray_local, datasets, landmark_weights):
    """The static stage as a learnability check: two distinct real faces as two classes (Surprise, Happiness),
    2 workers, no augmentation/mixup and a high lr so that 8 steps on CPU are enough (one step per epoch: 12
    samples, 2 workers x batch 4; with 4 steps it failed now and then)."""
    return train_static(datasets["two_faces"], "rafdb", datasets["root"] / "static", model="s2d_tiny", epochs=8,
                        batch_size=4, workers=2, landmark_weights=str(landmark_weights), val_fraction=0.25,
                        lr=2e-3, warmup_epochs=0, augment=False, mixup=False, label_smoothing=0.0, weight_decay=0.0)


def test_static_stage_learns_two_faces(static_run, datasets, landmark_weights, tmp_path):
    history = static_run["history"]
    assert [r["epoch"] for r in history] == list(range(8))
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < 0.75 * losses[0], losses  # the loss falls
    assert all(r["val_n"] == 4 for r in history)  # 2 per class, none dropped by the 2-way split
    assert history[-1]["val_war"] >= 0.75  # chance is 0.5
    ckpt = torch.load(static_run["best_checkpoint"], map_location="cpu", weights_only=True)
    assert "model_state_dict" in ckpt and ckpt["s2d"]["kind"] == "image"  # the authors' image layout
    assert ckpt["s2d"]["frame_order"] is None and ckpt["s2d"]["crop"] is None  # images; RAF-DB names no crop
    model = S.create_image_model("s2d_tiny", 7)
    S.load_checkpoint(model, static_run["best_checkpoint"])  # strict
    lines = (Path(static_run["run_dir"]) / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc") and len(lines) == 9
    test = evaluate(datasets["two_faces"], "rafdb", static_run["last_checkpoint"], tmp_path / "eval", batch_size=4,
                    landmark_weights=str(landmark_weights))
    assert test["n"] == 8 and test["war"] >= 0.75


@pytest.fixture(scope="module")
def dynamic_opts(datasets, static_run, landmark_weights):
    return dict(fold=1, model="s2d_tiny", batch_size=2, workers=2, landmark_weights=str(landmark_weights),
                val_fraction=0.25, init=static_run["best_checkpoint"], oversample=True, sdl=True,
                sdl_schedule=[(1, 0.5)], max_failures=1)


def kill_a_worker_after_epoch_0(run_dir: Path, timeout: float = 300.0) -> dict:
    """A thread that SIGKILLs one Ray Train worker process of this machine (``ray::RayTrainWorker...``) as soon as
    the run has written epoch 0's metrics row (its checkpoint is registered by then) -> {"pid", "rows"}: the
    process killed and how many epochs were written when it was (1: it died in epoch 1)."""
    import os
    import signal
    import threading
    import time

    killed: dict = {}

    def workers() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    pids.append(int(d.name))
            except OSError:
                continue
        return sorted(pids)

    def watch():
        end, rows = time.time() + timeout, run_dir / "metrics.jsonl"
        while time.time() < end:
            n = len(rows.read_text().splitlines()) if rows.is_file() else 0
            pids = workers() if n else []
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed.update(pid=pids[-1], rows=n)
                return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.fixture(scope="module")
def killed(datasets) -> dict:
    """What ``kill_a_worker_after_epoch_0`` killed in ``dynamic_run``."""
    return kill_a_worker_after_epoch_0(datasets["root"] / "dynamic")


@pytest.fixture(scope="module")
def dynamic_run(datasets, dynamic_opts, killed):
    """Two epochs, 2 workers; one worker is killed (from here, as a machine would lose it) once epoch 0 is done:
    the run restarts from epoch 0's checkpoint (``max_failures=1``)."""
    return train_dynamic(datasets["dfew"], "dfew", datasets["root"] / "dynamic", epochs=2, **dynamic_opts)


def test_dynamic_stage_survives_a_killed_worker(dynamic_run, dynamic_opts, killed):
    assert killed and killed["rows"] == 1, killed  # a worker died in epoch 1
    history = dynamic_run["history"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0]["sdl_weight"] == 0 and history[0]["sdl_loss"] is None  # queues fill in epoch 0
    assert history[1]["sdl_weight"] == 0.5 and np.isfinite(history[1]["sdl_loss"]) and history[1]["sdl_loss"] > 0
    assert all(np.isfinite(r["train_loss"]) and r["val_n"] == 3 for r in history)
    model = S.create_model("s2d_tiny", 7)
    S.load_checkpoint(model, dynamic_run["best_checkpoint"])  # strict: our file is the authors' video layout
    meta = torch.load(dynamic_run["last_checkpoint"], weights_only=True)["s2d"]
    assert meta["labels"] == "dfew" and meta["frame_order"] == "time" and meta["crop"] is None  # as trained


def test_rerun_resumes_and_continues_the_epoch_counter(datasets, dynamic_run, dynamic_opts):
    before = read_metrics(dynamic_run["run_dir"])
    again = train_dynamic(datasets["dfew"], "dfew", datasets["root"] / "dynamic", epochs=3, **dynamic_opts)
    history = again["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[:2] == before  # epochs 0 and 1 were not trained again
    assert history[2]["sdl_weight"] == 0.5 and np.isfinite(history[2]["sdl_loss"])
    assert torch.load(again["last_checkpoint"], weights_only=True)["s2d"]["epoch"] == 2


def test_evaluate_checkpoint_on_test_splits(datasets, dynamic_run, landmark_weights, tmp_path):
    result = evaluate(datasets["dfew"], "dfew", dynamic_run["best_checkpoint"], tmp_path / "dfew", fold=1,
                      batch_size=2, landmark_weights=str(landmark_weights))
    assert result["n"] == 3 and 0 <= result["uar"] <= 1 and np.asarray(result["confusion"]).sum() == 3
    for name in ("metrics.json", "confusion.csv", "confusion.png", "predictions.csv"):
        assert (tmp_path / "dfew" / name).is_file()
    mixed = evaluate(datasets["csv"], "csv", dynamic_run["best_checkpoint"], tmp_path / "csv", labels="dfew",
                     batch_size=3, landmark_weights=str(landmark_weights))
    assert mixed["n"] == 3 and mixed["support"] == [1, 0, 1, 0, 1, 0, 0]  # Happy, Neutral, Surprise
    assert result["frame_order"] == mixed["frame_order"] == "time"  # the order the checkpoint was trained on
    assert result["frame_order_why"] == "the checkpoint's training order, recorded in it"


def test_ray_datasets_read_frames_in_the_asked_order(ray_local, tmp_path):
    from jobs.datasets import eval_dataset, train_dataset

    sample = {"path": str(numbered_clip(tmp_path / "clip")), "label": 0, "kind": "frames"}
    for order, expected in (("time", list(range(1, 17))), ("lexicographic", AUTHORS_ORDER)):
        ev = next(iter(eval_dataset([sample], frame_order=order).iter_batches(batch_size=None)))
        assert frame_numbers(ev["clip"][0, 0]) == expected, order
        tr = next(iter(train_dataset([sample], augment=False, frame_order=order).iter_batches(batch_size=None)))
        assert frame_numbers(tr["clip"][0]) == expected, order


def test_evaluate_feeds_the_model_frames_in_the_checkpoints_order(dynamic_run, landmark_weights, tmp_path, capsys):
    root = tmp_path / "numbered"
    numbered_clip(root / "clip")  # 1.jpg .. 16.jpg, each frame its own grey
    (root / "test.csv").write_text("path,label\nclip,Happy\n")
    ckpt = torch.load(dynamic_run["best_checkpoint"], weights_only=True)
    ckpt["s2d"]["frame_order"] = "lexicographic"  # as if trained on the authors' order
    torch.save(ckpt, tmp_path / "lex.pth")

    def run(checkpoint, order):
        out = tmp_path / f"{Path(checkpoint).stem}-{order}"
        result = evaluate(root, "csv", checkpoint, out, labels="dfew", batch_size=1,
                          landmark_weights=str(landmark_weights), frame_order=order)
        row = (out / "predictions.csv").read_text().splitlines()[1].split(",")
        return result, [float(v) for v in row[3:]]

    timed, p_time = run(dynamic_run["best_checkpoint"], "time")
    lex, p_lex = run(dynamic_run["best_checkpoint"], "lexicographic")
    assert timed["frame_order"] == "time" and lex["frame_order"] == "lexicographic"
    assert lex["frame_order_why"] == "as asked; the checkpoint was trained on time order"
    assert np.abs(np.subtract(p_time, p_lex)).max() > 1e-5  # the model saw another sequence of frames
    capsys.readouterr()
    auto, p_auto = run(tmp_path / "lex.pth", "auto")
    assert auto["frame_order"] == "lexicographic" and p_auto == p_lex
    assert "frame order: lexicographic (the checkpoint's training order, recorded in it)" in capsys.readouterr().out
