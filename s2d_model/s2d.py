"""S2D: "From Static to Dynamic" (Chen et al., IEEE TAFFC 2024), the image and the video model.

A ViT (timm blocks) whose patch tokens receive, before every block, a prompt computed from the tokens
and from a frozen MobileFaceNet's conv_4 landmark features (Multi-View Complementary Prompters, MCP);
the video model adds a Temporal-Modeling Adapter (TMA) to every prompt block and a temporal embedding,
runs each of the T frames through the ViT and averages the per-frame CLS tokens.

Parameter names reproduce the authors' checkpoints (github.com/MSA-LMC/S2D, weights on the Hugging Face
repo cyinen/S2D), so their files load unchanged; ``../shared/S2D_REFERENCE.md`` is the exact spec.
The landmark network is ``model.landmark``: frozen, always in eval mode, and kept out of ``state_dict``
(it ships as its own ``{"state_dict": ...}`` file; see ``checkpoints.load_landmark_weights``).

Shapes: B clips, T frames, N = B*T images, D embed dim, L = 196 patch tokens (14x14 grid), C classes.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import Attention, Block
from torch import nn

from .mobilefacenet import MobileFaceNet

__all__ = ["S2DBase", "S2DVideo", "S2DImage", "IMAGENET_MEAN", "IMAGENET_STD"]  # register_model adds the models

LANDMARK_SIZE = 112  # MobileFaceNet input; conv_4 gives a 14x14 map, matching the 14x14 ViT patch grid
LANDMARK_DIM = 128  # conv_4 channels

# Parameters trained in the dynamic (DFER) stage: a name containing any of these; the rest stays frozen.
TRAINABLE_IN_VIDEO = ("temporal_embedding", "ln_post", "head", "prompt", "Adapter")


def to_map(tokens: torch.Tensor) -> torch.Tensor:
    """[N, L, D] tokens -> [N, D, h, w] map (row-major, h = w = sqrt(L))."""
    n, length, d = tokens.shape
    side = int(length ** 0.5)
    return tokens.transpose(1, 2).reshape(n, d, side, side)


def to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """[N, D, h, w] map -> [N, h*w, D] tokens."""
    return fmap.flatten(2).transpose(1, 2)


class Fovea(nn.Module):
    """Per channel, a softmax over all positions of ``smooth * x``, multiplied back onto ``x``."""

    def __init__(self):
        super().__init__()
        self.smooth = nn.Parameter(torch.full((1,), 10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, c, h, w]
        n, c, h, w = x.shape
        x = x.reshape(n, c, h * w)
        return (F.softmax(x * self.smooth, dim=-1) * x).reshape(n, c, h, w)


class Adapter(nn.Module):
    """Bottleneck D -> D*ratio -> D with GELU, optionally self-attention in the bottleneck. No skip."""

    def __init__(self, dim: int, ratio: float = 0.25, num_heads: int = 8, attention: bool = True):
        super().__init__()
        hidden = int(dim * ratio)
        self.D_fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.attn = Attention(hidden, num_heads=num_heads, qkv_bias=False) if attention else nn.Identity()
        self.D_fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.D_fc2(self.attn(self.act(self.D_fc1(x))))


class TMA(nn.Module):
    """Temporal-Modeling Adapter: attention over time per patch position, LayerNorm, spatial bottleneck."""

    def __init__(self, dim: int, num_frames: int, ratio: float = 0.25, num_heads: int = 8):
        super().__init__()
        self.num_frames = num_frames
        self.T_Adapter = Adapter(dim, ratio, num_heads, attention=True)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5, as the authors' code (not the ViT's 1e-6)
        self.S_Adapter = Adapter(dim, ratio, attention=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [N=B*T, L, D]
        n, length, d = z.shape
        t = self.num_frames
        z = z.reshape(n // t, t, length, d).transpose(1, 2).reshape(-1, t, d)  # [(B L), T, D]
        z = self.T_Adapter(z)
        z = z.reshape(n // t, length, t, d).transpose(1, 2).reshape(n, length, d)  # [N, L, D]
        return self.S_Adapter(self.norm(z))


class PromptBlock(nn.Module):
    """MCP prompt block on [N, 2D, h, w] (the ViT view and the landmark view stacked on channels).

    Returns the prompt ``p`` [N, D, h, w] and the temporal term ``t`` [N, L, D] (None in the image model).
    """

    def __init__(self, dim: int, hidden: int = 8, num_frames: int | None = None, ratio: float = 0.25,
                 adapter_heads: int = 8):
        super().__init__()
        self.conv0_0 = nn.Conv2d(dim, hidden, 1)
        self.conv0_1 = nn.Conv2d(dim, hidden, 1)
        self.conv1x1 = nn.Conv2d(hidden, dim, 1)
        self.fovea = Fovea()
        self.TMA = TMA(dim, num_frames, ratio, adapter_heads) if num_frames else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0, x1 = x.chunk(2, dim=1)  # [N, D, h, w] each
        t = self.TMA(to_tokens(x0)) if self.TMA is not None else None
        p = self.conv1x1(self.fovea(self.conv0_0(x0)) + self.conv0_1(x1))
        return p, t


class PromptPatchEmbed(nn.Module):
    """1x1 conv of the landmark map: [N, 128, 14, 14] -> [N, 196, D]."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_tokens(self.proj(x))


