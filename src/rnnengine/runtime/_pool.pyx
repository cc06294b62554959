# Pool bookkeeping in C. Resolving a step's stream ids to slots is per-id work (type check,
# lookup, repeat check) that costs ~0.15 us per id as interpreted Python or several NumPy
# calls; here it is one pass over the list. The arithmetic itself stays in _kernels.
from cpython.long cimport PyLong_AsLongLong

import numpy as np

# Status codes of resolve_ids; pool.py turns them into exceptions naming the id.
OK = 0
NOT_AN_INT = 1
NOT_OPEN = 2
REPEATED = 3


def resolve_ids(list ids, const long long[::1] sid_at, long long[::1] stamp, long long mark,
                Py_ssize_t[::1] slots):
    """ids: list of k stream ids -> slots[:k] (slot of each id, same order).

    A stream id is ``generation * capacity + slot``; it is open when ``sid_at[slot] == id``.
    ``stamp`` [capacity] remembers the last ``mark`` that named each slot, so a repeat is found
    without clearing anything (the caller passes a new mark per call).
    Returns ``(status, j)``: OK, or the first failing index j with NOT_AN_INT / NOT_OPEN /
    REPEATED."""
    cdef Py_ssize_t k = len(ids)
    cdef Py_ssize_t capacity = sid_at.shape[0]
    cdef Py_ssize_t j, slot
    cdef long long sid
    cdef object item
    for j in range(k):
        item = ids[j]
        if type(item) is not int:
            # bool is an int subclass but never an id; NumPy integers are welcome.
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                return NOT_AN_INT, j
            item = int(item)
        try:
            sid = PyLong_AsLongLong(item)
        except OverflowError:
            return NOT_OPEN, j
        if sid < 0:
            return NOT_OPEN, j
        slot = <Py_ssize_t>(sid % capacity)
        if sid_at[slot] != sid:
            return NOT_OPEN, j
        if stamp[slot] == mark:
            return REPEATED, j
        stamp[slot] = mark
        slots[j] = slot
    return OK, -1
