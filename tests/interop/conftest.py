"""Every interop test starts from the same PyTorch random state (order-independent inits)."""

import pytest


@pytest.fixture(autouse=True)
def _seed_torch():
    torch = pytest.importorskip('torch')
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)
