"""Every interop test starts from the same PyTorch random state (order-independent inits)."""

import pytest


@pytest.fixture(autouse=True)
def _seed_torch():
    """Torch's global RNG seeded per test and restored afterwards (default inits)."""
    torch = pytest.importorskip('torch')
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
