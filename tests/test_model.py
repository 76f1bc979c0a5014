"""S2D model: key layout vs the spec, numerics vs an independent reference, checkpoint formats, freezing."""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import pytest
import torch

import s2d_model as S
from s2d_model.checkpoints import CheckpointError

sys.path.insert(0, str(Path(__file__).parent))
from s2d_reference import reference_forward  # noqa: E402

BASE = "s2d_base_patch16_224"


def spec_keys(num_classes: int) -> dict[str, tuple]:
    """The fine-tuned checkpoint layout listed in S2D_REFERENCE.md section 1, at base size."""
    d, c = 768, num_classes
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d), "temporal_embedding": (1, 16, d),
            "patch_embed.proj.weight": (d, 3, 16, 16), "patch_embed.proj.bias": (d,),
            "patch_embed_prompt.proj.weight": (d, 128, 1, 1), "patch_embed_prompt.proj.bias": (d,),
            "ln_post.weight": (d,), "ln_post.bias": (d,), "head.fc_cls.weight": (c, d), "head.fc_cls.bias": (c,)}
    for i in range(12):
        p = f"prompt_blocks.{i}."
        keys.update({p + "conv0_0.weight": (8, d, 1, 1), p + "conv0_0.bias": (8,),
                     p + "conv0_1.weight": (8, d, 1, 1), p + "conv0_1.bias": (8,),
                     p + "conv1x1.weight": (d, 8, 1, 1), p + "conv1x1.bias": (d,), p + "fovea.smooth": (1,),
                     p + "TMA.T_Adapter.D_fc1.weight": (192, d), p + "TMA.T_Adapter.D_fc1.bias": (192,),
                     p + "TMA.T_Adapter.attn.qkv.weight": (576, 192),
                     p + "TMA.T_Adapter.attn.proj.weight": (192, 192), p + "TMA.T_Adapter.attn.proj.bias": (192,),
                     p + "TMA.T_Adapter.D_fc2.weight": (d, 192), p + "TMA.T_Adapter.D_fc2.bias": (d,),
                     p + "TMA.norm.weight": (d,), p + "TMA.norm.bias": (d,),
                     p + "TMA.S_Adapter.D_fc1.weight": (192, d), p + "TMA.S_Adapter.D_fc1.bias": (192,),
                     p + "TMA.S_Adapter.D_fc2.weight": (d, 192), p + "TMA.S_Adapter.D_fc2.bias": (d,),
                     f"prompt_norms.{i}.weight": (d,), f"prompt_norms.{i}.bias": (d,)})
        b = f"blocks.{i}."  # standard timm ViT block names
        keys.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                     b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                     b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (4 * d, d),
                     b + "mlp.fc1.bias": (4 * d,), b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    return keys


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = S.create_model("s2d_tiny", 7).eval()
    with torch.no_grad():  # move every weight off its init so the comparisons see real mixing
        for name, p in m.named_parameters():
            if not name.startswith("landmark."):
                p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 224, 224)


@pytest.mark.parametrize("num_classes", [7, 11])
def test_base_state_dict_matches_spec_exactly(num_classes):
    with torch.device("meta"):
        model = S.create_model(BASE, num_classes)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = spec_keys(num_classes)
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want
    assert not any(k.startswith("landmark") for k in got)


def test_base_trainable_split_is_the_authors():
    with torch.device("meta"):
        model = S.create_model(BASE, 7)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    n_train = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    n_all = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("landmark."))
    n_landmark = sum(p.numel() for p in model.landmark.parameters())
    print(f"\nS2D base, C=7: trainable {n_train:,} of {n_all:,} (+{n_landmark:,} frozen landmark net)")
    assert n_train == 9_258_451
    assert 94e6 < n_all < 96e6 and 0.9e6 < n_landmark < 1.1e6
    assert "pos_embed" not in trainable and "cls_token" not in trainable and "patch_embed.proj.weight" not in trainable
    assert not any(n.startswith("blocks.") for n in trainable)
    assert "prompt_norms.11.weight" in trainable and "temporal_embedding" in trainable