class S2DBase(nn.Module):
    """The shared trunk: ViT + MCP prompts (+ TMA when ``num_frames`` is set) + frozen landmark branch."""

    def __init__(self, num_classes: int, num_frames: int | None, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 prompt_hidden: int = 8, adapter_ratio: float = 0.25, adapter_heads: int = 8,
                 head_dropout: float = 0.5):
        super().__init__()
        if img_size // patch_size != 14:
            raise ValueError(f"the patch grid must be 14x14 to meet the 14x14 landmark map; got "
                             f"img_size {img_size} / patch {patch_size}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.img_size = img_size
        self.embed_dim = embed_dim

        self.landmark = MobileFaceNet((LANDMARK_SIZE, LANDMARK_SIZE), 136)
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.patch_embed_prompt = PromptPatchEmbed(LANDMARK_DIM, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = self.patch_embed.num_patches + 1
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim), requires_grad=False)  # loaded
        self.prompt_blocks = nn.Sequential(*[
            PromptBlock(embed_dim, prompt_hidden, num_frames, adapter_ratio, adapter_heads) for _ in range(depth)])
        self.prompt_norms = nn.Sequential(*[norm_layer(embed_dim) for _ in range(depth)])
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.head_drop = nn.Dropout(head_dropout)
        self._init_weights()
        self._freeze_landmark()

    # -- initialisation and the frozen landmark branch ---------------------------------------------
    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, MobileFaceNet):
                continue
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.prompt_blocks:
            for conv in (block.conv0_0, block.conv0_1, block.conv1x1):
                nn.init.xavier_uniform_(conv.weight)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    def _freeze_landmark(self):
        for p in self.landmark.parameters():
            p.requires_grad_(False)
        self.landmark.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.landmark.eval()  # BatchNorm must keep its running statistics
        return self

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The authors' layout: everything but the landmark network."""
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in [k for k in sd if k.startswith(prefix + "landmark.")]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads the authors' layout; landmark keys, if present, are ignored (use load_landmark_weights)."""
        sd = {k: v for k, v in state_dict.items() if not k.startswith("landmark.")}
        result = super().load_state_dict(sd, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("landmark.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"state_dict does not match {type(self).__name__}: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
        return type(result)(missing, result.unexpected_keys)

    # -- forward -----------------------------------------------------------------------------------
    @torch.no_grad()
    def landmark_features(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised [N, 3, H, W] -> MobileFaceNet conv_4 [N, 128, 14, 14] (frozen branch)."""
        small = F.interpolate(images, size=(LANDMARK_SIZE, LANDMARK_SIZE), mode="bilinear", align_corners=True)
        return self.landmark.forward_conv4(small)

    def _prompt(self, i: int, view: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt block i on the ViT view [N, L, D] and the landmark view a [N, L, D] -> (new a, t)."""
        stacked = torch.cat([to_map(view), to_map(self.prompt_norms[0](a))], dim=1)  # [N, 2D, 14, 14]
        p, t = self.prompt_blocks[i](stacked)
        return to_tokens(p), t

    def forward_tokens(self, images: torch.Tensor, landmark: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3, H, W] (N = B*T, frames of a clip consecutive) -> normalised tokens [N, 1+L, D]. ``landmark``:
        ``landmark_features(images)`` if the caller has them already (a frame shared by overlapping clips)."""
        lm = self.landmark_features(images) if landmark is None else landmark  # [N, 128, 14, 14]
        x = self.patch_embed(images)  # [N, L, D]
        a = self.patch_embed_prompt(lm)  # [N, L, D]
        a, t = self._prompt(0, self.prompt_norms[0](x), a)
        x = x + t + a if t is not None else x + a
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # [N, 1+L, D]
        x = self._add_temporal(x)
        for i, block in enumerate(self.blocks):
            if i >= 1:
                h = self.prompt_norms[i - 1](x)  # i - 1: the authors' indexing (prompt_norms[-1] is unused)
                a, t = self._prompt(i, h[:, 1:], a)
                patches = x[:, 1:] + t + a if t is not None else x[:, 1:] + a
                x = torch.cat([x[:, :1], patches], dim=1)
            x = block(x)
        return self.final_norm(x)

    def _add_temporal(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class S2DVideo(S2DBase):
    """The dynamic model: clips [B, 3, T, H, W] (ImageNet-normalised) -> logits [B, C]."""

    def __init__(self, num_classes: int = 7, num_frames: int = 16, **kwargs):
        super().__init__(num_classes, num_frames, **kwargs)
        d = self.embed_dim
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, d))
        self.ln_post = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Module()
        self.head.fc_cls = nn.Linear(d, num_classes)
        trunc_normal_(self.temporal_embedding, std=0.02)
        trunc_normal_(self.head.fc_cls.weight, std=0.02)
        nn.init.zeros_(self.head.fc_cls.bias)
        self.freeze_for_finetuning()

    def freeze_for_finetuning(self):
        """The authors' DFER rule: train names containing TRAINABLE_IN_VIDEO, freeze the rest."""
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith("landmark.") and any(k in name for k in TRAINABLE_IN_VIDEO))
        self.pos_embed.requires_grad_(False)

    def _add_temporal(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1+L, D], every token of frame t
        n, length, d = x.shape
        t = self.num_frames
        return (x.reshape(n // t, t, length, d) + self.temporal_embedding[:, :, None]).reshape(n, length, d)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(x)

    def forward_features(self, clip: torch.Tensor, landmark: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] -> pooled feature [B, D] (mean over frames of the CLS token; before dropout).
        ``landmark``: the frames' landmark features [B*T, 128, 14, 14], if computed already."""
        if clip.ndim != 5:
            raise ValueError(f"expected a clip [B, 3, T, H, W], got shape {tuple(clip.shape)}")
        b, c, t, h, w = clip.shape
        if t != self.num_frames:
            raise ValueError(f"this model takes clips of exactly {self.num_frames} frames, got {t} "
                             f"(shape {tuple(clip.shape)})")
        if (h, w) != (self.img_size, self.img_size) or c != 3:
            raise ValueError(f"expected frames of 3x{self.img_size}x{self.img_size}, got {c}x{h}x{w}")
        images = clip.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, 3, H, W]
        x = self.forward_tokens(images, landmark)  # [B*T, 1+L, D]
        return x[:, 0].reshape(b, t, -1).mean(dim=1)  # [B, D]

    def forward_head(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled [B, D] -> (logits [B, C], feature after dropout [B, D]): the authors' I3D-style head."""
        feature = self.head_drop(feature)
        return self.head.fc_cls(feature), feature

    def forward(self, clip: torch.Tensor, return_feature: bool = False):
        logits, feature = self.forward_head(self.forward_features(clip))
        return (logits, feature) if return_feature else logits


class S2DImage(S2DBase):
    """The static model: images [B, 3, H, W] (ImageNet-normalised) -> logits [B, C]; no temporal parts.

    The final LayerNorm is ``norm`` and the classifier ``head``, as in the authors' image checkpoint.
    """

    def __init__(self, num_classes: int = 7, **kwargs):
        kwargs.setdefault("head_dropout", 0.0)
        super().__init__(num_classes, None, **kwargs)
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.head = nn.Linear(self.embed_dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> CLS feature [B, D]."""
        if images.ndim != 4 or images.shape[1:] != (3, self.img_size, self.img_size):
            raise ValueError(f"expected images [B, 3, {self.img_size}, {self.img_size}], got {tuple(images.shape)}")
        return self.forward_tokens(images)[:, 0]

    def forward(self, images: torch.Tensor, return_feature: bool = False):
        feature = self.head_drop(self.forward_features(images))
        logits = self.head(feature)
        return (logits, feature) if return_feature else logits


def _create_s2d(pretrained: bool = False, image: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                cache_dir=None, **kwargs) -> S2DBase:
    """S2DVideo (S2DImage with ``image=True``) of the given size. ``timm.create_model`` also passes its pretrained-cfg
    arguments: there are no hub weights (load a checkpoint with ``s2d_model.load_checkpoint``)."""
    if pretrained:
        raise ValueError("S2D has no timm pretrained weights: load a checkpoint (s2d_model.load_checkpoint)")
    return S2DImage(**kwargs) if image else S2DVideo(**kwargs)


@register_model
def s2d_base_patch16_224(pretrained: bool = False, **kwargs) -> S2DBase:
    """The authors' model: ViT-B/16, MCP prompts (hidden 8), TMA bottleneck 0.25 with 8 heads."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, adapter_heads=8)
    return _create_s2d(pretrained, **dict(model_args, **kwargs))


@register_model
def s2d_tiny_patch16_224(pretrained: bool = False, **kwargs) -> S2DBase:
    """For tests and smoke runs: the same data path (224 input, 14x14 grid, real landmark branch), tiny trunk."""
    model_args = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, adapter_heads=2)
    return _create_s2d(pretrained, **dict(model_args, **kwargs))
