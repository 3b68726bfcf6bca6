"""Checks of word-alignment settings: counts that reach C as ints, finite
reals in their range, each failure a ValueError naming the argument."""

import numpy as np

from calign.checks import is_int, is_real

# Iteration, sweep and jump counts reach the C kernels as C ints.
INT_MAX = 2**31 - 1

# alpha > 0's update (wa_table_update) takes digamma(total + n_e alpha), n_e a
# table row's support: at most 2**31 - 1 (link indices are int32), and the
# total count at most the corpus's target words. Up to this alpha, n_e alpha
# stays below half the largest double, so the sum cannot overflow to inf
# (alpha = 1e308 did, and EM then produced NaN). An alpha far above the counts
# makes every row nearly uniform anyway.
ALPHA_MAX = float(np.finfo(np.float64).max / 2**32)


def check_integer(name, value, low, high=INT_MAX, what=None):
    """int(value) for a Python or NumPy integer (not a bool) in [low, high];
    else a ValueError naming `name` and the allowed values."""
    if not is_int(value) or \
            not low <= value <= high:
        raise ValueError(f"{name} must be {what or f'an integer in [{low}, {high}]'}, "
                         f"got {value!r}")
    return int(value)


def check_real(name, value, low, high=None, open_low=False, open_high=False, note=""):
    """float(value) for a finite Python or NumPy real (not a bool) above low
    and below high (None: unbounded); else a ValueError naming `name` and the
    range."""
    ok = is_real(value)
    if ok:
        try:
            number = float(value)
        except (OverflowError, ValueError):
            number = float("nan")
        ok = bool(np.isfinite(number)) and \
            (number > low if open_low else number >= low) and \
            (high is None or (number < high if open_high else number <= high))
    if not ok:
        if high is None:
            allowed = f"a finite number {'>' if open_low else '>='} {low:g}"
        else:
            allowed = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be {allowed}{note}, got {value!r}")
    return number


def check_alpha(alpha):
    return check_real("alpha", alpha, 0.0, ALPHA_MAX,
                      note=" (larger values overflow the variational-Bayes update)")


def check_threshold(threshold, open_high=False):
    return check_real("threshold", threshold, 0.0, 1.0, open_high=open_high)


def check_iterations(iterations):
    return check_integer("iterations", iterations, 1,
                         what=f"a positive integer (at most {INT_MAX})")