def test_tiny_matches_independent_reference(tiny, clip):
    with torch.no_grad():  # s2d_tiny_patch16_224: depth 2, 2 heads, 2 adapter heads
        ours = tiny(clip)
        ref = reference_forward(tiny.state_dict(), clip, tiny.landmark.forward_conv4, depth=2, heads=2,
                                adapter_heads=2)
    assert ours.shape == (2, 7)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_base_matches_independent_reference(landmark_weights):
    torch.manual_seed(2)
    model = S.create_model(BASE, 7).eval()
    S.load_landmark_weights(model, landmark_weights)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("landmark."):
                p.add_(torch.randn_like(p) * 0.02)
        x = torch.randn(1, 3, 16, 224, 224)
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, model.landmark.forward_conv4, depth=12, heads=12,
                                adapter_heads=8)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_wrong_number_of_frames_is_rejected(tiny):
    with pytest.raises(ValueError, match="exactly 16 frames, got 8"):
        tiny(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tiny(torch.zeros(3, 16, 224, 224))


def test_eval_outputs_are_deterministic_and_return_feature(tiny, clip):
    with torch.no_grad():
        a = tiny(clip)
        b, feat = tiny(clip, return_feature=True)
        c = tiny(clip[:1])
    assert torch.equal(a, b) and feat.shape == (2, 64)
    torch.testing.assert_close(c, a[:1], rtol=1e-5, atol=1e-6)  # no batch cross-talk


def test_landmark_branch_is_frozen_through_train_and_backward(landmark_weights):
    model = S.create_model("s2d_tiny", 7)
    S.load_landmark_weights(model, landmark_weights)
    before = {k: v.clone() for k, v in model.landmark.state_dict().items()}
    model.train()
    assert model.training and not model.landmark.training
    logits, feat = model(torch.randn(1, 3, 16, 224, 224), return_feature=True)
    (logits.sum() + feat.sum()).backward()
    assert all(p.grad is None for p in model.landmark.parameters())
    assert all(not p.requires_grad for p in model.landmark.parameters())
    after = model.landmark.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert model.head.fc_cls.weight.grad is not None and model.prompt_blocks[1].TMA.norm.weight.grad is not None


def test_landmark_weights_load_and_feed_the_model(landmark_weights, tmp_path):
    model = S.create_model("s2d_tiny", 7).eval()
    S.load_landmark_weights(model, landmark_weights)
    ref = S.MobileFaceNet().eval()
    ref.load_state_dict(torch.load(landmark_weights, weights_only=True)["state_dict"])
    x = torch.randn(2, 3, 224, 224)
    small = torch.nn.functional.interpolate(x, size=(112, 112), mode="bilinear", align_corners=True)
    with torch.no_grad():
        torch.testing.assert_close(model.landmark_features(x), ref(small)[1])
    # round trip in the authors' {"state_dict": ...} format
    out = S.save_landmark_weights(model, tmp_path / "lm.pth.tar")
    other = S.create_model("s2d_tiny", 7)
    S.load_landmark_weights(other, out)
    assert all(torch.equal(a, b) for a, b in zip(other.landmark.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(CheckpointError, match="MobileFaceNet"):
        S.load_landmark_weights(other, _save(tmp_path / "bad.pth.tar", {"state_dict": {"x": torch.zeros(1)}}))


def _save(path, obj):
    torch.save(obj, path)
    return path


def _authors_finetuned(model, path):
    """A file in the authors' fine-tuned layout (pickled argparse.Namespace included)."""
    args = argparse.Namespace(model="s2d_base_patch16_224", nb_classes=model.num_classes, lr=1e-3,
                              data_set="DFEW", input_size=224, num_frames=16)
    return _save(path, {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 99,
                        "scaler": {"scale": 65536.0}, "args": args})


def test_authors_finetuned_file_loads_with_allow_list(tiny, clip, tmp_path):
    path = _authors_finetuned(tiny, tmp_path / "checkpoint-best.pth")
    fresh = S.create_model("s2d_tiny", 7).eval()
    fresh.landmark.load_state_dict(tiny.landmark.state_dict())
    report = S.load_checkpoint(fresh, path)
    assert report.format == "video" and report.missing == [] and report.unexpected == []
    with torch.no_grad():
        assert torch.equal(fresh(clip), tiny(clip))


def test_module_prefix_and_our_format_round_trip(tiny, clip, tmp_path):
    sd = {"module." + k: v for k, v in tiny.state_dict().items()}
    fresh = S.create_model("s2d_tiny", 7).eval()
    fresh.landmark.load_state_dict(tiny.landmark.state_dict())
    S.load_checkpoint(fresh, _save(tmp_path / "ddp.pth", {"model": sd}))
    with torch.no_grad():
        assert torch.equal(fresh(clip), tiny(clip))
    ours = S.save_checkpoint(tiny, tmp_path / "ours.pth", config="s2d_tiny", labels="dfew")
    assert not list(tmp_path.glob(".*tmp*"))
    again = S.create_model("s2d_tiny", 7)
    report = S.load_checkpoint(again, ours)
    assert report.meta["labels"] == "dfew" and report.meta["config"] == "s2d_tiny"
    assert S.infer_config(torch.load(ours, weights_only=True)["model"]) == "s2d_tiny"


def test_untrusted_pickles_are_refused_unless_trusted(tiny, tmp_path):
    path = _save(tmp_path / "odd.pth", {"model": tiny.state_dict(), "when": datetime.datetime(2024, 1, 1)})
    with pytest.raises(CheckpointError, match="datetime.datetime.*was not loaded.*--trust .Python: trust=True"):
        S.load_checkpoint(S.create_model("s2d_tiny", 7), path)
    S.load_checkpoint(S.create_model("s2d_tiny", 7), path, trust=True)


class _Code:
    """Pickles as a call of os.getpid (harmless, but code: torch blocks the os module outright)."""

    def __reduce__(self):
        import os

        return os.getpid, ()


def test_a_code_payload_is_named_and_not_run(tiny, tmp_path):
    path = _save(tmp_path / "code.pth", {"model": tiny.state_dict(), "x": _Code()})
    with pytest.raises(CheckpointError) as err:
        S.load_checkpoint(S.create_model("s2d_tiny", 7), path)
    msg = str(err.value)
    assert "code.pth: the file holds pickled Python code (posix.getpid)" in msg and "not loaded" in msg
    assert "weights_only" not in msg and "\n" not in msg
    S.load_checkpoint(S.create_model("s2d_tiny", 7), path, trust=True)


def test_wrong_shapes_and_garbage_give_clear_errors(tiny, tmp_path):
    path = _authors_finetuned(tiny, tmp_path / "c7.pth")
    with pytest.raises(CheckpointError, match=r"c7\.pth.*head\.fc_cls\.weight: file \(7, 64\) vs model \(11, 64\)"):
        S.load_checkpoint(S.create_model("s2d_tiny", 11), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable PyTorch checkpoint"):
        S.load_checkpoint(S.create_model("s2d_tiny", 7), garbage)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        S.load_checkpoint(S.create_model("s2d_tiny", 7), tmp_path / "nowhere.pth")
    sd = dict(tiny.state_dict())
    del sd["ln_post.weight"]
    with pytest.raises(CheckpointError, match="missing.*ln_post.weight"):
        S.load_checkpoint(S.create_model("s2d_tiny", 7), _save(tmp_path / "partial.pth", {"model": sd}))


def test_authors_image_checkpoint_initialises_the_video_model(tmp_path, capsys):
    image = S.create_image_model("s2d_tiny", 7)
    sd = image.state_dict()
    assert "norm.weight" in sd and "head.weight" in sd and "temporal_embedding" not in sd
    sd.update({f"landmark.{k}": v for k, v in image.landmark.state_dict().items()})  # embedded landmark net
    path = _save(tmp_path / "pretrain-AffectNet-7.pth", {"model_state_dict": sd})
    video = S.create_model("s2d_tiny", 7)
    report = S.load_checkpoint(video, path)
    printed = capsys.readouterr().out
    assert "missing_keys" in printed and "unexpected_keys" in printed
    tma = {k for k in video.state_dict() if ".TMA." in k}
    assert set(report.missing) == tma | {"temporal_embedding", "head.fc_cls.weight", "head.fc_cls.bias"}
    assert set(report.unexpected) == {"head.weight", "head.bias"}
    torch.testing.assert_close(video.ln_post.weight, image.norm.weight)
    torch.testing.assert_close(video.blocks[1].mlp.fc2.weight, image.blocks[1].mlp.fc2.weight)
    # and the same file loads strictly into the image model
    again = S.create_image_model("s2d_tiny", 7)
    assert S.load_checkpoint(again, path).missing == []


def test_image_model_forward_and_round_trip(tmp_path):
    model = S.create_image_model("s2d_tiny", 8).eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (3, 8)
    path = S.save_checkpoint(model, tmp_path / "static.pth", config="s2d_tiny", labels="affectnet8")
    assert "model_state_dict" in torch.load(path, weights_only=True)
    again = S.create_image_model("s2d_tiny", 8).eval()
    again.landmark.load_state_dict(model.landmark.state_dict())
    S.load_checkpoint(again, path)
    with torch.no_grad():
        assert torch.equal(again(x), y)


def test_tiny_compiles_without_graph_breaks(tiny):
    compiled = torch.compile(tiny, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny(x))


def test_label_sets_follow_the_spec_order():
    assert S.labels("dfew")[:3] == ("Happy", "Sad", "Neutral") and len(S.labels("mafw")) == 11
    assert S.labels("ferv39k")[0] == "Angry" and S.labels("rafdb")[0] == "Surprise"
    assert S.labels("affectnet8")[-1] == "Contempt" and len(S.labels("affectnet7")) == 7
    with pytest.raises(KeyError, match="unknown label set"):
        S.labels("ckplus")


def test_load_model_builds_what_the_file_describes(tiny, clip, tmp_path, landmark_weights):
    model, report = S.load_model(_authors_finetuned(tiny, tmp_path / "authors.pth"))
    assert isinstance(model, S.S2DVideo) and not model.training
    assert report.meta["config"] == "s2d_tiny" and model.num_classes == 7 and model.num_frames == 16  # from the tensors
    model.landmark.load_state_dict(tiny.landmark.state_dict())
    with torch.no_grad():
        assert torch.equal(model(clip), tiny(clip))
    image = S.save_checkpoint(S.create_image_model("s2d_tiny", 7), tmp_path / "image.pth")
    with pytest.raises(CheckpointError, match="image-model checkpoint, but a video model is needed"):
        S.load_model(image, kind="video")
    model, report = S.load_model(image, landmark_weights, kind="image")  # the landmark branch loads too
    assert isinstance(model, S.S2DImage) and report.format == "image"
    ref = S.MobileFaceNet()
    S.load_landmark_weights(ref, landmark_weights)
    assert all(torch.equal(a, b) for a, b in zip(model.landmark.state_dict().values(), ref.state_dict().values()))
    sd = dict(tiny.state_dict())
    del sd["temporal_embedding"]
    with pytest.raises(CheckpointError, match="not an S2D video checkpoint .no temporal_embedding"):
        S.load_model(_save(tmp_path / "partial.pth", {"model": sd}))
