"""The supervisor: the one loop that launches the trainer, watches it, classifies, decides and records.

observe (log lines, exit, memory, GPU, clocks) -> classify (pure, ops.classify) -> decide (pure,
ops.remedies.next_plan) -> act (clean up, relaunch) -> record (ops/journal.jsonl, state.json, heartbeat).
Each state has one handler; `run()` just dispatches until a terminal state. Does I/O through the backend,
the journal and the clock passed in.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from ops.backends.base import Backend
from ops.budget import Budget, BudgetState
from ops.classify import Evidence, Failure, classify
from ops.errors import UserError
from ops.journal import Journal, Listener
from ops.records import (AttemptResult, RunOutcome, SupervisorOptions, attempt_env, checkpoint_step,
                         state_snapshot, trap_signals, write_heartbeat, write_state)
from ops.remedies import GiveUp, PastAttempt, PlanContext, next_plan, prefer_environment_remedy
from ops.runs import ResumeInfo
from ops.stacks import dump_stacks
from ops.state import State, check_transition
from ops.watch import (ATTEMPT_MARK, CUE_RX, AttemptWatch, EvidenceBuffer, HangClock, LogTailer,
                        matching_lines, parse_line)
from training.spec import Launch, Plan, RunPaths, TrainerSpec

log = structlog.get_logger()


class Supervisor:
    def __init__(self, spec: TrainerSpec, backend: Backend, paths: RunPaths, plan: Plan, budget: Budget, *,
                 run_id: str, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time,
                 listeners: Iterable[Listener] = (), gpu_reader: Any = None,
                 options: SupervisorOptions = SupervisorOptions(),
                 preflight: Callable[[], tuple[bool, list[str]]] | None = None,
                 resume: ResumeInfo | None = None, argv: Iterable[str] = (), extra_start: Mapping = ()):
        self.spec, self.backend, self.paths, self.plan, self.budget = spec, backend, paths, plan, budget
        self.run_id, self.clock, self.sleep, self.wall = run_id, clock, sleep, wall
        self.gpu_reader, self.opts, self.preflight, self.resume = gpu_reader, options, preflight, resume
        self.argv, self.extra_start = list(argv), dict(extra_start)
        paths.ops_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(paths.journal, run_id, listeners, clock, wall)
        self.state = State.PREFLIGHT
        self.attempt = resume.attempts if resume else 0
        self.history: list[PastAttempt] = list(resume.history) if resume else []
        self.failures: dict[str, int] = {}
        self.last: AttemptResult | None = None
        self.watch = AttemptWatch()
        self.started_wall, self.started_mono = wall(), clock()
        self.end_reason = ""
        self._cancel: int | None = None
        self._handle = None
        self.extra_env: dict[str, str] = {}
        self._warned: set[str] = set()
        self._buf: EvidenceBuffer | None = None
        self._tail: LogTailer | None = None
        self._attempt_t0, self._resume_step = 0.0, None
        self._gpu_ok = gpu_reader is not None

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunOutcome:
        restore = self._install_signal_handlers()
        try:
            self._begin()
            handlers = {State.PREFLIGHT: self._preflight, State.LAUNCHING: self._launch,
                        State.RUNNING: self._supervise, State.RECOVERING: self._recover}
            while not self.state.is_terminal:
                if self._cancel is not None and self.state is not State.RUNNING:
                    self._to(State.CANCELLED, f"supervisor got signal {signal.Signals(self._cancel).name}")
                    break
                handlers[self.state]()
            return self._finish()
        except Exception as err:
            # A supervisor bug: stop the trainer tree, say so, and leave the journal open for `--resume`.
            self.journal.append("warning", self.attempt, message=f"supervisor error: {type(err).__name__}: {err}; "
                                f"continue with `ops run --resume {self.run_id}`")
            if self._handle is not None:
                self._handle.terminate(self.opts.grace_s)
            raise
        finally:
            restore()
            self.journal.close()

    def _begin(self) -> None:
        common = dict(trainer=self.spec.name, budget=self.budget.describe(), supervisor_pid=os.getpid(),
                      options=self.opts.to_json(), **self.extra_start)
        if self.resume is None:
            self.journal.append("run_start", 0, plan=self.plan.to_json(), argv=self.argv,
                                total_steps=None, host=os.uname().nodename, **common)
            self._record_transition(None, State.PREFLIGHT, "run started")
            return
        # A new supervisor takes over a run whose supervisor died: the old trainer tree is stopped by the
        # cleanup before the next launch, and the trainer resumes from its last checkpoint.
        self.state = State[self.resume.state] if self.resume.state else State.PREFLIGHT
        self.journal.append("warning", self.attempt, message="supervisor resumed from the journal",
                            previous_state=self.state.value, **common)
        if self.state in (State.RUNNING, State.LAUNCHING):
            self._to(State.RECOVERING, "previous supervisor gone; its trainer tree will be stopped")
        if self.state is State.RECOVERING:
            self._to(State.LAUNCHING, "resume: relaunching the current plan from the last checkpoint")

    # ------------------------------------------------------------------ state handlers
    def _preflight(self) -> None:
        if self.preflight is not None:
            ok, lines = self.preflight()
            self.journal.append("eval" if ok else "warning", 0, what="preflight", ok=ok, lines=lines)
            if not ok:
                self._to(State.FAILED_PREFLIGHT, "preflight FAIL: " + "; ".join(lines)[:500])
                return
        try:
            problems = self.spec.constraint_violations(self.spec.resolve(self.plan), self.opts.gpus)
        except UserError as err:
            self._to(State.FAILED_CONFIG, f"config does not resolve: {err}")
            return
        if problems:   # a plan the trainer would refuse: say so before spending a launch on it
            self._to(State.FAILED_CONFIG, "config breaks the trainer's constraints: " + "; ".join(problems))
            return
        self._to(State.LAUNCHING, "preflight passed" if self.preflight else "preflight skipped")

    def _launch(self) -> None:
        reason = self.budget.exhausted(BudgetState(self.attempt, self.wall()))
        if reason:
            self._to(State.FAILED_BUDGET, f"retry budget exhausted: {reason}")
            return
        self._cleanup("before launch")
        self.attempt += 1
        launch = self._make_launch()
        resume_step = checkpoint_step(self.paths.checkpoint_dir)
        with open(self.paths.output_log, "a") as fh:
            fh.write(f"{ATTEMPT_MARK}{self.attempt} {self.journal_ts()} ###\n")
        self._tail = LogTailer(self.paths.output_log, self.paths.output_log.stat().st_size)
        t0 = self.clock()
        try:
            self._handle = self.backend.spawn(launch, self.paths.output_log)
        except UserError as err:
            # At the first launch this is the user's input (no image, bad address); at a relaunch the backend
            # went away under a run that had been starting fine (e.g. a lost Ray head): not a config error.
            if self.attempt == 1:
                self._to(State.FAILED_CONFIG, f"cannot start the trainer: {err}")
            else:
                self._to(State.FAILED_CRASH, f"cannot relaunch the trainer (attempt {self.attempt}): {err}")
            return
        self._last_mem = None
        self.watch = AttemptWatch(clock=HangClock(self.opts.hang_factor, self.opts.hang_floor_s,
                                                  self.opts.startup_timeout_s, started_at=t0))
        self._attempt_t0, self._resume_step = t0, resume_step
        self.journal.append("attempt_start", self.attempt, plan=self.plan.to_json(), argv=list(launch.argv),
                            env=attempt_env(launch.env, self.opts.base_env), handle=self._handle.describe(),
                            resume_from_step=resume_step, spawn_s=round(self.clock() - t0, 4))
        log.info("trainer started", run_id=self.run_id, attempt=self.attempt, **self._handle.describe())
        self._to(State.RUNNING, f"attempt {self.attempt} started")

    def _supervise(self) -> None:
        result = self._watch_attempt()
        self.last = result
        self.journal.append("attempt_end", self.attempt, **result.to_json(), plan=self.plan.to_json())
        if result.cancelled:
            self._to(State.CANCELLED, f"supervisor got signal {signal.Signals(self._cancel).name}")
        elif result.failure is None:
            self.journal.append("decision", self.attempt, action="done", reason="trainer exited 0",
                                remedy=None, new_plan=None, plan_diff={}, experiment_changed=False)
            self._to(State.SUCCEEDED, f"trainer finished (exit 0) at step {result.last_step}")
        else:
            f = result.failure
            self.failures[f.kind] = self.failures.get(f.kind, 0) + 1
            self.history.append(PastAttempt(self.plan, f.kind, result.last_step))
            self._to(State.RECOVERING, f"{f.kind}: {f.summary}")

    def _recover(self) -> None:
        f = self.last.failure if self.last and self.last.failure else Failure("crash", "supervisor lost", False)
        try:
            cfg = self.spec.resolve(self.plan)
            knobs = self.spec.knobs_for(cfg) if hasattr(self.spec, "knobs_for") else self.spec.knobs
            ctx = PlanContext(tuple(knobs), cfg, lambda c: self.spec.constraint_violations(c, self.opts.gpus),
                              self.watch.progress.memory_model)
            decision = next_plan(f, self.plan, self.history, ctx)
        except UserError as err:
            decision = GiveUp(f"cannot plan a relaunch: {err}", State.FAILED_CONFIG)
        env_diff = self._environment_remedy(f)
        decision = prefer_environment_remedy(decision, f, self.plan, env_diff)
        if isinstance(decision, GiveUp):
            self.journal.append("decision", self.attempt, action="give_up", reason=decision.reason, remedy=None,
                                new_plan=None, plan_diff={}, experiment_changed=False)
            log.warning("giving up", run_id=self.run_id, reason=decision.reason)
            self._to(decision.state, decision.reason)
            return
        self.extra_env.update({k: new for k, (_old, new) in env_diff.items()})
        self.journal.append("decision", self.attempt, action="relaunch", reason=decision.reason,
                            remedy=decision.remedy, new_plan=decision.plan.to_json(),
                            plan_diff={k: list(v) for k, v in decision.plan_diff.items()},
                            experiment_changed=decision.experiment_changed,
                            env_diff={k: list(v) for k, v in env_diff.items()})
        log.info("relaunching", run_id=self.run_id, remedy=decision.remedy, reason=decision.reason)
        self.plan = decision.plan
        self._to(State.LAUNCHING, decision.reason)

    def _environment_remedy(self, f: Failure) -> dict[str, tuple[str | None, str]]:
        """Environment changes the trainer spec asks for after `f` (only those that change something)."""
        fn = getattr(self.spec, "environment_remedy", None)
        if fn is None:
            return {}
        env = {**self.opts.base_env, **self.extra_env}
        try:
            wanted = fn(f, self.plan, env) or {}
        except Exception as err:
            log.warning("environment remedy failed", error=repr(err))
            return {}
        return {k: (env.get(k), v) for k, v in wanted.items() if env.get(k) != v}

    # ------------------------------------------------------------------ watching one attempt
    def _watch_attempt(self) -> AttemptResult:
        h, w, t0 = self._handle, self.watch, self._attempt_t0
        buf = self._buf = EvidenceBuffer(self.spec.signatures)
        last_sample, hung, fatal_at, exit_ = -1e9, "", None, None
        while True:
            fatal_at = self._consume(self._tail.read_lines(), buf, fatal_at)
            exit_ = h.poll()
            if exit_ is not None:
                self._sample(h)                        # the cgroup's numbers, before it is removed
                self._consume(self._tail.read_lines(), buf, None)   # what it printed on the way out
                break
            now = self.clock()
            if now - last_sample >= self.opts.sample_s:
                self._sample(h)
                last_sample = now
            hung = w.clock.expired(now) or ""
            if hung or self._cancel is not None:
                break
            if fatal_at is not None and now - fatal_at > self.opts.fatal_exit_grace_s:
                break                          # it printed its death and lingers (e.g. Ray shutdown): stop it
            self.sleep(self.opts.poll_s)
        dumps = dump_stacks(h.pids(), self.paths.ops_dir / "stacks", self.attempt) \
            if hung and self.opts.stack_dumps else []
        stopped = h.terminate(self.opts.grace_s)       # also stops stragglers of a trainer that exited
        exit_ = exit_ or stopped
        cancelled = self._cancel is not None and not hung
        mem = self._last_mem
        ev = Evidence(buf.lines(), None if hung else exit_, bool(hung), hung, 1 if exit_.oom_killed else 0,
                      mem.cgroup_limit_mib if mem else None, w.peak_rss_mib or None, w.progress.completed_step,
                      w.progress.phase)
        return AttemptResult(self.attempt, exit_, None if cancelled else classify(ev, self.spec.signatures),
                             w.progress.completed_step, self.clock() - t0,
                             (w.first_step_at - t0) if w.first_step_at else None,
                             [str(Path(p).relative_to(self.paths.root)) for p in dumps], w.peak_rss_mib,
                             w.peak_gpu_mib, cancelled=cancelled)

    _last_mem = None

    def _consume(self, lines: list[str], buf: EvidenceBuffer, fatal_at: float | None) -> float | None:
        """Fold a batch of log lines in; returns when a fatal-looking line was seen (None: not, or progress
        came after it). Only lines with a cue are parsed: a trainer spamming its log costs little here."""
        if not lines:
            return fatal_at
        flagged = buf.add_many(lines)
        if fatal_at is None and any(_looks_fatal(ln) for ln in flagged):
            fatal_at = self.clock()
        progressed = [self._observe_line(lines[i]) for i in matching_lines(lines, CUE_RX)]
        return None if any(progressed) else fatal_at

    def _observe_line(self, line: str) -> bool:
        """Fold one log line into the attempt's progress; True when it announced a new step."""
        ev = parse_line(line)
        if ev is None:
            return False
        w, before = self.watch, self.watch.progress
        w.progress = before.apply(ev)
        now = self.clock()
        if ev.kind == "step" and ev.value != before.step:
            w.clock = w.clock.mark(now)
            if w.first_step_at is None:
                w.first_step_at = now
                expected = (self._resume_step or 0) + 1
                if ev.value != expected:
                    self.journal.append("warning", self.attempt, message=f"step count did not continue from the "
                                        f"last checkpoint: expected step {expected}, trainer started at {ev.value}",
                                        expected_step=expected, first_step=ev.value)
        elif ev.kind == "step_time":
            p = w.progress
            self.journal.append("progress", self.attempt, step=p.step, total_steps=p.total_steps, reward=p.reward,
                                accuracy=p.accuracy, step_time_s=p.step_time_s,
                                rss_mib=round(self._last_mem.rss_mib, 1) if self._last_mem else None,
                                gpu_mib=w.peak_gpu_mib)
            self._spec_warnings()
            self._write_state()
        elif ev.kind == "accuracy":
            self.journal.append("eval", self.attempt, step=w.progress.step, accuracy=ev.value)
        return ev.kind == "step" and ev.value != before.step

    def _spec_warnings(self) -> None:
        """Once per step: warnings the trainer spec reads from the log (e.g. host memory creeping up)."""
        fn = getattr(self.spec, "log_warnings", None)
        if fn is None:
            return
        try:
            found = fn(list(self._buf.tail))
        except Exception as err:
            log.debug("log_warnings failed", error=repr(err))
            return
        for message in found:
            if message not in self._warned:
                self._warned.add(message)
                self.journal.append("warning", self.attempt, message=message, source="trainer spec")

    def _sample(self, h) -> None:
        try:
            mem = h.memory()
        except Exception as err:   # a sampler must not end the watch
            log.debug("memory sample failed", error=repr(err))
            mem = None
        if mem is not None:
            self._last_mem = mem
            self.watch.peak_rss_mib = max(self.watch.peak_rss_mib, mem.rss_mib)
        if self._gpu_ok:
            try:
                snap = self.gpu_reader.snapshot()
                used = max((g.memory_used_mib for g in snap.gpus), default=None)
                if used is not None:
                    self.watch.peak_gpu_mib = max(self.watch.peak_gpu_mib or 0, used)
            except Exception as err:
                self._gpu_ok = False
                self.journal.append("warning", self.attempt, message=f"GPU reading stopped: {err}")
        self._write_state()

    # ------------------------------------------------------------------ acting and recording
    def _cleanup(self, why: str) -> None:
        t0 = self.clock()
        try:
            actions = self.backend.cleanup(self.run_id)
        except Exception as err:   # leftovers we cannot stop are reported, not fatal
            actions = [f"cleanup failed: {type(err).__name__}: {err}"]
        if actions:
            self.journal.append("cleanup", self.attempt, why=why, actions=actions,
                                duration_s=round(self.clock() - t0, 3))

    def _make_launch(self) -> Launch:
        base = {**self.opts.base_env, **self.extra_env}
        launch = self.spec.launch(self.plan, self.paths, base, first=self.attempt == 1)
        # Environment remedies the spec marks one-shot (e.g. rebuild NeMo RL's venvs) apply to this launch only.
        for key in getattr(self.spec, "one_shot_env", ()):
            self.extra_env.pop(key, None)
        env = {**launch.env, "GRPO_OPS_RUN_ID": self.run_id, "GRPO_OPS_ATTEMPT": str(self.attempt),
               "GRPO_OPS_RUN_DIR": str(self.paths.root.absolute())}
        return replace(launch, env=env, labels={**launch.labels, "exp": self.run_id, "attempt": str(self.attempt)})

    def _to(self, to: State, reason: str) -> None:
        check_transition(self.state, to)
        frm, self.state = self.state, to
        self._record_transition(frm, to, reason)
        if to.is_terminal:
            self.end_reason = reason

    def _record_transition(self, frm: State | None, to: State, reason: str) -> None:
        self.journal.append("transition", self.attempt, **{"from": frm.value if frm else None, "to": to.value},
                            reason=reason)
        self._write_state()

    def _write_state(self) -> None:
        snap = state_snapshot(self)
        write_state(self.paths.state_file, snap)
        write_heartbeat(self.paths.heartbeat, snap)

    def journal_ts(self) -> str:
        from ops.journal import iso_now
        return iso_now(self.wall())

    def _finish(self) -> RunOutcome:
        if self._handle is not None and self._handle.poll() is None:
            self._handle.terminate(self.opts.grace_s)
        self._cleanup("run ended")
        p = self.watch.progress
        steps = p.completed_step
        out = RunOutcome(self.state, self.end_reason, self.attempt, steps, p.total_steps,
                         round(self.clock() - self.started_mono, 3))
        self.journal.append("run_end", self.attempt, state=self.state.value, reason=self.end_reason,
                            steps_done=steps, total_steps=p.total_steps, wall_s=out.wall_s)
        self._write_state()
        return out

    def _install_signal_handlers(self) -> Callable[[], None]:
        def on_signal(signum, _frame):
            self._cancel = signum
        return trap_signals(on_signal)


_FATAL = ("OutOfMemoryError", "CUDA out of memory", "CUDA error: out of memory", "RayTaskError")


def _looks_fatal(line: str) -> bool:
    return any(m in line for m in _FATAL)
