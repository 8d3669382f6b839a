"""Test-wide settings.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so the kernels run on
CPU tensors under the interpreter. Tests use one intra-op thread: their tensors are small, and on
a 2-core machine OpenMP threads busy-wait at every barrier, so a second thread that another
process has descheduled makes small ops up to 100x slower. OMP_NUM_THREADS=1 also pins the count
for the commands the tests run (in this process and in subprocesses), so
`fdm_cli.runtime.threads` does not adapt it and runs stay bit-reproducible;
tests/fdm_cli/test_threads.py covers the adapting.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "FDM_DATA_CACHE" not in os.environ:  # decoded data caches (fdm_cli.data.cache): not ~/.cache
    os.environ["FDM_DATA_CACHE"] = tempfile.mkdtemp(prefix="fdm-test-data-cache-")
    atexit.register(shutil.rmtree, os.environ["FDM_DATA_CACHE"], ignore_errors=True)

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-plugins",
        action="store_true",
        default=False,
        help="also fuzz the transforms of installed third-party fdm plugins "
        "(tests/fdm_transforms/test_fuzz_transforms.py); or set FDM_FUZZ_PLUGINS=1",
    )
