"""CPU threads: how many each part of the work gets, so that they do not fight.

torch (through OpenMP and oneDNN) and faiss (through its own OpenMP runtime)
each keep a pool of threads, one per core by default, and by default an idle
pool thread spins for a while before it sleeps. When more threads want to run
than there are free cores (decoding workers beside the encoder, a second pool,
or another program on the machine) a spinning thread holds a core that the
thread everyone waits for needs, and a forward pass that takes 40 ms alone can
take seconds. Measured on a 2-core machine with another CPU-heavy program
running: one efficientnet-lite0 forward pass of one photo took 66 ms with one
torch thread, 616 ms (3 s at worst) with two; with ``OMP_WAIT_POLICY=PASSIVE``
two threads took 85 ms. See ``docs/performance.md``.

The policy, applied where harrison_knn does its work:

- A small batch (a query of a few photos) runs on one thread: parallelism saves
  a few milliseconds there, and oversubscription costs up to seconds.
- A large batch (a build) runs on every usable core; decoding workers are
  single-threaded and take far less CPU than the network.
- OpenMP threads sleep instead of spinning when idle (``OMP_WAIT_POLICY=PASSIVE``)
  in the command line, which sets it before torch and faiss load. A program
  using the library can do the same before it imports torch.
- ``OMP_NUM_THREADS``, when set, caps every count here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "SMALL_BATCH",
    "faiss_threads",
    "prefer_sleeping_threads",
    "threads_for_batch",
    "torch_threads",
    "usable_cores",
]

logger = logging.getLogger(__name__)

SMALL_BATCH = 4
"""Batches of at most this many photos or queries run on one thread."""


def usable_cores() -> int:
    """Cores this process may run on, capped by ``OMP_NUM_THREADS`` when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        cores = min(cores, int(cap))
    return max(1, cores)


def threads_for_batch(batch_size: int) -> int:
    """Threads for the work on ``batch_size`` photos or queries; see the module."""
    return 1 if batch_size <= SMALL_BATCH else usable_cores()


def prefer_sleeping_threads() -> bool:
    """Make OpenMP threads sleep when idle, unless the user chose otherwise.

    Takes effect only for OpenMP runtimes not yet loaded, so call it before
    torch and faiss are imported. Returns whether it took effect.
    """
    import sys

    if "OMP_WAIT_POLICY" in os.environ:
        return False
    loaded = [name for name in ("torch", "faiss") if name in sys.modules]
    if loaded:
        logger.debug("OMP_WAIT_POLICY not set: %s already loaded", ", ".join(loaded))
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch intra-op threads, then restore them."""
    import torch

    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            torch.set_num_threads(previous)


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` faiss OpenMP threads, then restore them."""
    import faiss

    previous = faiss.omp_get_max_threads()
    if count != previous:
        faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            faiss.omp_set_num_threads(previous)
