"""GRPO's pieces as tensor functions: grammar-constrained sampling, leave-one-out advantages, logprobs
in chunks of `logprob_batch_size`, and NeMo RL's clipped policy-gradient loss with an optional k3 KL
penalty to a reference policy. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.grpo.task import MAX_RESPONSE_LEN


@dataclass
class Rollout:
    """One step's generated batch (all tensors on the policy's device)."""
    prompts: torch.Tensor           # [B, P] token ids
    responses: torch.Tensor         # [B, R] token ids (<pad> after <eos>)
    response_mask: torch.Tensor     # [B, R] 1.0 for generated tokens (including <eos>)
    allowed: torch.Tensor           # [B, R, V] bool: what the grammar allowed at each position
    gen_logprobs: torch.Tensor      # [B, R] logprobs of the sampled tokens at generation time


def grammar_tables(allowed_ids: list[list[list[int]]], vocab_size: int, device) -> torch.Tensor:
    """[T, R, V] bool from task.grammar(): allowed[tool, position, token]."""
    table = torch.zeros(len(allowed_ids), MAX_RESPONSE_LEN, vocab_size, dtype=torch.bool)
    for t, rows in enumerate(allowed_ids):
        for r, ids in enumerate(rows):
            table[t, r, ids] = True
    return table.to(device)


@torch.no_grad()
def generate(policy, prompts: torch.Tensor, table: torch.Tensor, tool_ids: torch.Tensor,
             temperature: float, generator: torch.Generator | None, pad_id: int) -> Rollout:
    """Sample one tool call per prompt row under the grammar; temperature 0 means greedy."""
    b = prompts.shape[0]
    seq = prompts
    responses, allowed_all, logps = [], [], []
    tool_index = torch.zeros(b, dtype=torch.long, device=prompts.device)
    for r in range(MAX_RESPONSE_LEN):
        logits = policy(seq)[:, -1].float()
        allowed = table[tool_index, r]                                      # [B, V]
        masked = logits.masked_fill(~allowed, float("-inf"))
        if temperature > 0:
            logp = torch.log_softmax(masked / temperature, dim=-1)
            tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        else:
            logp = torch.log_softmax(masked, dim=-1)
            tok = masked.argmax(dim=-1)
        if r == 0:
            tool_index = (tool_ids[None, :] == tok[:, None]).float().argmax(dim=1)
        responses.append(tok)
        allowed_all.append(allowed)
        logps.append(logp.gather(1, tok[:, None]).squeeze(1))
        seq = torch.cat([seq, tok[:, None]], dim=1)
    responses_t = torch.stack(responses, 1)
    mask = (responses_t != pad_id).float()
    return Rollout(prompts, responses_t, mask, torch.stack(allowed_all, 1), torch.stack(logps, 1) * mask)


def leave_one_out_advantages(rewards: torch.Tensor, group: int, normalize: bool,
                             leave_one_out: bool = True) -> torch.Tensor:
    """NeMo RL's baseline per prompt: the mean reward of the *other* completions of the same prompt
    (or of all, without leave-one-out); divided by the group's std when `normalize`."""
    r = rewards.view(-1, group)
    if leave_one_out and group > 1:
        baseline = (r.sum(dim=1, keepdim=True) - r) / (group - 1)
    else:
        baseline = r.mean(dim=1, keepdim=True)
    adv = r - baseline
    if normalize and group > 1:
        adv = adv / (r.std(dim=1, keepdim=True) + 1e-6)
    return adv.reshape(-1)


def packed_tokens(rollout: Rollout, seq_len: int, pad_id: int) -> torch.Tensor:
    """prompt + response right-padded to `policy.max_total_sequence_length` (static shapes)."""
    seq = torch.cat([rollout.prompts, rollout.responses], dim=1)
    if seq.shape[1] > seq_len:
        raise ValueError(f"sequence of {seq.shape[1]} tokens exceeds policy.max_total_sequence_length={seq_len}")
    pad = torch.full((seq.shape[0], seq_len - seq.shape[1]), pad_id, dtype=seq.dtype, device=seq.device)
    return torch.cat([seq, pad], dim=1)


def token_logprobs(policy, tokens: torch.Tensor, responses: torch.Tensor, allowed: torch.Tensor,
                   prompt_len: int, temperature: float) -> torch.Tensor:
    """Logprobs [B, R] of the response tokens under the grammar-masked, temperature-scaled policy."""
    r = responses.shape[1]
    logits = policy(tokens)[:, prompt_len - 1:prompt_len - 1 + r].float()
    logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(2, responses[..., None]).squeeze(2)
    return torch.where(allowed.gather(2, responses[..., None]).squeeze(2), logp, torch.zeros_like(logp))


@torch.no_grad()
def chunked_logprobs(policy, tokens, responses, allowed, prompt_len, temperature, chunk: int) -> torch.Tensor:
    """`token_logprobs` over the batch in chunks of `policy.logprob_batch_size` rows."""
    parts = [token_logprobs(policy, tokens[i:i + chunk], responses[i:i + chunk], allowed[i:i + chunk],
                            prompt_len, temperature) for i in range(0, tokens.shape[0], chunk)]
    return torch.cat(parts, dim=0)


def clipped_pg_loss(logp, old_logp, ref_logp, adv, mask, clip_min: float, clip_max: float,
                    kl_coef: float, n_tokens: float) -> tuple[torch.Tensor, dict]:
    """NeMo RL ClippedPGLossFn: -min(r*A, clip(r, 1-eps_min, 1+eps_max)*A) per token plus
    kl_coef * k3(ref || policy); summed over tokens and divided by the global batch's token count."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    pg = -torch.min(ratio * a, ratio.clamp(1.0 - clip_min, 1.0 + clip_max) * a)
    kl = torch.zeros_like(pg)
    if kl_coef > 0 and ref_logp is not None:
        diff = ref_logp - logp
        kl = torch.exp(diff) - diff - 1.0
    loss = ((pg + kl_coef * kl) * mask).sum() / n_tokens
    stats = {"kl": float((kl * mask).sum() / n_tokens), "clip_frac": float(
        (((ratio < 1 - clip_min) | (ratio > 1 + clip_max)).float() * mask).sum() / n_tokens)}
    return loss, stats
