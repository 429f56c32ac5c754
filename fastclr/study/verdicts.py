"""Claims of the paper, judged on a study's table by one stated rule.

A table maps each cell to its metrics as (mean, sd, n) over seeds, in percentage points. The
rule, for a claimed difference d between two cells (A - B, expected above `by` points): its
spread over seeds is s = sqrt(sd_A^2 + sd_B^2). The claim holds when d - by > s, does not hold
when d - by < -s, and is inconclusive in between: a difference smaller than the seeds' own
scatter proves nothing either way. Trends, bests and similarities are built from that rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RULE = ("A claim that cell A beats cell B (by at least m points) holds when the difference "
        "of their means minus m exceeds s = sqrt(sd_A^2 + sd_B^2), the spread of that "
        "difference over the seeds; it does not hold when it falls below -s; otherwise it is "
        "inconclusive. A trend holds when its two ends differ in the claimed direction by "
        "more than their spread and no neighbouring pair goes the other way by more than "
        "theirs; a 'best' cell must beat every other by the rule; cells are 'alike' when no "
        "pair differs by more than the stated width plus its spread.")

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # HOLDS, FAILS or UNSURE
    detail: str  # the numbers behind it


def _get(table: dict, cell: str, metric: str) -> tuple[float, float]:
    """(mean, sd) of `metric` in `cell`; a cell given as "label@metric" names its own metric."""
    cell, _, own = cell.partition("@")
    mean, sd, _ = table[cell][own or metric]
    return mean, sd if math.isfinite(sd) else 0.0


def compare(table: dict, a: str, b: str, metric: str, by: float = 0.0) -> tuple[str, float, float]:
    """(verdict, d, s) for "a beats b by at least `by`" on `metric`."""
    ma, sa = _get(table, a, metric)
    mb, sb = _get(table, b, metric)
    d, s = ma - mb, math.hypot(sa, sb)
    verdict = HOLDS if d - by > s else FAILS if d - by < -s else UNSURE
    return verdict, d, s


@dataclass(frozen=True)
class Better:
    """Cell `a` beats cell `b` on `metric` (by at least `by` points)."""

    text: str
    a: str
    b: str
    metric: str = "linear_top1"
    by: float = 0.0
    paper: str = ""

    def judge(self, table: dict) -> Verdict:
        verdict, d, s = compare(table, self.a, self.b, self.metric, self.by)
        need = f" (claimed: more than {self.by:g})" if self.by else ""
        return Verdict(verdict, f"{self.a} - {self.b} = {d:+.2f} points{need}, spread {s:.2f}")


@dataclass(frozen=True)
class Trend:
    """`metric` rises (direction +1) or falls (-1) along `cells`, in that order."""

    text: str
    cells: tuple[str, ...]
    metric: str = "linear_top1"
    direction: int = 1
    paper: str = ""

    def judge(self, table: dict) -> Verdict:
        first, last = self.cells[0], self.cells[-1]
        a, b = (last, first) if self.direction > 0 else (first, last)
        ends, d, s = compare(table, a, b, self.metric)
        against = []
        for lo, hi in zip(self.cells, self.cells[1:]):
            up, down = (hi, lo) if self.direction > 0 else (lo, hi)
            if compare(table, up, down, self.metric)[0] == FAILS:
                against.append(f"{lo} -> {hi}")
        verdict = FAILS if ends == FAILS else HOLDS if ends == HOLDS and not against else UNSURE
        word = "rise" if self.direction > 0 else "fall"
        detail = f"{first} -> {last}: {(-d if self.direction < 0 else d):+.2f} points (spread " \
                 f"{s:.2f}, claimed: {word})"
        if against:
            detail += f"; against the trend beyond the spread: {', '.join(against)}"
        return Verdict(verdict, detail)


@dataclass(frozen=True)
class Best:
    """`cell` has the best `metric` of `cells`."""

    text: str
    cell: str
    cells: tuple[str, ...]
    metric: str = "linear_top1"
    paper: str = ""

    def judge(self, table: dict) -> Verdict:
        others = [c for c in self.cells if c != self.cell]
        results = {c: compare(table, self.cell, c, self.metric) for c in others}
        top = max(self.cells, key=lambda c: _get(table, c, self.metric)[0])
        if all(v == HOLDS for v, _, _ in results.values()):
            verdict = HOLDS
        elif any(v == FAILS for v, _, _ in results.values()):
            verdict = FAILS
        else:
            verdict = UNSURE
        # the comparison that decided: the one not won (a loss first) with the least margin
        unwon = [c for c in others if results[c][0] != HOLDS] or others
        decider = min(unwon, key=lambda c: (results[c][0] != FAILS, results[c][1] - results[c][2]))
        _, d, s = results[decider]
        more = f"; {len(unwon) - 1} more not beaten by their spread" if len(unwon) > 1 else ""
        return Verdict(verdict, f"best mean: {top}; {self.cell} - {decider} = {d:+.2f} points "
                                f"(spread {s:.2f}){more}")


@dataclass(frozen=True)
class Alike:
    """No two of `cells` differ on `metric` by more than `within` points."""

    text: str
    cells: tuple[str, ...]
    within: float = 1.0
    metric: str = "linear_top1"
    paper: str = ""

    def judge(self, table: dict) -> Verdict:
        means = {c: _get(table, c, self.metric)[0] for c in self.cells}
        hi, lo = max(means, key=means.get), min(means, key=means.get)
        verdict, d, s = compare(table, hi, lo, self.metric, self.within)
        # beyond the width by more than the spread: not alike; clearly inside: alike
        verdict = {HOLDS: FAILS, FAILS: HOLDS, UNSURE: UNSURE}[verdict]
        return Verdict(verdict, f"range {hi} - {lo} = {d:.2f} points (claimed: within "
                                f"{self.within:g}; spread {s:.2f})")


@dataclass(frozen=True)
class GapShrinks:
    """The gap `a_i - b_i` of paired cells shrinks along the pairs (e.g. with model size)."""

    text: str
    pairs: tuple[tuple[str, str], ...]
    metric: str = "linear_top1"
    paper: str = ""

    def judge(self, table: dict) -> Verdict:
        gaps = []
        for a, b in self.pairs:
            (ma, sa), (mb, sb) = _get(table, a, self.metric), _get(table, b, self.metric)
            gaps.append((ma - mb, math.hypot(sa, sb)))
        (g0, s0), (g1, s1) = gaps[0], gaps[-1]
        change, spread = g0 - g1, math.hypot(s0, s1)
        verdict = HOLDS if change > spread else FAILS if change < -spread else UNSURE
        shown = ", ".join(f"{g:+.2f}" for g, _ in gaps)
        return Verdict(verdict, f"gaps along the pairs: {shown} points (first - last = "
                                f"{change:+.2f}, spread {spread:.2f})")
