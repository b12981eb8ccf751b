"""Keep Python's cyclic garbage collector off the long-lived heap while a run is going.

A loaded model, tokenizer, transformers and torch leave hundreds of thousands of tracked objects on the heap.
Every full (oldest generation) collection walks all of them — on a small model's GRPO run, a pause as long as a
whole step every few dozen steps, landing inside whatever happened to allocate (a chat-template render, a store
write); the figures are in docs/benchmarks.md. ``gc.freeze()`` moves what
exists at the start of a run into a permanent generation that collections skip; what the run allocates is
still collected as usual. The objects are handed back (``gc.unfreeze()``) when the outermost run ends, so a
process that runs several trainings (tests, notebooks) can still free the first one's cycles.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0


@contextmanager
def long_lived_objects_frozen() -> Iterator[int]:
    """Collect once, freeze everything alive, yield the number of frozen objects; unfreeze at the outermost exit."""
    global _depth
    if _depth == 0:
        gc.collect()
        gc.freeze()
    _depth += 1
    try:
        yield gc.get_freeze_count()
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
