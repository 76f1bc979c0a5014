"""jobs/augment.py: temporal windows, clip-consistent augmentation, model input; batch mixup in jobs/train.py."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from jobs.augment import (ClipAugment, apply_consistently, eval_windows, rand_augment, rrc_box, to_model_input,
                          train_window)
from jobs.train import apply_mixup, lr_schedule, param_groups


def test_train_window_is_consecutive_and_padded():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(train_window(5, 16, rng), [0, 1, 2, 3, 4] + [4] * 11)
    starts = set()
    for _ in range(200):
        w = train_window(40, 16, rng)
        assert len(w) == 16 and np.all(np.diff(w) == 1) and 0 <= w[0] and w[-1] <= 39
        starts.add(int(w[0]))
    assert min(starts) == 0 and max(starts) == 24  # every start 0..n-T is possible


def test_eval_windows_first_and_last():
    first, last = eval_windows(20, 16)
    np.testing.assert_array_equal(first, np.arange(16))
    np.testing.assert_array_equal(last, np.arange(4, 20))
    first, last = eval_windows(10, 16)
    np.testing.assert_array_equal(first, last)
    assert first[-1] == 9


def _face_clip(t: int = 16) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(32, 0).repeat(32, 1)  # 256 x 256 blocks
    return np.repeat(img[None], t, axis=0)  # [T, 256, 256, 3], identical frames


def test_clip_augment_shares_every_random_choice_across_frames():
    aug = ClipAugment(224)
    clip = _face_clip()
    outs = []
    for seed in range(6):
        out = aug(clip, np.random.default_rng(seed))
        assert out.shape == (16, 224, 224, 3) and out.dtype == np.uint8
        assert all(np.array_equal(out[0], f) for f in out[1:]), f"seed {seed}: frames differ"
        outs.append(out[0])
    assert len({o.tobytes() for o in outs}) == 6  # but every clip is augmented differently


def test_clip_augment_is_reproducible_and_leaves_global_rng_alone():
    aug = ClipAugment(224)
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    a = aug(_face_clip(4), np.random.default_rng(7))
    after = (random.random(), np.random.rand())
    assert before == after
    np.testing.assert_array_equal(a, aug(_face_clip(4), np.random.default_rng(7)))


def test_random_erasing_one_box_for_all_frames():
    aug = ClipAugment(224, randaug=None, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, erase_prob=1.0)
    rng = np.random.default_rng(3)
    clip = np.stack([np.full((224, 224, 3), 10 * i, np.uint8) for i in range(4)])  # different frames
    out = aug(clip, rng)
    changed = [np.any(o != c, axis=-1) for o, c in zip(out, clip)]
    assert changed[0].any() and all(np.array_equal(changed[0], m) for m in changed[1:])
    ys, xs = np.nonzero(changed[0])
    box = changed[0][ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert box.mean() > 0.95  # a rectangle
    area = box.size / 224 ** 2
    assert 0.015 < area < 0.34


def test_rand_augment_config_and_consistency():
    ra = rand_augment(224)
    assert ra.num_layers == 4 and len(ra.ops) == 15
    assert all(op.magnitude == 7 and op.magnitude_std == 0.5 for op in ra.ops)
    frames = np.stack([_face_clip(1)[0]] * 3)
    out = apply_consistently(ra, frames, seed=11)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_rrc_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = rrc_box(224, 224, rng)
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224
        assert 0.08 * 224 * 224 * 0.9 <= h * w <= 224 * 224


def test_to_model_input_layout_and_normalisation():
    clips = torch.zeros(2, 3, 4, 5, 3, dtype=torch.uint8)
    clips[..., 0] = 255
    x = to_model_input(clips)
    assert x.shape == (2, 3, 3, 4, 5)
    assert torch.allclose(x[:, 0], torch.tensor((1 - 0.485) / 0.229))
    assert torch.allclose(x[:, 1], torch.tensor(-0.456 / 0.224))


def test_cutmix_box_is_the_same_on_every_frame():
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, label_smoothing=0.1, num_classes=3)
    x = torch.zeros(2, 3, 4, 16, 16)
    x[1] = 1.0  # sample 0 all zeros, sample 1 all ones
    xm, target = apply_mixup(mixup, x, torch.tensor([0, 2]))
    assert xm.shape == x.shape and target.shape == (2, 3)
    pasted = xm[0, 0] > 0.5  # [T, H, W]: where sample 1 was pasted into sample 0
    assert pasted.any() and all(torch.equal(pasted[0], p) for p in pasted[1:])
    assert torch.allclose(target.sum(1), torch.ones(2))
    assert torch.equal(x[0], torch.zeros_like(x[0]))  # the input batch itself is not modified


def test_targets_and_loss_are_timms_smoothed_one_hot_and_soft_cross_entropy():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    t = mixup_target(torch.tensor([1, 0]), 4, smoothing=0.1)  # what a batch without mixup trains on
    assert torch.equal(t[0], torch.tensor([0.025, 0.925, 0.025, 0.025]))
    logits = torch.tensor([[0.0, 10.0, 0.0, 0.0]])
    loss = SoftTargetCrossEntropy()
    assert loss(logits, t[:1]) < loss(logits, t[1:])
    torch.testing.assert_close(loss(logits, t[1:]), -(t[1:] * logits.log_softmax(-1)).sum())


def _old_lr_at(step, total_steps, warmup_steps, peak, floor):  # the schedule before timm's scheduler
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("epochs, steps, warmup_epochs", [(10, 10, 1), (100, 7, 2), (3, 5, 0), (1, 3, 2), (4, 3, 0.5)])
def test_lr_schedule_is_warmup_then_cosine_to_the_floor(epochs, steps, warmup_epochs):
    peak, floor = 1e-3, 1e-6
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    cfg = dict(epochs=epochs, steps_per_epoch=steps, warmup_epochs=warmup_epochs, min_lr=floor)
    scheduler = lr_schedule(optimizer, cfg)
    total, warmup = epochs * steps, int(round(warmup_epochs * steps))
    for step in range(total + 1):
        scheduler.step_update(step)
        old = _old_lr_at(step, total, warmup, peak, floor)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(old, rel=1e-9, abs=1e-15)
    if warmup < total:  # ends on the floor, peaks right after the warm-up
        assert optimizer.param_groups[0]["lr"] == floor
        scheduler.step_update(warmup)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(peak, rel=1e-9)
    scheduler.step_update(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0 if warmup else peak, rel=1e-9)


def test_param_groups():
    import s2d_model as S

    model = S.create_model("s2d_tiny", 7)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "temporal_embedding" in no_decay_names and "head.fc_cls.bias" in no_decay_names
    assert any(n.startswith("ln_post.") for n in no_decay_names)  # norms
    assert all(model.get_parameter(names[id(p)]).ndim > 1 for p in decay["params"])
    assert "blocks.0.attn.qkv.weight" not in {names[id(p)] for p in decay["params"]}  # frozen in the video stage
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    trainable = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    image = S.create_image_model("s2d_tiny", 7)
    image.pos_embed.requires_grad_(True)  # fixed in training; here only to see that the name list excludes it
    decay, no_decay = param_groups(image, 0.05)
    names = {id(p): n for n, p in image.named_parameters()}
    assert {"pos_embed", "cls_token"} <= {names[id(p)] for p in no_decay["params"]}
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
