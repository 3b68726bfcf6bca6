"""Data parallelism over MPI: the ranks `mpirun -n R` starts, seen by calign.

calign does not ship an engine of its own. Under `mpirun` (Open MPI, MPICH or
any MPI that mpi4py loads) every rank runs the same script; `world()` finds
the communicator and the trainers use it to

- sum the contiguous gradient buffer over ranks in place (`sum_in_place`, in
  buckets so a buffer beyond MPI's int count works; no copy),
- merge per-rank metric sums and gather per-rank results (`allgather`),
- let rank 0 alone write files (`is_main`, then `barrier`),
- stop every rank when one fails (`abort_on_error`, and an excepthook): MPI
  collectives have no timeout, so a rank left waiting would hang for ever.

Without MPI (no launcher in the environment) `world()` is a single process
and nothing imports mpi4py.
"""

import contextlib
import os
import sys
import traceback

import numpy as np

from calign import checks

# Environment variables by which launchers announce the number of ranks: Open MPI,
# MPICH/Intel MPI (Hydra's PMI), PMIx launchers (Slurm's srun --mpi=pmix, prterun).
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")

# Elements per allreduce call: below MPI's int count (2^31 - 1); 64 Mi float32 = 256 MiB,
# large enough that the per-call latency is nothing beside the bytes moved.
DEFAULT_BUCKET_ELEMENTS = 1 << 26


def launched_ranks(environ=None):
    """The number of ranks a launcher announced in the environment (1 if none)."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name)
        if value is not None and value.strip().isdigit():
            return max(1, int(value))
    return 1


class World:
    """The ranks of a run. A single process is World(None): rank 0 of 1, and
    every collective is the identity."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.bucket_elements = DEFAULT_BUCKET_ELEMENTS

    @property
    def is_main(self):
        """True on rank 0, the rank that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    # ---- collectives --------------------------------------------------------------

    def sum_in_place(self, buffer, bucket_elements=None):
        """buffer := its sum over ranks (MPI_Allreduce, MPI_IN_PLACE), a
        contiguous float32/float64 array of any length, in calls of at most
        bucket_elements elements (default self.bucket_elements)."""
        if not isinstance(buffer, np.ndarray) or buffer.dtype not in (np.float32, np.float64) \
                or not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ValueError("buffer must be a writeable C-contiguous float32 or float64 NumPy "
                             f"array, got {type(buffer).__name__}"
                             + (f" {buffer.dtype}" if isinstance(buffer, np.ndarray) else ""))
        bucket = self.bucket_elements if bucket_elements is None else bucket_elements
        checks.integer("bucket_elements", bucket, low=1, high=checks.C_INT_MAX)
        if self.comm is None:
            return buffer
        from mpi4py import MPI

        flat = buffer.reshape(-1)
        kind = MPI.FLOAT if buffer.dtype == np.float32 else MPI.DOUBLE
        for start in range(0, flat.size, bucket):
            self.comm.Allreduce(MPI.IN_PLACE, [flat[start:start + bucket], kind], op=MPI.SUM)
        return buffer

    def sum(self, value):
        """A Python number summed over ranks."""
        return value if self.comm is None else self.comm.allreduce(value)

    def allgather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (picklable values)."""
        return [value] if self.comm is None else self.comm.allgather(value)

    def broadcast(self, value):
        """Rank 0's value on every rank."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def share(self, items):
        """This rank's share of a list: items rank, rank + size, ... (round
        robin, as accelerate deals batches to processes)."""
        return items[self.rank::self.size]

    def block(self, n):
        """This rank's contiguous block of n items, a range: the ranks' blocks
        cover 0..n-1 in rank order, their sizes differ by at most one."""
        return range(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def merge_metric_sums(self, sums, counts):
        """Running metric sums and counts (calign.trainers.base.accumulate's)
        summed over ranks, added in rank order so every rank gets the same."""
        if self.comm is None:
            return sums, counts
        total_sums, total_counts = {}, {}
        for rank_sums, rank_counts in self.allgather((sums, counts)):
            for k, v in rank_sums.items():
                total_sums[k] = total_sums.get(k, 0.0) + v
                total_counts[k] = total_counts.get(k, 0) + rank_counts[k]
        return total_sums, total_counts

    def gather_shards(self, shards_of_rank, n):
        """Items 0..n-1 in order, from each rank's results of its share
        (`share(range(n))`), on every rank."""
        if self.comm is None:
            return list(shards_of_rank)
        result = [None] * n
        for rank, shard in enumerate(self.allgather(list(shards_of_rank))):
            result[rank::self.size] = shard
        return result

    # ---- failure ------------------------------------------------------------------

    def abort(self, message, code=1):
        """Prints message and stops every rank of the job (MPI_Abort)."""
        sys.stderr.write(message)
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)

    @contextlib.contextmanager
    def abort_on_error(self):
        """With several ranks, an exception inside stops the whole job with its
        traceback (the others would wait in their next collective for ever)."""
        if self.comm is None:
            yield
            return
        try:
            yield
        except BaseException as error:
            self.abort(self.failure_message(type(error), error, error.__traceback__))
            raise

    def failure_message(self, kind, error, tb):
        return (f"calign: rank {self.rank} of {self.size} failed; aborting the job\n"
                + "".join(traceback.format_exception(kind, error, tb)))


_world = None


def world():
    """The World of this process: MPI's COMM_WORLD when a launcher started more
    than one rank (or mpi4py is already initialised with several), else a
    single process. Found once and cached."""
    global _world
    if _world is not None:
        return _world
    comm = None
    already = sys.modules.get("mpi4py.MPI")
    if launched_ranks() > 1 or (already is not None and already.Is_initialized()):
        try:
            import mpi4py
            if "mpi4py.MPI" not in sys.modules:
                # calign calls MPI from the main thread only
                mpi4py.rc.thread_level = "funneled"
            from mpi4py import MPI
        except ImportError as error:
            raise ImportError(
                f"this process was started by an MPI launcher with {launched_ranks()} ranks, "
                "but mpi4py cannot be imported; install it (pip install 'calign[mpi]' or "
                "pip install mpi4py) or run without mpirun") from error
        if MPI.COMM_WORLD.Get_size() > 1:
            comm = MPI.COMM_WORLD
    _world = World(comm)
    if comm is not None:
        _install_excepthook(_world)
    return _world


def _install_excepthook(world_):
    """An uncaught exception on one rank aborts the job (as `python -m mpi4py`)."""
    previous = sys.excepthook

    def hook(kind, error, tb):
        previous(kind, error, tb)
        world_.abort(f"calign: rank {world_.rank} of {world_.size} failed; aborting the job\n")

    sys.excepthook = hook
