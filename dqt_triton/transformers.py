"""Float transformers written with plain torch modules (what `DQTModel.from_float` converts):
a small vision transformer for images as patch tokens, and a small decoder-only character
language model. Attention is written both ways the capture understands: explicitly
(`q @ k.transpose(-2, -1) * scale`, `softmax`, `@ v`) in the ViT, and with
`F.scaled_dot_product_attention(..., is_causal=True)` in the language model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        if self.causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2)
        return self.proj(out.reshape(out.shape[0], out.shape[1], self.heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """Images [C, H, W] cut into `patch` tokens (a strided Conv2d), learned position embeddings,
    `depth` blocks, a final LayerNorm, the mean over tokens and a linear classifier. Digits
    (1 x 8 x 8, patch 2): 16 tokens; MNIST-1D signals (1 x 1 x 40, patch (1, 4)): 10 tokens."""

    def __init__(self, in_channels: int = 1, image_size: int | tuple = 8, patch: int | tuple = 2, dim: int = 32,
                 depth: int = 2, heads: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        (h, w), (ph, pw) = nn.modules.utils._pair(image_size), nn.modules.utils._pair(patch)
        if h % ph or w % pw:
            raise ValueError(f"image size {(h, w)} must be a multiple of the patch {(ph, pw)}")
        self.patches = nn.Conv2d(in_channels, dim, (ph, pw), stride=(ph, pw))
        self.pos = nn.Parameter(torch.randn(1, (h // ph) * (w // pw), dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x)
        x = x.flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


class CharTransformer(nn.Module):
    """Decoder-only character model: byte ids [T] (uint8 codes), token and position embeddings,
    `depth` causal blocks, a final LayerNorm and next-token logits [vocab, T] (classes on axis 1, as
    `F.cross_entropy` takes them with targets [T])."""

    def __init__(self, vocab: int = 96, context: int = 32, dim: int = 48, depth: int = 2, heads: int = 3) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.pos
        return self.head(self.norm(self.blocks(x))).transpose(1, 2)


__all__ = ["Block", "TinyViT", "CharTransformer"]
