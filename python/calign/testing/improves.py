"""assert_improves: did a logged metric get better over a run?

It compares the mean of the first `window` values with the mean of the last
`window` values, so one noisy step neither makes nor breaks the verdict, and
fails with the numbers it compared.
"""

import collections
import math
from collections.abc import Mapping

from calign import checks

DIRECTIONS = ("increase", "decrease")

Improvement = collections.namedtuple("Improvement", ["first", "last", "improvement", "window"])
Improvement.__doc__ = """What assert_improves compared: the means of the first and last
`window` values and the improvement (last - first for "increase", first - last
for "decrease"; positive when the metric got better)."""


def assert_improves(history, key=None, *, window=None, min_improvement=0.0,
                    direction="increase"):
    """Asserts that a metric improves from the start of `history` to its end;
    returns an Improvement with the numbers compared.

    history: a trainer's state.log_history (or any list of dicts: the entries
        holding `key` are taken, in order, the others skipped) or a list of
        numbers (then key is None).
    window: how many values are averaged at each end (default: a quarter of
        them, at least 1); at most half of the values.
    min_improvement: the least improvement that passes (0: any improvement;
        a metric that stays equal fails).
    direction: "increase" (rewards/margins, accuracy) or "decrease" (loss).

    Raises AssertionError when the metric did not improve by more than 0 and at
    least min_improvement, or has a NaN or infinite value; ValueError/TypeError
    for arguments it cannot read."""
    checks.choice("direction", direction, DIRECTIONS)
    min_improvement = checks.real("min_improvement", min_improvement, 0.0)
    values, steps = _series(history, key)
    name = key if key is not None else "the metric"
    if len(values) < 2:
        raise ValueError(f"history must hold at least 2 values of {name} to compare, "
                         f"got {len(values)}")
    window = checks.integer("window", window, 1, len(values) // 2, allow_none=True)
    if window is None:
        window = max(1, len(values) // 4)
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise AssertionError(f"{name} is not finite at entries {bad[:10]}: "
                             f"{_shown(values)}")
    first = sum(values[:window]) / window
    last = sum(values[-window:]) / window
    improvement = last - first if direction == "increase" else first - last
    if not (improvement > 0 and improvement >= min_improvement):
        wanted = (f"by at least {min_improvement:g}" if min_improvement > 0 else
                  "at all")
        raise AssertionError(
            f"{name} did not {direction} {wanted}: the mean of the first {window} "
            f"value(s){_steps(steps[:window])} is {first:.6g}, of the last {window}"
            f"{_steps(steps[-window:])} {last:.6g}, a change of {last - first:+.6g}; "
            f"values: {_shown(values)}")
    return Improvement(first, last, improvement, window)


def _series(history, key):
    """(values, steps) of `key` in `history`; steps are the entries' "step"
    fields (None where there is none, and for a list of numbers)."""
    if isinstance(history, (str, bytes, Mapping)) or not hasattr(history, "__iter__"):
        raise TypeError("history must be a list of dicts (a trainer's state.log_history) or "
                        f"of numbers, got {type(history).__name__}")
    entries = list(history)
    if entries and all(isinstance(e, Mapping) for e in entries):
        checks.text("key", key)
        rows = [e for e in entries if e.get(key) is not None]
        if not rows:
            seen = sorted({k for e in entries for k in e})
            raise ValueError(f"key {key!r} is in no entry of history (its keys: {seen})")
        for row in rows:
            checks.require(checks.is_real(row[key]), f"history's {key!r}", row[key], "a number")
        return [float(r[key]) for r in rows], [r.get("step") for r in rows]
    for i, value in enumerate(entries):
        checks.require(checks.is_real(value), f"history[{i}]", value,
                       "a number (or every entry a dict)")
    checks.require(key is None, "key", key, "None when history holds numbers")
    return [float(v) for v in entries], [None] * len(entries)


def _steps(steps):
    if not steps or steps[0] is None or steps[-1] is None:
        return ""
    return f" (step {steps[0]})" if len(steps) == 1 else f" (steps {steps[0]}-{steps[-1]})"


def _shown(values, at_most=12):
    shown = ", ".join(f"{v:.4g}" for v in values[:at_most])
    return f"[{shown}{', ...' if len(values) > at_most else ''}] ({len(values)} values)"
