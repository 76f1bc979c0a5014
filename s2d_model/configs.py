"""The registry of named model configurations. Same code, other numbers."""
from __future__ import annotations

CONFIGS: dict[str, dict] = {
    # The authors' model: ViT-B/16, MCP prompts (hidden 8), TMA bottleneck 0.25 with 8 heads.
    "s2d_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                                 mlp_ratio=4.0, prompt_hidden=8, adapter_ratio=0.25, adapter_heads=8),
    # For tests and smoke runs: the same data path (224 input, 14x14 grid, real landmark branch), tiny trunk.
    "s2d_tiny": dict(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                     mlp_ratio=4.0, prompt_hidden=8, adapter_ratio=0.25, adapter_heads=2),
}


def get_config(name: str) -> dict:
    try:
        return dict(CONFIGS[name])
    except KeyError:
        raise KeyError(f"unknown model configuration '{name}': choose one of {', '.join(CONFIGS)}") from None
