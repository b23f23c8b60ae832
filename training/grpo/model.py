"""The policy: a small decoder-only transformer with Megatron-style tensor parallelism. No I/O.

With `tp` ranks (torch.distributed, gloo on CPU, NCCL on CUDA), the query/key/value and first MLP
projections are column-parallel (each rank holds `heads/tp` heads and `ffn/tp` hidden units), the
attention output and second MLP projections are row-parallel followed by an all-reduce; embeddings,
norms and the LM head are replicated. So parameters, gradients, optimizer state and the large
activations (attention scores, MLP hidden) per device all fall roughly as 1/tp.
Attention is written out (scores materialised) so activation memory grows with seq_len^2, as an
unfused implementation does; positions are sinusoidal, so a checkpoint fits any sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    tp: int = 1

    def check(self) -> list[str]:
        """Each shape/TP constraint broken, as one readable line."""
        bad = []
        for name, value in (("policy.model.num_heads", self.num_heads),
                            ("policy.model.hidden_size", self.hidden_size),
                            ("policy.model.ffn_size", self.ffn_size)):
            if value % self.tp:
                bad.append(f"{name} ({value}) must be divisible by policy.dtensor_cfg.tensor_parallel_size "
                           f"({self.tp})")
        if self.hidden_size % self.num_heads:
            bad.append(f"policy.model.hidden_size ({self.hidden_size}) must be divisible by "
                       f"policy.model.num_heads ({self.num_heads})")
        return bad


class _CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce of the gradient backward (Megatron's `f`)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward, identity backward (Megatron's `g`)."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class ColumnParallelLinear(nn.Linear):
    """Holds rows `[rank*out/tp, (rank+1)*out/tp)` of the full weight; output stays sharded."""
    shard_dim = 0

    def __init__(self, in_features: int, out_features: int, tp: int):
        super().__init__(in_features, out_features // tp)
        self.tp = tp

    def forward(self, x):
        return super().forward(_CopyToTP.apply(x) if self.tp > 1 else x)


class RowParallelLinear(nn.Module):
    """Holds columns `[rank*in/tp, ...)` of the full weight; partial outputs are all-reduced."""
    shard_dim = 1

    def __init__(self, in_features: int, out_features: int, tp: int):
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_features, in_features // tp))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.tp > 1:
            y = _ReduceFromTP.apply(y)
        return y + self.bias


class Block(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        d, tp = shape.hidden_size, shape.tp
        self.local_heads = shape.num_heads // tp
        self.head_dim = d // shape.num_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q = ColumnParallelLinear(d, d, tp)
        self.k = ColumnParallelLinear(d, d, tp)
        self.v = ColumnParallelLinear(d, d, tp)
        self.o = RowParallelLinear(d, d, tp)
        self.fc1 = ColumnParallelLinear(d, shape.ffn_size, tp)
        self.fc2 = RowParallelLinear(shape.ffn_size, d, tp)

    def _attention(self, x: torch.Tensor, causal_bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.local_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + causal_bias[:n, :n]
        out = scores.softmax(dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, n, self.local_heads * self.head_dim))

    def forward(self, x: torch.Tensor, causal_bias: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(self.ln1(x), causal_bias)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def sinusoid(n: int, d: int, device) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return pe


class Policy(nn.Module):
    """Decoder-only LM: tokens [B, N] -> logits [B, N, V] (full vocab on every rank)."""

    def __init__(self, shape: ModelShape, activation_checkpointing: bool = False):
        super().__init__()
        self.shape = shape
        self.activation_checkpointing = activation_checkpointing
        self.embed = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.num_layers))
        self.ln_f = nn.LayerNorm(shape.hidden_size)
        self.head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        self.head.weight = self.embed.weight        # tied: copying a prompt token is one attention hop

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.embed(tokens)
        x = x + sinusoid(n, self.shape.hidden_size, tokens.device).to(x.dtype)
        causal_bias = torch.full((n, n), float("-inf"), device=tokens.device).triu(1)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, causal_bias, use_reentrant=False)
            else:
                x = block(x, causal_bias)
        return self.head(self.ln_f(x)) * (1.0 / math.sqrt(self.shape.hidden_size))


def shard_dims(model: nn.Module) -> dict[str, int | None]:
    """Parameter name -> the dimension it is sharded on across TP ranks (None: replicated)."""
    out: dict[str, int | None] = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            sd = getattr(mod, "shard_dim", None)
            if isinstance(mod, RowParallelLinear) and p_name == "bias":
                sd = None
            out[full] = sd
    return out


def count_params(shape: ModelShape) -> int:
    """Parameters held by one TP rank."""
    d, f, v, tp = shape.hidden_size, shape.ffn_size, shape.vocab_size, shape.tp
    per_block = 4 * d + 3 * (d * d // tp + d // tp) + (d * d // tp + d) + (d * f // tp + f // tp) + (f // tp * d + d)
    return v * d + shape.num_layers * per_block + 2 * d
