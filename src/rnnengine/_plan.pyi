"""Type stub of the compiled module rnnengine._plan (src/rnnengine/_plan.pyx)."""
from typing import Any, Callable, Dict, List, Optional

import numpy as np

class StepRunner:
    def __init__(self, feeds: list, outputs: list, ops: list, n_buffers: int,
                 fixed: Dict[int, np.ndarray], lock: Any, fallback: Callable,
                 label: str) -> None: ...
    @property
    def ops(self) -> List[str]: ...
    def step(self, feeds: Optional[dict] = None) -> List[np.ndarray]: ...
