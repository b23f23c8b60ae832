"""The literal prefilter finds exactly what a plain per-line regex search finds."""

import random
import re

from ops.classify import GENERIC_SIGNATURES
from ops.prefilter import LineScanner, required_literals
from training.nemo_rl import SIGNATURES

PATTERNS = [s.pattern for s in (*SIGNATURES, *GENERIC_SIGNATURES)] + [r"\d+ things", r"(?i)BoOm \w+"]
SNIPPETS = ["CUDA out of memory. Tried", "address ALREADY in use", "İstanbul ", "boom now", "12 things",
            "Could not override 'x'", "(raylet) ModuleNotFoundError: No module named 'ray'", "noise", "",
            "World size (8) must be divisible by PP * CP * TP (3)", "429 Too Many Requests", "ImportErr", "\u00e9"]


def test_equivalent_to_plain_search():
    rng = random.Random(7)
    compiled = [re.compile(p) for p in PATTERNS]
    scanner = LineScanner(PATTERNS)
    for _ in range(200):
        batch = ["".join(rng.choice(SNIPPETS) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(1, 30))]
        expect = [i for i, ln in enumerate(batch) if any(rx.search(ln) for rx in compiled)]
        assert scanner.lines(batch) == expect, batch


def test_literals_extracted():
    assert required_literals(r"(?i)address already in use") == (["address already in use"], True)
    assert required_literals(r"a.*b")[0] is None          # nothing of 3+ chars required: full search
    assert required_literals(r"(foo|ba)")[0] is None
