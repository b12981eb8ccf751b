"""The run-time heap freeze: objects alive when a run starts are skipped by the collector until it ends."""

from __future__ import annotations

import gc
import weakref

from agentrft.heap import long_lived_objects_frozen


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_frozen_cycles_survive_collections_until_the_outermost_run_ends():
    assert gc.get_freeze_count() == 0
    node = Node()
    ref = weakref.ref(node)
    with long_lived_objects_frozen() as n:
        assert n > 1000  # the interpreter's own objects are in there too
        del node
        gc.collect()
        assert ref() is not None  # frozen: a full collection did not look at it
        inner = Node()
        inner_ref = weakref.ref(inner)
        with long_lived_objects_frozen():  # nested (an eval inside a run): no second freeze, no early unfreeze
            pass
        assert gc.get_freeze_count() > 1000
        del inner
        gc.collect()
        assert inner_ref() is None  # allocated during the run, not frozen by the nested entry: collected
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # handed back: collectable again


def test_freeze_is_released_when_the_run_raises():
    try:
        with long_lived_objects_frozen():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
