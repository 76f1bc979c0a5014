"""Self-distillation loss with emotion anchors (S2D, ``../shared/S2D_REFERENCE.md`` section 3).

Per class c, a FIFO queue of the last ``size`` (16) pooled features [size, D] and the matching softmax
outputs [size, C], filled with training samples of ground-truth class c. For a sample feature f:
cosine similarity to every queued feature of every class, the top K (2) per class, and the target
``sum(sim * prob) / sum(sim)`` over those C*K neighbours. The loss is BCE-with-logits(logits, target),
weighted by an epoch schedule (0 before epoch 30, then 0.01, 0.1 from 50, 0.5 from 60, 1.0 from 80).

Differences from the authors' ``SDL.py`` (documented choices, not accidents): their queues start as
uniform noise (``torch.rand``) and count as neighbours from the first step; here only filled slots count,
so a class with an empty queue contributes nothing. Similarities below 0 get weight 0 (a weighted average
needs non-negative weights; the authors divide by the raw sum, which can be ~0 or negative); if all
weights are 0 the target is the plain mean of the neighbours' probabilities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SCHEDULE = ((30, 0.01), (50, 0.1), (60, 0.5), (80, 1.0))  # (from epoch, weight); 0 before the first


def sdl_weight(epoch: int, schedule=DEFAULT_SCHEDULE) -> float:
    """The loss weight at ``epoch`` (0-based): the weight of the last threshold reached, 0 before the first."""
    weight = 0.0
    for start, w in sorted(schedule):
        if epoch >= start:
            weight = float(w)
    return weight


class EmotionAnchors:
    """Per-class feature / softmax queues and the similarity-weighted soft targets."""

    def __init__(self, num_classes: int, dim: int, k: int = 2, size: int = 16, device="cpu"):
        self.num_classes, self.dim, self.k, self.size = num_classes, dim, k, size
        self.features = torch.zeros(num_classes, size, dim, device=device)  # [C, S, D]
        self.probs = torch.zeros(num_classes, size, num_classes, device=device)  # [C, S, C]
        self.filled = torch.zeros(num_classes, dtype=torch.long, device=device)  # valid slots per class (the newest)

    @torch.no_grad()
    def update(self, features: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Push each sample (feature [B, D], softmax [B, C]) onto its ground-truth class's queue."""
        features, probs = features.detach().float(), probs.detach().float()
        for f, p, y in zip(features, probs, labels.tolist()):
            self.features[y] = torch.cat([self.features[y, 1:], f[None]])
            self.probs[y] = torch.cat([self.probs[y, 1:], p[None]])
            self.filled[y] = min(self.size, int(self.filled[y]) + 1)

    @property
    def ready(self) -> bool:
        return bool((self.filled > 0).any())

    @torch.no_grad()
    def targets(self, features: torch.Tensor) -> torch.Tensor:
        """Soft targets [B, C] for pooled features [B, D] (queues must hold at least one entry)."""
        f = F.normalize(features.detach().float(), dim=-1)  # [B, D]
        q = F.normalize(self.features, dim=-1)  # [C, S, D]
        sim = torch.einsum("bd,csd->bcs", f, q)  # [B, C, S]
        valid = torch.arange(self.size, device=sim.device)[None] >= (self.size - self.filled)[:, None]  # [C, S]
        sim = sim.masked_fill(~valid[None], float("-inf"))
        k = min(self.k, self.size)
        top, idx = sim.topk(k, dim=-1)  # [B, C, k]
        ok = torch.isfinite(top)  # neighbours that exist
        w = torch.where(ok, top.clamp(min=0), torch.zeros_like(top))  # [B, C, k]
        # stored softmax of the chosen neighbours: [B, C, k, C]
        p = self.probs[torch.arange(self.num_classes, device=sim.device)[None, :, None], idx]
        total = w.sum(dim=(1, 2))  # [B]
        weighted = (w[..., None] * p).sum(dim=(1, 2)) / total.clamp(min=1e-12)[:, None]
        plain = (ok[..., None] * p).sum(dim=(1, 2)) / ok.sum(dim=(1, 2)).clamp(min=1)[:, None]
        return torch.where((total > 1e-12)[:, None], weighted, plain)  # [B, C]

    def loss(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits between logits [B, C] and the anchors' soft targets (unweighted)."""
        return F.binary_cross_entropy_with_logits(logits.float(), self.targets(features))

    def state_dict(self) -> dict:
        return {"features": self.features.cpu(), "probs": self.probs.cpu(), "filled": self.filled.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.features.device
        self.features = state["features"].to(device)
        self.probs = state["probs"].to(device)
        self.filled = state["filled"].to(device)
