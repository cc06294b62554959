"""Type stub of the compiled module rnnengine.runtime._pool (src/rnnengine/runtime/_pool.pyx)."""
from typing import Tuple

import numpy as np

OK: int
NOT_AN_INT: int
NOT_OPEN: int
REPEATED: int

def resolve_ids(ids: list, sid_at: np.ndarray, stamp: np.ndarray, mark: int,
                slots: np.ndarray) -> Tuple[int, int]: ...
