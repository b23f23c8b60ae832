"""Memory model and peak-memory readings of one rank ("device"). Reads rusage / CUDA stats only.

The start-up line `grpo-ops: memory model: static_mib=S per_sample_mib=A device=D tp=N base_mib=B` lets a
supervisor plan around OOMs: peak ~= B + S + train_micro_batch_size * A.
- base: memory the device already had in use before the model existed: CPU, this process's RSS
  (the torch runtime, ~300-400 MiB); CUDA, total - free right after CUDA init (the context, plus any
  other process on the GPU). Measured, not estimated.
- static: parameters + gradients + AdamW moments of this rank (fp32: 4+4+8 bytes a parameter),
  plus a frozen reference copy (4 bytes) when the KL penalty is on. Falls as ~1/tp.
- per sample: activations kept for backward for one training sample of `max_total_sequence_length`
  tokens: per layer the residual/norm inputs, q/k/v, attention scores and probabilities (heads/tp x L^2),
  MLP hidden (ffn/tp x L); with activation checkpointing each layer's input plus ~3.5 layers' worth
  (one layer recomputed in backward, with its gradient temporaries).
"""

from __future__ import annotations

import resource

import torch

from training.grpo.model import ModelShape, count_params

MIB = 1024 * 1024


def static_mib(shape: ModelShape, kl: bool) -> float:
    n = count_params(shape)
    return n * (16 + (4 if kl else 0)) / MIB


def per_sample_mib(shape: ModelShape, seq_len: int, act_ckpt: bool, bytes_per: int = 4) -> float:
    """Activation MiB per training sample. `bytes_per` 2 = bf16 autocast: linear activations in 2 bytes, but
    attention probabilities stay fp32 (the fp32 causal bias promotes the scores; softmax runs in fp32)
    plus a bf16 copy for the value matmul: 6 bytes per score instead of 8."""
    d, f, h, tp, L = shape.hidden_size, shape.ffn_size, shape.num_heads, shape.tp, seq_len
    linear = (5 * L * d + 4 * L * d / tp + 2 * L * f / tp) * bytes_per
    attention = (h / tp) * L * L * (8 if bytes_per >= 4 else 6)
    layer = linear + attention
    logits = 3 * L * shape.vocab_size * 4
    if act_ckpt:
        # Each layer's input is kept; backward recomputes one layer and its gradient temporaries (scores,
        # softmax grads) come on top: ~3.5 layers' worth, measured on CPU (6 layers, L=192: 12.5 MiB/sample).
        total = shape.num_layers * L * d * bytes_per + 3.5 * layer + logits
    else:
        total = shape.num_layers * layer + logits
    return total / MIB


def base_mib(device: torch.device) -> float:
    """Memory in use on the device before the model is built (see the module docstring)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return (total - free) / MIB
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / MIB


def model_line(shape: ModelShape, seq_len: int, act_ckpt: bool, kl: bool, device: torch.device,
               bf16: bool) -> str:
    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    act = per_sample_mib(shape, seq_len, act_ckpt, 2 if bf16 else 4)
    return (f"grpo-ops: memory model: static_mib={static_mib(shape, kl):.1f} per_sample_mib={act:.2f} "
            f"device={dev} tp={shape.tp} base_mib={base_mib(device):.0f}")


def peak_mib(device: torch.device) -> float:
    """CUDA: torch.cuda.max_memory_allocated; CPU: this process's ru_maxrss (both since start)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
