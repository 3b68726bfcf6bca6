"""num_threads: calign's thread count for a block of code, restored after it."""

import contextlib


@contextlib.contextmanager
def num_threads(n):
    """`with num_threads(1): ...` runs the block with calign.set_num_threads(1)
    and restores the previous count after it, also when the block raises.
    The value of the with statement is the previous count."""
    import calign

    previous = calign.set_num_threads(n)
    try:
        yield previous
    finally:
        calign.set_num_threads(previous)
