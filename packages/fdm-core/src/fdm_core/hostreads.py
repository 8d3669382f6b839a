"""Counting the reads of tensor values back to the host, the calls that stall a GPU queue.

On a GPU, ``t.item()``, ``float(t)``, ``bool(t)``, ``t.tolist()``, ``t.cpu()`` or
``torch.nonzero`` wait until every kernel queued before them has run: a training step that makes
one cannot run ahead of the device, and cannot be captured in a CUDA graph. ``HostReads`` counts
those calls on any device (CPU included, where they cost nothing), so a test or a benchmark can
check a step for them on a machine without a GPU. It sees calls made from Python; an op that
synchronises inside its C++ kernel (``repeat_interleave`` with tensor repeats, boolean-mask
indexing) is not seen, so on CUDA the tests also run under ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

from torch.overrides import TorchFunctionMode

READS = frozenset(
    {"item", "tolist", "nonzero", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}
)
"""Names of the tensor functions that bring values to the host (`torch.nonzero` included)."""


class HostReads(TorchFunctionMode):
    """``with HostReads() as reads: ...`` counts the calls in `READS` made inside the block:
    `counts` by function name, `sites` the first line outside torch that made each."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.sites: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS:
            self.counts[name] += 1
            self.sites.append(f"{name} at {_caller()}")
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    """file:line of the innermost frame that is not in torch or in this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("hostreads.py"):
            return f"{frame.filename}:{frame.lineno}"
    return "?"
