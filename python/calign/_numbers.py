"""What counts as a number in calign's argument checks: Python's and NumPy's
integers and reals alike, never a bool (True is not a count or a rate)."""

import math
import numbers

import numpy as np


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_finite_real(value):
    """A real that is neither NaN nor infinite (an int too large for a double
    counts as infinite)."""
    if not is_real(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
