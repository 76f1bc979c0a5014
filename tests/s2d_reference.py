"""An independent, functional S2D video forward written from ../shared/S2D_REFERENCE.md.

It takes a plain state_dict (the authors' key layout) and shares no code with s2d_model.s2d: attention is
written out (softmax(q k^T / sqrt(d)) v), layer norms are F.layer_norm calls, and the token<->map moves are
explicit permutes, following the spec's steps 1-5 literally. Tests compare our model against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _linear(x, sd, prefix, bias=True):
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias") if bias else None)


def _attention(x, sd, prefix, heads, qkv_bias):
    b, n, d = x.shape
    qkv = _linear(x, sd, prefix + ".qkv", bias=qkv_bias).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, n, hd]
    attn = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
    out = attn.softmax(-1) @ v  # [b, heads, n, hd]
    return _linear(out.transpose(1, 2).reshape(b, n, d), sd, prefix + ".proj")


def _tok2map(t):  # [N, L, D] -> [N, D, 14, 14]
    n, length, d = t.shape
    return t.permute(0, 2, 1).contiguous().view(n, d, 14, 14)


def _map2tok(m):  # [N, D, 14, 14] -> [N, L, D]
    n, d = m.shape[:2]
    return m.contiguous().view(n, d, -1).permute(0, 2, 1)


def _conv1x1(x, sd, prefix):
    return F.conv2d(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _tma(z, sd, prefix, frames, adapter_heads):
    n, length, d = z.shape
    b = n // frames
    # (b t) n d -> (b n) t d
    zt = z.view(b, frames, length, d).permute(0, 2, 1, 3).reshape(b * length, frames, d)
    h = F.gelu(_linear(zt, sd, prefix + ".T_Adapter.D_fc1"))
    h = _attention(h, sd, prefix + ".T_Adapter.attn", adapter_heads, qkv_bias=False)
    h = _linear(h, sd, prefix + ".T_Adapter.D_fc2")
    h = h.view(b, length, frames, d).permute(0, 2, 1, 3).reshape(n, length, d)
    h = _ln(h, sd, prefix + ".norm", 1e-5)
    h = _linear(F.gelu(_linear(h, sd, prefix + ".S_Adapter.D_fc1")), sd, prefix + ".S_Adapter.D_fc2")
    return h


def _prompt_block(stacked, sd, i, frames, adapter_heads):
    prefix = f"prompt_blocks.{i}"
    c = stacked.shape[1] // 2
    x0, x1 = stacked[:, :c], stacked[:, c:]
    t = _tma(_map2tok(x0), sd, prefix + ".TMA", frames, adapter_heads)
    u = _conv1x1(x0, sd, prefix + ".conv0_0")
    v = _conv1x1(x1, sd, prefix + ".conv0_1")
    n, k, hh, ww = u.shape
    flat = u.view(n, k, hh * ww)
    fovea = (torch.softmax(flat * sd[prefix + ".fovea.smooth"], dim=-1) * flat).view(n, k, hh, ww)
    p = _conv1x1(fovea + v, sd, prefix + ".conv1x1")
    return p, t


def reference_forward(sd: dict, clip: torch.Tensor, landmark_conv4, *, depth: int, heads: int,
                      adapter_heads: int) -> torch.Tensor:
    """clip [B, 3, T, 224, 224] (normalised) -> logits [B, C] with dropout off."""
    b, _, t, h, w = clip.shape
    frames = clip.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    lm = landmark_conv4(F.interpolate(frames, size=(112, 112), mode="bilinear", align_corners=True))
    x = F.conv2d(frames, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)  # [N, 196, D]
    a = _map2tok(_conv1x1(lm, sd, "patch_embed_prompt.proj"))
    pn = lambda k, y: _ln(y, sd, f"prompt_norms.{k}", 1e-6)  # noqa: E731
    # step 2: layer-0 prompt before the position embedding
    p, tt = _prompt_block(torch.cat([_tok2map(pn(0, x)), _tok2map(pn(0, a))], 1), sd, 0, t, adapter_heads)
    a = _map2tok(p)
    x = x + tt + a
    # step 3
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd["pos_embed"]
    n, length, d = x.shape
    x = (x.view(b, t, length, d) + sd["temporal_embedding"].view(1, t, 1, d)).view(n, length, d)
    # step 4
    for i in range(depth):
        if i >= 1:
            hnorm = pn(i - 1, x)
            p, tt = _prompt_block(torch.cat([_tok2map(hnorm[:, 1:]), _tok2map(pn(0, a))], 1), sd, i, t,
                                  adapter_heads)
            a = _map2tok(p)
            x = torch.cat([x[:, :1], x[:, 1:] + tt + a], 1)
        blk = f"blocks.{i}"
        x = x + _attention(_ln(x, sd, blk + ".norm1", 1e-6), sd, blk + ".attn", heads, qkv_bias=True)
        y = _ln(x, sd, blk + ".norm2", 1e-6)
        x = x + _linear(F.gelu(_linear(y, sd, blk + ".mlp.fc1")), sd, blk + ".mlp.fc2")
    # step 5
    x = _ln(x, sd, "ln_post", 1e-6)
    pooled = x[:, 0].reshape(b, t, d).mean(1)
    return _linear(pooled, sd, "head.fc_cls")
