"""Which Arrow memory pool a data step allocates from.

pyarrow's default pool is mimalloc, which hands freed pages back to the kernel within milliseconds; a
step that streams a few hundred MB of chunks then faults fresh pages in again for every chunk. On the
project's (virtualised) machines those faults made ~40% of ingest's CPU time at a million events
(2.4 s of system time out of 7 s; see tests/benchmarks/RESULTS.md). jemalloc keeps freed pages for
reuse a while, which took system time to 0.65 s. The pool is switched only for the step's own work
and restored afterwards; ``ARROW_DEFAULT_MEMORY_POOL``, when the user sets it, always wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa


@contextmanager
def step_memory_pool() -> Iterator[pa.MemoryPool]:
    """Allocate from jemalloc (else the system allocator) inside the block, unless the user chose a pool."""
    previous = pa.default_memory_pool()
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield previous
        return
    backends = pa.supported_memory_backends()
    pool = pa.jemalloc_memory_pool() if "jemalloc" in backends else pa.system_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield pool
    finally:
        pa.set_memory_pool(previous)
