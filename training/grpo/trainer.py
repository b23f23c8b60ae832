"""The GRPO loop of one rank, NeMo RL's `grpo_train` in small: generate, reward, advantages, logprobs,
train, validate, checkpoint, log. Does I/O (stdout, metrics, checkpoints) on rank 0 only; every rank
runs the same computation so that tensor-parallel collectives line up.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.grpo import algo, checkpoint, parallel
from training.grpo.checks import model_shape
from training.grpo.faults import Faults
from training.grpo.logger import RunLogger
from training.grpo.memory import peak_mib
from training.grpo.model import Policy, shard_dims
from training.grpo.task import PAD, PROMPT_LEN, TOOLS, Vocab, all_examples, grammar, reward, split


def parse_duration_s(text: str | None) -> float | None:
    """NeMo RL's `checkpoint_must_save_by` "DD:HH:MM:SS" (fewer fields allowed) -> seconds."""
    if not text:
        return None
    secs = 0.0
    for part, unit in zip(reversed(str(text).split(":")), (1, 60, 3600, 86400)):
        secs += float(part) * unit
    return secs


class Trainer:
    def __init__(self, cfg: dict, rank: int, world: int, device: torch.device, log: RunLogger, faults: Faults):
        self.cfg, self.rank, self.world, self.device, self.log, self.faults = cfg, rank, world, device, log, faults
        self.grpo, self.policy_cfg, self.loss_cfg = cfg["grpo"], cfg["policy"], cfg["loss_fn"]
        self.ckpt_cfg = cfg["checkpointing"]
        self.ckpt_dir = Path(self.ckpt_cfg["checkpoint_dir"])
        self.vocab = Vocab()
        self.pad_id = self.vocab.index[PAD]
        self.train_set, self.val_set = split(all_examples(), float(cfg.get("env", {}).get("workplace", {}).get(
            "val_fraction", 0.2)))
        self.reward_mode = str(cfg.get("env", {}).get("workplace", {}).get("reward", "binary"))
        self.prompts, self.gens = int(self.grpo["num_prompts_per_step"]), int(self.grpo["num_generations_per_prompt"])
        self.steps_per_epoch = len(self.train_set) // self.prompts
        self.total_steps = min(self.steps_per_epoch * int(self.grpo["max_num_epochs"]), int(self.grpo["max_num_steps"]))
        self.seq_len = int(self.policy_cfg["max_total_sequence_length"])
        self.temperature = float(self.policy_cfg["generation"].get("temperature", 1.0))
        self.kl_coef = float(self.loss_cfg.get("reference_policy_kl_penalty", 0.0) or 0.0)
        self.bf16 = device.type == "cuda" and str(self.policy_cfg.get("precision", "float32")) in ("bfloat16", "bf16")
        self.step = 0
        self.started = time.monotonic()

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        seed = int(self.grpo.get("seed", 42))
        torch.manual_seed(seed)
        shape = model_shape(self.cfg)
        act_ckpt = bool(self.policy_cfg["dtensor_cfg"].get("activation_checkpointing", False))
        # Initialise the unsharded model (same seed -> same weights at any TP), then keep this rank's slice.
        # Built on the device itself: a large model initialises in seconds on a GPU, minutes on one CPU thread.
        with torch.device(self.device):
            full = Policy(dataclasses.replace(shape, tp=1), act_ckpt)
            self.policy = full if self.world == 1 else Policy(shape, act_ckpt)
        if self.world > 1:
            dims, own = shard_dims(self.policy), full.state_dict()
            self.policy.load_state_dict({k: parallel.shard_of(v, dims.get(k), self.rank, self.world)
                                         for k, v in own.items()})
            del full
        self.policy.to(self.device)
        self.dims = shard_dims(self.policy)
        self.reference = None
        if self.kl_coef > 0:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        opt = self.policy_cfg["optimizer"]
        kw = dict(opt.get("kwargs", {}))
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), **kw)
        self.table = algo.grammar_tables(grammar(self.vocab), len(self.vocab), self.device)
        self.tool_ids = torch.tensor([self.vocab.index[t.name] for t in TOOLS], device=self.device)
        latest = checkpoint.latest_checkpoint(self.ckpt_dir)
        if latest is not None:
            self._resume(latest)

    def _resume(self, step_dir: Path) -> None:
        info = checkpoint.load_training_info(step_dir)
        weights, opt = checkpoint.load_state(step_dir)
        self.policy.load_state_dict({k: parallel.shard_of(v, self.dims.get(k), self.rank, self.world).to(self.device)
                                     for k, v in weights.items()}, strict=False)
        if opt is not None and self.ckpt_cfg.get("save_optimizer", True):
            params = dict(self.policy.named_parameters())
            for name, st in opt.items():
                if name in params:
                    self.optimizer.state[params[name]] = {
                        k: (parallel.shard_of(v, self.dims.get(name), self.rank, self.world).to(self.device)
                            if k != "step" else v) for k, v in st.items()}
        self.step = int(info["total_steps"])
        self.log.print(f"Loaded checkpoint from {step_dir} (step {self.step})")

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.log.print("🚀 Running synchronous GRPO training")
        if self.step >= int(self.grpo["max_num_steps"]) or self.step >= self.total_steps:
            self.log.print("Max number of steps has been reached, stopping training early")
            return
        if self.step == 0 and self.grpo.get("val_at_start", False):
            self.log.print("🔍 Running initial validation...")
            acc, _ = self.validate(0)
        deadline = parse_duration_s(self.ckpt_cfg.get("checkpoint_must_save_by"))
        first = True
        while self.step < self.total_steps:
            self.step += 1
            if (self.step - 1) % self.steps_per_epoch == 0 or first:
                first = False
                epoch = (self.step - 1) // self.steps_per_epoch
                self.log.print(f"\n{'=' * 25} Epoch {epoch + 1}/{int(self.grpo['max_num_epochs'])} {'=' * 25}")
            timed_out = deadline is not None and time.monotonic() - self.started >= deadline
            self.train_step(timed_out)
            if timed_out:
                self.log.print("Timeout has been reached, stopping training early")
                return
        if self.step >= int(self.grpo["max_num_steps"]):
            self.log.print("Max number of steps has been reached, stopping training early")

    def _batch(self, step: int) -> list:
        """The prompts of global step `step` (1-based): epoch-wise shuffles, drop_last, like a dataloader."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        order = list(range(len(self.train_set)))
        random.Random(int(self.grpo.get("seed", 42)) * 7919 + epoch).shuffle(order)
        return [self.train_set[i] for i in order[index * self.prompts:(index + 1) * self.prompts]]

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def train_step(self, force_save: bool) -> None:
        step, timing, t0 = self.step, {}, time.monotonic()
        self.log.step_banner(step, self.total_steps)
        self.log.print("▶ Preparing batch...")
        examples = self._batch(step)
        prompts = torch.tensor([self.vocab.encode_prompt(e.text) for e in examples], device=self.device)
        prompts = prompts.repeat_interleave(self.gens, dim=0)
        self.log.print(f"▶ Generating responses for batch of size {prompts.shape[0]}...")
        t = time.monotonic()
        self.faults.at_step(step)
        gen = torch.Generator(device=self.device).manual_seed(int(self.grpo.get("seed", 42)) * 1_000_003 + step)
        self.policy.eval()
        with self._autocast():
            rollout = algo.generate(self.policy, prompts, self.table, self.tool_ids, self.temperature, gen, self.pad_id)
        timing["generation"] = time.monotonic() - t
        self.log.print("▶ Processing rewards...,")
        t = time.monotonic()
        responses = rollout.responses.tolist()
        rewards = torch.tensor([reward(examples[i // self.gens], self.vocab.decode(r), self.reward_mode)
                                for i, r in enumerate(responses)], device=self.device)
        timing["reward_calculation"] = time.monotonic() - t
        self.log.print("▶ Computing advantages...")
        adv = algo.leave_one_out_advantages(rewards, self.gens, bool(self.grpo.get("normalize_rewards", True)),
                                            bool(self.grpo.get("use_leave_one_out_baseline", True)))
        metrics = self._train(rollout, adv, timing)
        metrics["train/reward"] = float(rewards.mean())
        metrics["train/mean_gen_tokens_per_sample"] = float(rollout.response_mask.sum(1).mean())
        metrics["train/truncation_rate"] = 0.0
        self._after_train(step, metrics, timing, t0, force_save)

    def _after_train(self, step: int, metrics: dict, timing: dict, t0: float, force_save: bool) -> None:
        val_acc = None
        period = int(self.grpo.get("val_period", 0) or 0)
        last = step >= self.total_steps
        if (period > 0 and step % period == 0) or (last and self.grpo.get("val_at_end", False)):
            t = time.monotonic()
            val_acc, _ = self.validate(step)
            timing["validation"] = time.monotonic() - t
        save_period = int(self.ckpt_cfg.get("save_period", 0) or 0)
        if self.ckpt_cfg.get("enabled", True) and (last or force_save or (save_period and step % save_period == 0)):
            self.log.print(f"Saving checkpoint for step {step}...")
            t = time.monotonic()
            self.save(step, val_acc)
            timing["checkpointing"] = time.monotonic() - t
        timing["total_step_time"] = time.monotonic() - t0
        metrics["memory/peak_mib"] = parallel.all_max(peak_mib(self.device), self.world)
        self.log.training_results(metrics, timing)
        self.log.metrics(step, {**metrics, **{f"timing/train/{k}": v for k, v in timing.items()}})

    def _train(self, rollout: algo.Rollout, adv: torch.Tensor, timing: dict) -> dict:
        self.log.print("▶ Computing logprobs...")
        t = time.monotonic()
        tokens = algo.packed_tokens(rollout, self.seq_len, self.pad_id)
        lbs = int(self.policy_cfg["logprob_batch_size"])
        with self._autocast():
            old = algo.chunked_logprobs(self.policy, tokens, rollout.responses, rollout.allowed, PROMPT_LEN,
                                        self.temperature, lbs)
            ref = None if self.reference is None else algo.chunked_logprobs(
                self.reference, tokens, rollout.responses, rollout.allowed, PROMPT_LEN, self.temperature, lbs)
        timing["policy_and_reference_logprobs"] = time.monotonic() - t
        mask = rollout.response_mask
        diff = (old - rollout.gen_logprobs) * mask
        gen_kl = max(0.0, float(((torch.exp(diff) - diff - 1.0) * mask).sum() / mask.sum().clamp(min=1)))
        self.log.print("▶ Preparing for training...")
        self.log.print("▶ Training policy...")
        t = time.monotonic()
        self.policy.train()
        gbs, mbs = int(self.policy_cfg["train_global_batch_size"]), int(self.policy_cfg["train_micro_batch_size"])
        losses, norms = [], []
        for g0 in range(0, tokens.shape[0], gbs):
            self.optimizer.zero_grad(set_to_none=True)
            n_tok = mask[g0:g0 + gbs].sum().clamp(min=1.0)
            total = 0.0
            for m0 in range(g0, g0 + gbs, mbs):
                sl = slice(m0, m0 + mbs)
                total += self._micro_step(tokens[sl], rollout, sl, old, ref, adv, n_tok)
            norms.append(self._clip_grads(float(self.policy_cfg.get("max_grad_norm", 1.0) or 0.0)))
            self.optimizer.step()
            losses.append(total)
        timing["policy_training"] = time.monotonic() - t
        return {"train/loss": sum(losses) / len(losses), "train/grad_norm": sum(norms) / len(norms),
                "train/gen_kl_error": gen_kl, "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/num_optimizer_steps": len(losses)}

    def _micro_step(self, tokens, rollout, sl, old, ref, adv, n_tok) -> float:
        extra_mib = self.faults.extra_alloc_mib(tokens.shape[0])
        hold = torch.ones(extra_mib * 262144, device=self.device) if extra_mib else None   # 4 B floats
        with self._autocast():
            logp = algo.token_logprobs(self.policy, tokens, rollout.responses[sl], rollout.allowed[sl],
                                       PROMPT_LEN, self.temperature)
        loss, _ = algo.clipped_pg_loss(logp, old[sl], None if ref is None else ref[sl], adv[sl],
                                       rollout.response_mask[sl], float(self.loss_cfg["ratio_clip_min"]),
                                       float(self.loss_cfg["ratio_clip_max"]), self.kl_coef, n_tok)
        loss.backward()
        del hold
        return float(loss.detach())

    def _clip_grads(self, max_norm: float) -> float:
        """Global grad norm over TP ranks: sharded grads all-reduced, replicated ones counted once."""
        sharded = torch.zeros((), device=self.device, dtype=torch.float64)
        replicated = torch.zeros((), device=self.device, dtype=torch.float64)
        for name, p in self.policy.named_parameters():
            if p.grad is None:
                continue
            sq = p.grad.detach().double().pow(2).sum()
            if self.dims.get(name) is None:
                replicated += sq
            else:
                sharded += sq
        if self.world > 1:
            dist.all_reduce(sharded)
        norm = math.sqrt(float(sharded + replicated))
        if max_norm > 0 and norm > max_norm:
            for p in self.policy.parameters():
                if p.grad is not None:
                    p.grad.mul_(max_norm / (norm + 1e-6))
        return norm

    # ---- validation and checkpoints -------------------------------------------------------------
    def validate(self, step: int) -> tuple[float, float]:
        self.log.print(f"▶ Starting validation at step {step}...")
        t = time.monotonic()
        limit = self.grpo.get("max_val_samples")
        examples = self.val_set[:int(limit)] if limit else self.val_set
        bs = int(self.grpo.get("val_batch_size", 64) or 64)
        temp = float(self.policy_cfg["generation"].get("val_temperature", 0.0) or 0.0)
        self.policy.eval()
        correct, lengths = 0.0, 0.0
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            prompts = torch.tensor([self.vocab.encode_prompt(e.text) for e in chunk], device=self.device)
            gen = torch.Generator(device=self.device).manual_seed(int(self.grpo.get("seed", 42)) + step)
            with self._autocast():
                ro = algo.generate(self.policy, prompts, self.table, self.tool_ids, temp, gen, self.pad_id)
            for e, r in zip(chunk, ro.responses.tolist()):
                correct += reward(e, self.vocab.decode(r), "binary")
            lengths += float(ro.response_mask.sum())
        acc, avg_len = correct / max(len(examples), 1), lengths / max(len(examples), 1)
        self.log.validation_results(acc, avg_len, len(examples), time.monotonic() - t)
        self.log.metrics(step, {"validation/accuracy": acc, "validation/avg_length": avg_len})
        self.last_val = (step, acc)
        return acc, avg_len

    def save(self, step: int, val_acc: float | None) -> None:
        weights = {k: parallel.gather_full(v.detach(), self.dims.get(k), self.world).cpu()
                   for k, v in self.policy.state_dict().items()}
        opt_state = None
        if self.ckpt_cfg.get("save_optimizer", True):
            opt_state = {}
            for name, p in self.policy.named_parameters():
                st = self.optimizer.state.get(p)
                if st:
                    opt_state[name] = {k: (parallel.gather_full(v, self.dims.get(name), self.world).cpu()
                                           if k != "step" else v.cpu()) for k, v in st.items()}
        if self.rank != 0:
            return
        info: dict[str, Any] = {"consumed_samples": step * self.prompts, "current_step": step,
                                "current_epoch": (step - 1) // self.steps_per_epoch, "total_steps": step,
                                "total_valid_tokens": None, "val_reward": val_acc}
        metric = str(self.ckpt_cfg.get("metric_name", "val:accuracy"))
        if val_acc is not None and metric == "val:accuracy":
            info[metric] = val_acc
        checkpoint.save(self.ckpt_dir, step, info, self.cfg, weights, opt_state, self.faults.slow_save)
        for path in checkpoint.prune(self.ckpt_dir, metric, self.ckpt_cfg.get("keep_top_k"),
                                     bool(self.ckpt_cfg.get("higher_is_better", True))):
            self.log.print(f"Removing checkpoint {path} (step {path.name.split('_')[-1]})")

