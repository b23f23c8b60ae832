"""A Workplace-Assistant-like tool-calling task, generated in code (nothing downloaded). Pure; no I/O.

Modelled on NeMo Gym's `workplace_assistant` resources server: a request ("email alice about the budget")
must be answered with one tool call from a small catalogue (email, calendar, tasks, CRM, analytics).
The reward replays the predicted call and the expected call on fresh copies of a tiny workplace
database and compares the final states, as Gym's `is_correct` state matching does: 1.0 on an exact
match, else 0.0 (`binary`); `partial` gives the fraction of the expected state change reproduced.

Responses follow a tool-call grammar (`TOOL ARG... <eos>`), enforced at decoding time the way
vLLM's structured outputs / tool parser constrain a real model: at each position only the tokens
that the grammar allows (a tool name, then a value of each argument's type, then end) can be sampled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

PAD, BOS, SEP, EOS = "<pad>", "<bos>", "<sep>", "<eos>"
SPECIALS = (PAD, BOS, SEP, EOS)

ENTITIES: dict[str, tuple[str, ...]] = {
    "person": ("alice", "bob", "carol", "dave", "erin", "frank"),
    "topic": ("budget", "roadmap", "hiring", "launch", "review", "offsite"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday"),
    "metric": ("revenue", "visits", "signups", "churn"),
    "period": ("q1", "q2", "q3", "q4"),
    "account": ("acme", "globex", "initech", "umbrella", "hooli"),
    "stage": ("lead", "qualified", "won", "lost"),
}


@dataclass(frozen=True)
class Tool:
    name: str
    table: str                                  # the database table the call changes
    args: tuple[tuple[str, str], ...]           # (argument name, entity type)
    templates: tuple[str, ...]                  # request texts, 5 words each, {arg} placeholders


TOOLS: tuple[Tool, ...] = (
    Tool("send_email", "emails", (("to", "person"), ("subject", "topic")),
         ("email {to} about the {subject}", "send {subject} notes to {to}")),
    Tool("create_event", "calendar", (("attendee", "person"), ("day", "day")),
         ("meet {attendee} on {day} please", "book {day} meeting with {attendee}")),
    Tool("create_task", "tasks", (("assignee", "person"), ("title", "topic")),
         ("assign {title} task to {assignee}", "ask {assignee} to do {title}")),
    Tool("log_call", "crm_calls", (("contact", "person"),),
         ("log a call with {contact}", "record call from {contact} today")),
    Tool("query_analytics", "analytics_reports", (("metric", "metric"), ("period", "period")),
         ("show {metric} numbers for {period}", "how was {metric} in {period}")),
    Tool("update_deal", "deals", (("account", "account"), ("stage", "stage")),
         ("move {account} deal to {stage}", "mark {account} as {stage} now")),
)
PROMPT_WORDS = 5
PROMPT_LEN = PROMPT_WORDS + 2                   # <bos> words <sep>
MAX_RESPONSE_LEN = 1 + max(len(t.args) for t in TOOLS) + 1   # tool, args, <eos>


@dataclass(frozen=True)
class Example:
    """One request and the tool call that answers it."""
    text: str
    tool: str
    args: tuple[tuple[str, str], ...]           # (argument name, value)

    @property
    def uid(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()[:12]


class Vocab:
    """Word-level tokenizer over the fixed task vocabulary (ids are stable across runs)."""

    def __init__(self) -> None:
        words: set[str] = set()
        for tool in TOOLS:
            for tpl in tool.templates:
                words.update(w for w in tpl.split() if not w.startswith("{"))
        values = [v for vals in ENTITIES.values() for v in vals]
        self.tokens: tuple[str, ...] = SPECIALS + tuple(sorted(words - set(values))) + tuple(
            t.name for t in TOOLS) + tuple(dict.fromkeys(values))
        self.index = {tok: i for i, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode_prompt(self, text: str) -> list[int]:
        words = text.split()
        if len(words) != PROMPT_WORDS:
            raise ValueError(f"request must have {PROMPT_WORDS} words: {text!r}")
        return [self.index[BOS]] + [self.index[w] for w in words] + [self.index[SEP]]

    def encode_call(self, ex: Example) -> list[int]:
        return [self.index[ex.tool]] + [self.index[v] for _, v in ex.args] + [self.index[EOS]]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


def all_examples() -> list[Example]:
    """Every request the catalogue can produce, in a fixed order."""
    out: list[Example] = []
    for tool in TOOLS:
        combos: list[dict[str, str]] = [{}]
        for arg, kind in tool.args:
            combos = [dict(c, **{arg: v}) for c in combos for v in ENTITIES[kind]]
        for combo in combos:
            for tpl in tool.templates:
                out.append(Example(tpl.format(**combo), tool.name, tuple((a, combo[a]) for a, _ in tool.args)))
    return out


def split(examples: Sequence[Example], val_fraction: float = 0.2) -> tuple[list[Example], list[Example]]:
    """A stable train/validation split by request hash (held-out requests never seen in training)."""
    cut = int(val_fraction * 1000)
    val = [e for e in examples if int(e.uid, 16) % 1000 < cut]
    train = [e for e in examples if int(e.uid, 16) % 1000 >= cut]
    return train, val


# ---- the environment: replay calls on a workplace database and compare states -------------------

State = dict[str, tuple[tuple[tuple[str, str], ...], ...]]     # table -> rows (each row: sorted items)
_TOOL_BY_NAME = {t.name: t for t in TOOLS}


def replay(calls: Sequence[tuple[str, dict[str, str]]]) -> State:
    """Apply tool calls to a fresh (empty) database; an unknown tool or bad argument is an error row."""
    tables: dict[str, list[tuple[tuple[str, str], ...]]] = {t.table: [] for t in TOOLS}
    for name, args in calls:
        tool = _TOOL_BY_NAME.get(name)
        if tool is None or set(args) != {a for a, _ in tool.args}:
            tables.setdefault("errors", []).append((("call", name),))
            continue
        tables[tool.table].append(tuple(sorted((k, v.lower()) for k, v in args.items())))
    return {k: tuple(v) for k, v in tables.items()}


def parse_call(tokens: Sequence[str]) -> tuple[str, dict[str, str]] | None:
    """`[tool, v1, v2, <eos>]` -> (tool, {arg: value}); None when it is not a well-formed call."""
    if not tokens or tokens[0] not in _TOOL_BY_NAME:
        return None
    tool = _TOOL_BY_NAME[tokens[0]]
    values = list(tokens[1:1 + len(tool.args)])
    if len(values) != len(tool.args) or tokens[1 + len(tool.args):2 + len(tool.args)] != [EOS]:
        return None
    return tool.name, {a: v for (a, _), v in zip(tool.args, values)}


def _facts(state: State) -> set[tuple]:
    return {(table, i, "_row") for table, rows in state.items() for i, _ in enumerate(rows)} | {
        (table, i, k, v) for table, rows in state.items() for i, row in enumerate(rows) for k, v in row}


def reward(ex: Example, response: Sequence[str], mode: str = "binary") -> float:
    """1.0 when replaying the response gives the expected state (Gym's state match), else 0.0;
    `partial`: the share of expected state facts reproduced, over the larger of the two fact sets."""
    call = parse_call(list(response))
    if call is None:
        return 0.0
    expected, got = replay([(ex.tool, dict(ex.args))]), replay([call])
    if expected == got:
        return 1.0
    if mode == "binary":
        return 0.0
    want, have = _facts(expected), _facts(got)
    return len(want & have) / max(len(want), len(have))


def grammar(vocab: Vocab) -> list[list[list[int]]]:
    """allowed[tool_index][position] -> token ids the grammar allows at that response position
    (position 0: any tool; then each argument's entity type; then <eos>; then <pad>)."""
    tool_ids = [vocab.index[t.name] for t in TOOLS]
    out = []
    for tool in TOOLS:
        rows = [tool_ids]
        rows += [[vocab.index[v] for v in ENTITIES[kind]] for _, kind in tool.args]
        rows.append([vocab.index[EOS]])
        rows += [[vocab.index[PAD]]] * (MAX_RESPONSE_LEN - len(rows))
        out.append(rows)
    return out
