"""A plain-PyTorch Vision Transformer whose parameter names match the DINO (and timm) checkpoints.

ExplainSeg, TokenCut and MaskCut all read a DINO ViT-S/16 (or /8): its CLS feature for classification, its
last-layer keys for the token graph, its last-layer attention for the fused feature map. Keeping the DINO key
layout (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`,
`norm`) lets a user's local `dino_deitsmall16_pretrain.pth` load with `weights_only=True`; nothing is downloaded.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segxai.errors import SegxaiError


@dataclass
class ViTFeatures:
    """What one forward pass exposes: the normalised CLS feature `(B, D)`, patch tokens `(B, h, w, D)`, the
    last block's keys `(B, h, w, D)` (heads concatenated, as TokenCut reads them) and attention
    `(B, heads, 1 + h*w, 1 + h*w)`, and the token grid `(h, w)`."""

    cls: torch.Tensor
    tokens: torch.Tensor
    keys: torch.Tensor
    attention: torch.Tensor
    grid: tuple[int, int]


class Attention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection (the DINO/timm layout)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the output, the attention `(B, heads, N, N)` and the keys `(B, N, D)`."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out), attention, k.transpose(1, 2).reshape(b, n, d)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, attention, keys = self.attn(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), attention, keys


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class VisionTransformer(nn.Module):
    """ViT with a CLS token; `forward` returns the normalised CLS feature `(B, D)`, `features` everything.

    Inputs of any size whose sides are multiples of the patch size work: the positional embedding (learnt for
    `img_size`) is interpolated bicubically to the token grid, as DINO does.
    """

    def __init__(
        self,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads or img_size % patch_size:
            raise SegxaiError(f"embed_dim {embed_dim} must divide by num_heads {num_heads} and img_size "
                              f"{img_size} by patch_size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch_size) ** 2, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).cls

    def features(self, x: torch.Tensor) -> ViTFeatures:
        """Run the network and return the CLS feature, patch tokens, last-layer keys and attention."""
        if x.ndim != 4 or x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
            raise SegxaiError(f"the ViT needs (B, C, H, W) inputs with H and W multiples of {self.patch_size}, "
                              f"got {tuple(x.shape)}")
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.positional_embedding(grid)
        for block in self.blocks:
            tokens, attention, keys = block(tokens)
        tokens = self.norm(tokens)
        b, d = x.shape[0], self.embed_dim
        return ViTFeatures(
            tokens[:, 0], tokens[:, 1:].reshape(b, *grid, d), keys[:, 1:].reshape(b, *grid, d), attention, grid
        )

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional embedding for a token grid, interpolated bicubically when it differs from training."""
        stored = self.pos_embed.shape[1] - 1
        side = math.isqrt(stored)
        if (side, side) == tuple(grid):
            return self.pos_embed
        patches = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)


def vit_small(patch_size: int = 16, **overrides) -> VisionTransformer:
    """DINO ViT-S/16 or ViT-S/8 (384 wide, 12 blocks, 6 heads); `overrides` make tiny test models."""
    settings = {"embed_dim": 384, "depth": 12, "num_heads": 6, **overrides}
    return VisionTransformer(patch_size=patch_size, **settings)


def load_backbone(path: str | Path, num_heads: int | None = None) -> VisionTransformer:
    """Build a ViT from a local checkpoint: DINO (`dino_deitsmall16_pretrain.pth`, or a training checkpoint's
    `teacher`/`student`), timm, or Hugging Face `ViTModel` weights (`pytorch_model.bin`). The architecture is
    read from the tensor shapes; heads default to width / 64 (ViT-S: 6, ViT-B: 12)."""
    from segxai.models.checkpoint import read_weights

    raw = read_weights(path, "a ViT checkpoint")
    state = dino_state_dict(raw)
    dim = state["cls_token"].shape[-1]
    net = VisionTransformer(
        patch_size=state["patch_embed.proj.weight"].shape[-1],
        embed_dim=dim,
        depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        num_heads=num_heads or max(1, dim // 64),
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        in_chans=state["patch_embed.proj.weight"].shape[1],
        img_size=math.isqrt(state["pos_embed"].shape[1] - 1) * state["patch_embed.proj.weight"].shape[-1],
    )
    load_weights(net, state)
    return net


def load_weights(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict strictly, with one clear error naming missing or unexpected keys."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise SegxaiError(f"the checkpoint does not fit the network: {str(error).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise SegxaiError(f"the checkpoint does not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")


def dino_state_dict(raw: object) -> dict[str, torch.Tensor]:
    """The backbone weights in DINO key names, from a DINO, timm or Hugging Face checkpoint.

    Wrappers (`teacher`, `student`, `model`, `state_dict`) and prefixes (`module.`, `backbone.`, `vit.`) are
    removed; classification heads (`head.*`, `classifier.*`, `pooler.*`) are dropped.
    """
    if isinstance(raw, dict):
        for key in ("teacher", "student", "model", "state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise SegxaiError("a ViT checkpoint must be a state dict of tensors")
    state = {re.sub(r"^(module\.|backbone\.|vit\.)+", "", k): v for k, v in raw.items()}
    if any(k.startswith("embeddings.") for k in state):
        state = _from_huggingface(state)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist.", "fc_norm.", "classifier.", "pooler."))}
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise SegxaiError("the checkpoint holds no ViT backbone (no cls_token / patch_embed.proj.weight)")
    return state


HF_BLOCK = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def _from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face `ViTModel` keys to DINO ones; separate q, k, v projections are fused into `qkv`."""
    out = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for key, value in state.items():
        match = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match and match.group(2) in HF_BLOCK:
            out[f"blocks.{match.group(1)}.{HF_BLOCK[match.group(2)]}.{match.group(3)}"] = value
        elif match and match.group(2) == "attention.attention.query":
            prefix = f"encoder.layer.{match.group(1)}.attention.attention"
            kind = match.group(3)
            out[f"blocks.{match.group(1)}.attn.qkv.{kind}"] = torch.cat(
                [state[f"{prefix}.{part}.{kind}"] for part in ("query", "key", "value")]
            )
    return out
