"""A small cache of what a fast kernel derives from a sparse structure, owned by its driver.

The fast kernels need, besides a CSR structure's ``indptr`` and ``indices``, things derived
from it once per pattern — a sparse weight's transposed structure and its block pointers,
an attention pattern's shared key runs. Building them on every call would cost more than
the product; so each driver keeps them here, keyed by the *identity* of the index arrays
(and a few extra numbers, such as a block count):

- a pattern change (pruning, SET, RigL, loading a checkpoint) makes new index arrays, so a
  new pattern is never served an old result, while an optimizer step (which writes values
  only) keeps it;
- the cache holds the index arrays only through weak references, so it never keeps a
  pattern alive, and an entry leaves the cache when its arrays are freed (an id is never
  reused while its entry is here);
- with ``size`` given, at most that many entries stay (the oldest go first). The drivers
  give none: a bound smaller than the number of live patterns (a model's sparse layers
  times the block counts each is run with) would rebuild entries on every step, and
  entries already leave with their arrays, as the attributes this cache replaced did.

Index arrays are treated as immutable, as everywhere in refsparse: writing into them in
place is not seen. Nothing is set on the caller's objects.
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["PatternCache"]


class PatternCache:
    """``cache.get(arrays, extra, build)``: ``build()``, remembered for the identity of
    each array of ``arrays`` (a tuple of ndarrays) and the hashable ``extra``."""

    def __init__(self, size=None):
        self.size = None if size is None else int(size)
        self._entries = {}  # key -> (weak refs to arrays, value), oldest first
        self._lock = threading.RLock()  # reentrant: a freed array's callback may run while it is held

    def get(self, arrays, extra, build):
        key = tuple(id(a) for a in arrays) + (extra,)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and all(r() is a for r, a in zip(entry[0], arrays)):
                return entry[1]
        value = build()
        drop = lambda _ref, key=key: self._forget(key)  # noqa: E731  an array freed: its entries go
        refs = tuple(weakref.ref(a, drop) for a in arrays)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (refs, value)
            while self.size is not None and len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]
        return value

    def _forget(self, key):
        with self._lock:
            self._entries.pop(key, None)

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)
