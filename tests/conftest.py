"""Test-wide settings. TRITON_INTERPRET must be set before any Triton kernel module is imported,
so the kernels run on CPU tensors under the interpreter."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
