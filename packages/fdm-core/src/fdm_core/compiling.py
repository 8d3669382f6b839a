"""The ``torch.compile`` settings shared by every compiled piece of fdm: the training step
(``fdm train --compile``, docs/design.md §6.5) and the sampler's per-stage step
(``SamplerConfig.compile``, §7.3).

``$FDM_COMPILE_BACKEND`` names the backend (default inductor; the tests use aot_eager, which
skips inductor's C++ build), ``$FDM_COMPILE_MODE`` the mode (default torch's;
``reduce-overhead`` adds CUDA graphs on a GPU). Shapes are static (``dynamic=False``): each
stage's batch is one graph.
"""

from __future__ import annotations

import os

COMPILE_BACKEND_ENV = "FDM_COMPILE_BACKEND"
COMPILE_MODE_ENV = "FDM_COMPILE_MODE"


def compile_options() -> dict[str, object]:
    """Keyword arguments of ``torch.compile`` from the environment (see the module docstring)."""
    options: dict[str, object] = {
        "backend": os.environ.get(COMPILE_BACKEND_ENV, "inductor"),
        "dynamic": False,
    }
    if mode := os.environ.get(COMPILE_MODE_ENV):
        options["mode"] = mode
    return options
