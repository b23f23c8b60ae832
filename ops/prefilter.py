"""A fast, exact prefilter for scanning a busy log against many regexes. Pure; no I/O.

Python's `re` has no multi-pattern literal scan, so searching ~25 signatures over a trainer spamming its log
costs ~100 ms per MB. Most signatures require a literal word (e.g. "CUDA out of memory"); `str.find` locates
those at memchr speed. `LineScanner.lines(batch)` returns the indices of lines where some pattern matches,
running the full regexes only on lines holding one of each pattern's required literals. A pattern with no
required literal of >= 3 characters is searched in full, so nothing a plain per-line search finds is missed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

try:
    from re import _parser as sre_parse          # Python >= 3.11
except ImportError:                               # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

_MIN = 3


def _seq_literal(items) -> str | None:
    """The longest run of consecutive literals of a parsed sequence (each is required there)."""
    best, run = "", ""
    for op, av in items:
        if op is sre_parse.LITERAL:
            run += chr(av)
            best = max(best, run, key=len)
        else:
            run = ""
            if op is sre_parse.SUBPATTERN and len(items) == 1:
                return None if _alternatives(av[-1]) is None else "\0group"
    return best if len(best) >= _MIN else None


def _alternatives(items) -> list[str] | None:
    """Literals such that any match contains at least one of them; None when no such set is known."""
    items = list(items)
    if len(items) == 1 and items[0][0] is sre_parse.SUBPATTERN:
        return _alternatives(items[0][1][-1])
    if len(items) == 1 and items[0][0] is sre_parse.BRANCH:
        out: list[str] = []
        for branch in items[0][1][1]:
            alts = _alternatives(branch)
            if alts is None:
                return None
            out += alts
        return out
    lit = _seq_literal(items)
    return None if lit is None or lit == "\0group" else [lit]


def required_literals(pattern: str) -> tuple[list[str] | None, bool]:
    """(literals, ignorecase): any match of `pattern` contains one of `literals` (lower-cased when
    ignorecase); literals None: unknown, search in full."""
    parsed = sre_parse.parse(pattern)
    icase = bool(parsed.state.flags & re.IGNORECASE)
    alts = _alternatives(list(parsed))
    if alts is None:
        return None, icase
    return ([a.lower() for a in alts] if icase else alts), icase


class LineScanner:
    def __init__(self, patterns: Sequence[str]):
        self.full: list[re.Pattern] = []                      # no literal known: search every line
        self.keyed: list[tuple[re.Pattern, list[str], bool]] = []
        for p in patterns:
            lits, icase = required_literals(p)
            rx = re.compile(p)
            if lits is None:
                self.full.append(rx)
            else:
                self.keyed.append((rx, lits, icase))

    def lines(self, batch: Sequence[str]) -> list[int]:
        """Indices (ascending) of the lines where some pattern matches."""
        if not batch:
            return []
        text = "\n".join(batch)
        hays: dict[bool, str] = {False: text}
        starts: dict[bool, list[int]] = {}            # per haystack: lower() may change lengths, not newlines
        hit: set[int] = set()
        for rx, lits, icase in self.keyed:
            if icase and icase not in hays:
                hays[True] = text.lower()
            hay = hays[icase]
            cand: set[int] = set()
            for lit in lits:
                i = hay.find(lit)
                while i >= 0:
                    if icase not in starts:
                        starts[icase] = _line_starts(hay)
                    cand.add(_line_of(starts[icase], i))
                    i = hay.find(lit, i + 1)
            hit.update(n for n in cand if n not in hit and rx.search(batch[n]))
        for rx in self.full:
            hit.update(n for n, line in enumerate(batch) if n not in hit and rx.search(line))
        return sorted(hit)


def _line_starts(text: str) -> list[int]:
    starts, i = [0], text.find("\n")
    while i >= 0:
        starts.append(i + 1)
        i = text.find("\n", i + 1)
    return starts


def _line_of(starts: list[int], pos: int) -> int:
    import bisect
    return bisect.bisect_right(starts, pos) - 1
