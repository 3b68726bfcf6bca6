"""calign's argument checks: one signature, one wording, used by every config,
wrapper and builder.

Each check takes the argument's name first, then its value, and either
returns the value in the type calign computes with (int, float, bool, str)
or raises ValueError reading "<name> must be <requirement>, got <value>".
A number is a Python or NumPy integer or real, never a bool (True is not a
count or a rate); a flag is a Python or NumPy bool, never a string ("False"
is truthy).

Integers that reach C as a C int are bounded by C_INT_MAX here, before any
narrowing cast can wrap them.
"""

import math
import numbers
import string

import numpy as np

C_INT_MAX = 2**31 - 1     # the largest count a C int holds
UINT64_MAX = 2**64 - 1    # the largest seed a C uint64_t holds


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


def require(condition, name, value, requirement):
    """The general form: ValueError "<name> must be <requirement>, got <value>"
    unless condition holds. For combinations of settings, name the field whose
    value is refused."""
    if not condition:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


def _interval(low, high, open_low, open_high):
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f"{'<' if open_high else '<='} {high:g}"
    return ""


def integer(name, value, low=None, high=None, *, allow_none=False, what=None):
    """int(value) for an integer in [low, high] (None: unbounded); None
    passes through when allow_none. `what` replaces the generated requirement."""
    if value is None and allow_none:
        return None
    ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = ("in [%d, %d]" % (low, high) if low is not None and high is not None else
                  ">= %d" % low if low is not None else "<= %d" % high if high is not None else "")
        requirement = what or f"an integer {bounds}".rstrip()
        require(False, name, value, ("None or " if allow_none else "") + requirement)
    return int(value)


def real(name, value, low=None, high=None, *, open_low=False, open_high=False,
         allow_none=False, note=""):
    """float(value) for a finite real number within the bounds (None:
    unbounded); open_low/open_high exclude the bound itself. None passes
    through when allow_none; `note` is appended to the requirement."""
    if value is None and allow_none:
        return None
    ok = is_finite_real(value)
    if ok:
        number = float(value)
        ok = (low is None or (number > low if open_low else number >= low)) and \
            (high is None or (number < high if open_high else number <= high))
    if not ok:
        requirement = f"a finite number {_interval(low, high, open_low, open_high)}".rstrip()
        require(False, name, value, ("None or " if allow_none else "") + requirement + note)
    return number


def flag(name, value):
    """bool(value) for True or False (Python's or NumPy's); a string or a
    number is refused, as "False" and 2 would read as true."""
    require(isinstance(value, (bool, np.bool_)), name, value, "True or False")
    return bool(value)


def choice(name, value, choices):
    """value when it is one of `choices` (strings)."""
    require(isinstance(value, str) and value in choices, name, value,
            f"one of {list(choices)}")
    return value


def text(name, value, *, allow_none=False, non_empty=True):
    """A string (non-empty unless non_empty=False); None when allow_none."""
    if value is None and allow_none:
        return None
    require(isinstance(value, str) and (value or not non_empty), name, value,
            ("None or " if allow_none else "") + ("a non-empty string" if non_empty else
                                                  "a string"))
    return value


def seed(name, value, *, allow_none=False):
    """A seed: an integer (taken modulo 2**64, as the C samplers use 64-bit
    seeds), or None (fresh randomness) when allow_none."""
    if value is None and allow_none:
        return None
    require(is_int(value), name, value,
            "an integer or None (unseeded)" if allow_none else "an integer")
    return int(value) % (UINT64_MAX + 1)


def format_template(name, template, fields):
    """A str.format template whose placeholders are exactly `fields` (each
    present, nothing else, no positional or nested ones; literal braces
    doubled) and that fills in; TypeError or ValueError naming it otherwise."""
    wanted = [f"{{{f}}}" for f in fields]
    listed = wanted[0] if len(wanted) == 1 else ", ".join(wanted[:-1]) + " and " + wanted[-1]
    if not isinstance(template, str):
        raise TypeError(f"{name} must be a string with {listed} placeholders, not "
                        f"{type(template).__name__}")
    braces = "write a literal brace as {{ or }}"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid format string ({exc}): {braces}") from None
    found = set()
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if field not in fields:
            kind = "positional placeholder" if field == "" or field.isdigit() else "placeholder"
            raise ValueError(f"{name} has the {kind} {{{field}}}: only {listed} are filled in; "
                             f"{braces}")
        if "{" in (spec or ""):
            raise ValueError(f"{name}: {{{field}:{spec}}} has a nested placeholder; only "
                             f"{listed} are filled in")
        found.add(field)
    if found != set(fields):
        raise ValueError(f"{name} must contain {listed} placeholders")
    try:
        template.format(**{f: "" for f in fields})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} cannot be filled in: {exc}") from None
    return template
