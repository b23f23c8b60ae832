"""The trainer interface the supervisor drives. Pure data and a Protocol; no I/O here.

A `Plan` is what one attempt launches: a config file plus Hydra-style overrides (NeMo RL's grammar:
`key=value` for keys that exist, `++key=value` to add or override). A new plan is always
`plan.with_overrides(...)` (a new frozen value), never a mutation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol


def cfg_get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at dotted `key` in a plain nested mapping (a resolved config); `default` when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def override_key(item: str) -> str:
    """`++a.b=1` -> `a.b`; `a.b=1` -> `a.b`; `~a.b` -> `a.b`."""
    return item.split("=", 1)[0].lstrip("+~")


@dataclass(frozen=True)
class Plan:
    config_path: Path
    overrides: tuple[str, ...] = ()

    def with_overrides(self, items: Mapping[str, Any]) -> "Plan":
        """A new plan with `items` (key -> value) set as `++key=value`, replacing earlier settings of key."""
        keep = [o for o in self.overrides if override_key(o) not in items]
        added = [f"++{k}={_fmt(v)}" for k, v in items.items()]
        return replace(self, overrides=tuple(keep + added))

    def override_map(self) -> dict[str, str]:
        """key -> raw value string, last one wins (what the user / supervisor asked for)."""
        out: dict[str, str] = {}
        for o in self.overrides:
            if "=" in o and not o.startswith("~"):
                out[override_key(o)] = o.split("=", 1)[1]
        return out

    def to_json(self) -> dict:
        return {"config_path": str(self.config_path), "overrides": list(self.overrides)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Plan":
        return cls(Path(d["config_path"]), tuple(d.get("overrides", ())))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


@dataclass(frozen=True)
class RunPaths:
    """Where one experiment lives: results/<exp>/ (tutorial layout)."""
    root: Path                      # results/<exp>

    @property
    def output_log(self) -> Path:
        return self.root / "output.log"

    @property
    def ops_dir(self) -> Path:
        return self.root / "ops"

    @property
    def journal(self) -> Path:
        return self.ops_dir / "journal.jsonl"

    @property
    def state_file(self) -> Path:
        return self.ops_dir / "state.json"

    @property
    def heartbeat(self) -> Path:
        return self.ops_dir / "heartbeat.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root                # NeMo RL tutorial: checkpoints beside output.log

    @property
    def log_dir(self) -> Path:
        return self.root                # exp_NNN/ dirs land here


@dataclass(frozen=True)
class Knob:
    """One remedy lever, in the order the troubleshooting table prefers it."""
    key: str                         # config key, e.g. "policy.train_micro_batch_size"
    kind: str                        # "tp" | "micro_batch" | "logprob_batch" | "gen_mem" | "gen_tp" |
                                     # "act_ckpt" | "offload" | "prompts" (changes the experiment)
    changes_experiment: bool = False
    phases: tuple[str, ...] = ()     # phases where it helps ("training", "logprob", "generation"); () = any


@dataclass(frozen=True)
class Signature:
    """A log text that means something: regex -> failure kind (see ops.classify)."""
    kind: str
    pattern: str
    deterministic: bool = False


@dataclass(frozen=True)
class Launch:
    """What a backend starts: argv (no shell), the full environment, the working directory."""
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    labels: Mapping[str, str] = field(default_factory=dict)   # exp, attempt: for ownership


class TrainerSpec(Protocol):
    name: str                                    # "embedded" | "nemo-rl"
    knobs: Sequence[Knob]
    signatures: Sequence[Signature]

    def default_config(self) -> Path: ...

    def resolve(self, plan: Plan) -> dict:
        """The effective config (YAML + defaults + overrides + interpolations) as plain data.
        Raises ConfigError (subclass of UserError) with the trainer's own text on a bad override."""
        ...

    def constraint_violations(self, cfg: Mapping[str, Any], gpus: int | None = None) -> list[str]:
        """Each constraint the trainer enforces that `cfg` breaks, as one readable line; [] when fine."""
        ...

    def launch(self, plan: Plan, paths: RunPaths, base_env: Mapping[str, str], first: bool) -> Launch:
        """argv and environment for one attempt; checkpoint and log dirs forced under `paths`."""
        ...
