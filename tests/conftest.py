"""Test setup: the Triton interpreter for CPU runs, and fresh but reproducible random inputs."""

import os
import random

# Must be set before any module defining @triton.jit functions is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# A new seed every run (fresh inputs), printed in the header so a failure can be replayed
# with SALT_FAST_TEST_SEED=<seed>.
SEED = int(os.environ.get("SALT_FAST_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"SALT_FAST_TEST_SEED={SEED}"


def pytest_terminal_summary(terminalreporter):
    # The header is hidden under -q (the README's test command); repeat the seed at the end.
    terminalreporter.write_line(f"replay with SALT_FAST_TEST_SEED={SEED}")


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + sum(map(ord, request.node.nodeid)))
