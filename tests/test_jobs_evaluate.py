"""jobs/evaluate.py: metrics on known predictions, the two-view forward, outputs, checkpoint round trips."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import s2d_model as S
from jobs.evaluate import compute_metrics, confusion_matrix, pick_frame_order, predict_views, write_outputs
from jobs.sdl import EmotionAnchors, sdl_weight


def test_metrics_on_known_predictions():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 1], [1, 1, 0], [0, 0, 4]])
    m = compute_metrics(y_true, y_pred, 3)
    assert m["recall"] == pytest.approx([2 / 4, 1 / 2, 4 / 4])
    assert m["uar"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["war"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx([2 / 3, 1 / 2, 4 / 5])
    f1 = [2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2), 0.5, 2 * 0.8 / 1.8]
    assert m["f1"] == pytest.approx(f1)
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["f1_weighted"] == pytest.approx((4 * f1[0] + 2 * f1[1] + 4 * f1[2]) / 10)
    assert m["support"] == [4, 2, 4] and m["n"] == 10


def test_metrics_with_absent_classes():
    # 4 classes; class 3 never occurs, class 2 is only ever predicted (never true)
    m = compute_metrics([0, 0, 1, 1], [0, 2, 1, 1], 4)
    assert m["recall"] == [0.5, 1.0, None, None]
    assert m["uar"] == pytest.approx(0.75)  # over the classes present in the ground truth
    assert m["war"] == pytest.approx(0.75)
    assert m["f1"][2] == 0.0 and m["f1_macro"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)  # classes 0, 1, 2
    perfect = compute_metrics([2, 1, 0], [2, 1, 0], 3)
    assert perfect["uar"] == perfect["war"] == perfect["f1_macro"] == 1.0


@pytest.fixture(scope="module")
def tiny_video(landmark_weights):
    torch.manual_seed(0)
    model = S.create_model("s2d_tiny", 3, num_frames=2).eval()
    S.load_landmark_weights(model, landmark_weights)
    return model


def test_predict_views_averages_softmax_of_two_views(tiny_video):
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 2, 2, 224, 224, 3), dtype=torch.uint8, generator=g)  # [B, V, T, H, W, 3]
    views = torch.tensor([2, 1])
    probs = predict_views(tiny_video, clips, views)
    from jobs.augment import to_model_input

    with torch.no_grad():
        p0 = tiny_video(to_model_input(clips[:, 0])).softmax(-1)
        p1 = tiny_video(to_model_input(clips[:, 1])).softmax(-1)
    torch.testing.assert_close(probs[0], (p0[0] + p1[0]) / 2)
    torch.testing.assert_close(probs[1], p0[1])  # one view only
    assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_predict_views_in_bf16_on_a_cpu_moves_the_probabilities_a_little(tiny_video):
    """--precision bf16 on a CPU: autocast (the landmark branch in fp32), close to fp32 but not the same."""
    g = torch.Generator().manual_seed(1)
    clips = torch.randint(0, 256, (2, 1, 2, 224, 224, 3), dtype=torch.uint8, generator=g)
    fp32, bf16 = (predict_views(tiny_video, clips, torch.tensor([1, 1]), amp=a) for a in (False, True))
    assert 0 < (fp32 - bf16).abs().max() < 0.02


def test_evaluate_in_int8_quantises_on_a_cpu_and_refuses_a_gpu_before_any_work(tmp_path, tiny_video,
                                                                                landmark_weights):
    """--precision int8: the evaluation actor quantises the model's Linear layers (probabilities close to fp32's,
    not the same); with --gpus-per-worker it stops in one line before reading the data."""
    from jobs.evaluate import Predictor, evaluate

    path = S.save_checkpoint(tiny_video, tmp_path / "video.pth", config="s2d_tiny", label_names=list("abc"))
    g = torch.Generator().manual_seed(1)
    batch = {"clip": torch.randint(0, 256, (2, 1, 2, 224, 224, 3), dtype=torch.uint8, generator=g).numpy(),
             "views": np.array([1, 1]), "label": np.array([0, 1]), "index": np.array([0, 1]),
             "weight": np.array([1.0, 1.0])}
    fp32, int8 = (Predictor(str(path), str(landmark_weights), precision={"cpu": p, "cuda": None})(batch)["probs"]
                  for p in ("fp32", "int8"))
    assert 0 < np.abs(fp32 - int8).max() < 0.02
    with pytest.raises(ValueError, match="--precision int8 runs on a CPU only"):
        evaluate(tmp_path / "no-such-data", "dfew", path, tmp_path / "out", landmark_weights=str(landmark_weights),
                 gpus_per_worker=1, precision="int8")
    assert not (tmp_path / "out").exists()


def test_the_evaluation_actor_uses_a_gpu_only_when_it_reserved_one(tmp_path, tiny_video, landmark_weights,
                                                                     monkeypatch):
    """Ray 2.60 shows every GPU to an actor that reserved none: with ``--gpus-per-worker 0`` the Predictor stays on
    the CPU even where torch sees a GPU (here torch is told it does: the old actor moved the model to cuda:0)."""
    from jobs.evaluate import Predictor

    path = S.save_checkpoint(tiny_video, tmp_path / "video.pth", config="s2d_tiny", label_names=list("abc"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    p = Predictor(str(path), str(landmark_weights), gpu=False)
    assert {t.device.type for t in p.model.parameters()} == {"cpu"}


def test_checkpoints_round_trip_through_s2d_model(tmp_path, tiny_video, landmark_weights):
    path = S.save_checkpoint(tiny_video, tmp_path / "video.pth", config="s2d_tiny", labels=None,
                             label_names=["a", "b", "c"])
    model, report = S.load_model(path, landmark_weights)
    assert isinstance(model, S.S2DVideo) and model.num_classes == 3 and model.num_frames == 2 and not model.training
    assert report.meta["label_names"] == ["a", "b", "c"] and report.meta["config"] == "s2d_tiny"
    clip = torch.randn(1, 3, 2, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), tiny_video(clip))
    image = S.create_image_model("s2d_tiny", 7)
    S.save_checkpoint(image, tmp_path / "image.pth", config="s2d_tiny", labels="rafdb")
    model, report = S.load_model(tmp_path / "image.pth", landmark_weights)
    assert isinstance(model, S.S2DImage) and report.format == "image" and report.meta["labels"] == "rafdb"


def test_checkpoints_carry_crop_and_frame_order_and_old_files_still_load(tmp_path, tiny_video, landmark_weights):
    path = S.save_checkpoint(tiny_video, tmp_path / "video.pth", config="s2d_tiny", crop="box:1@224",
                             frame_order="lexicographic")
    _, report = S.load_model(path, landmark_weights)
    assert report.meta["crop"] == "box:1@224" and report.meta["frame_order"] == "lexicographic"
    _, report = S.load_model(S.save_checkpoint(tiny_video, tmp_path / "plain.pth", config="s2d_tiny"))
    assert report.meta["crop"] is None and report.meta["frame_order"] is None  # not known: recorded as such
    old = tmp_path / "old.pth"  # a file saved before crop and frame order were recorded
    torch.save({"model": tiny_video.state_dict(), "s2d": {"kind": "video", "config": "s2d_tiny", "labels": None}}, old)
    model, report = S.load_model(old, landmark_weights)
    assert model.num_classes == 3 and "crop" not in report.meta and "frame_order" not in report.meta


def test_frame_order_auto_is_the_checkpoints_training_order(tmp_path, tiny_video):
    lex = S.load_model(S.save_checkpoint(tiny_video, tmp_path / "lex.pth", frame_order="lexicographic"))[1].meta
    assert pick_frame_order("auto", tmp_path / "lex.pth", lex) == \
        ("lexicographic", "the checkpoint's training order, recorded in it")
    assert pick_frame_order("time", tmp_path / "lex.pth", lex) == \
        ("time", "as asked; the checkpoint was trained on lexicographic order")
    timed = S.load_model(S.save_checkpoint(tiny_video, tmp_path / "time.pth", frame_order="time"))[1].meta
    assert pick_frame_order("auto", tmp_path / "time.pth", timed)[0] == "time"
    assert pick_frame_order("auto", tmp_path / "old.pth", {}) == ("time", "the checkpoint records no frame order")
    # the authors' checkpoints, by registry name: s2d-dfew was trained and tested in name order
    assert pick_frame_order("auto", "s2d-dfew", {}) == \
        ("lexicographic", "the checkpoint's training order, the authors' protocol")
    order, why = pick_frame_order("time", "s2d-dfew", {})
    assert order == "time" and "differs from the authors' protocol" in why and "lexicographic" in why
    assert pick_frame_order("auto", "s2d-ferv39k", {})[0] == "time"
    assert pick_frame_order("lexicographic", "s2d-dfew", {})[0] == "lexicographic"
    with pytest.raises(ValueError, match="^unknown frame order 'sideways': choose one of auto, time, lexicographic$"):
        pick_frame_order("sideways", "s2d-dfew", {})


def test_outputs_written(tmp_path):
    m = compute_metrics([0, 1, 1], [0, 1, 0], 2)
    samples = [{"path": f"s{i}", "label": y} for i, y in enumerate([0, 1, 1])]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    paths = write_outputs(tmp_path / "out", m, ("neg", "pos"), samples, probs)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["uar"] == pytest.approx(0.75) and saved["labels"] == ["neg", "pos"]
    rows = list(csv.reader(open(paths["confusion_csv"])))
    assert rows == [["true \\ predicted", "neg", "pos"], ["neg", "1", "0"], ["pos", "1", "1"]]
    assert (tmp_path / "out" / "confusion.png").stat().st_size > 1000
    assert len(list(csv.reader(open(paths["predictions"])))) == 4


# ============================================================================ self-distillation anchors
def test_sdl_schedule():
    assert [sdl_weight(e) for e in (0, 29, 30, 49, 50, 59, 60, 79, 80, 99)] == \
           [0, 0, 0.01, 0.01, 0.1, 0.1, 0.5, 0.5, 1.0, 1.0]
    assert [sdl_weight(e, [(1, 0.5), (2, 1.0)]) for e in range(3)] == [0, 0.5, 1.0]


def test_sdl_queues_fill_and_targets_are_similarity_weighted():
    anchors = EmotionAnchors(num_classes=3, dim=4, k=2, size=3)
    assert not anchors.ready
    e = torch.eye(4)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    anchors.update(e[:2], probs[:2], torch.tensor([0, 1]))
    assert anchors.ready and anchors.filled.tolist() == [1, 1, 0]
    # a feature equal to class 0's anchor, orthogonal to class 1's: the target is class 0's stored softmax
    torch.testing.assert_close(anchors.targets(e[:1]), probs[:1])
    # halfway between both anchors: the average
    torch.testing.assert_close(anchors.targets((e[0] + e[1])[None]), ((probs[0] + probs[1]) / 2)[None])
    for _ in range(5):  # FIFO: at most `size` entries per class, newest last
        anchors.update(e[2:3], probs[2:3], torch.tensor([2]))
    assert anchors.filled.tolist() == [1, 1, 3]
    loss = anchors.loss(torch.randn(4, 3), torch.randn(4, 4))
    assert torch.isfinite(loss) and loss > 0
    state = anchors.state_dict()
    other = EmotionAnchors(3, 4, k=2, size=3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.targets(e), anchors.targets(e))
