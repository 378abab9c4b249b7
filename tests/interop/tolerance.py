"""One tolerance for every PyTorch parity test: relative to the scale of the output.

float32 rounding grows with the size of the values compared: training-mode features of
magnitude 1-3 after 13 conv + BatchNorm layers differ from PyTorch's by about 1e-4 on some
machines (a fixed `atol=1e-4` failed there) while a wrong weight mapping differs by O(1).
`assert_close` allows `REL` times the largest reference magnitude (at least 1), so the
tests are as strict on small outputs as before and not flaky on large ones.
"""

import numpy as np

REL = 2e-4  # Of max(1, max |reference|): 2-4x the worst float32 difference observed.


def tolerance(ref: np.ndarray, rel: float = REL) -> float:
    """The absolute tolerance for comparing against `ref`."""
    ref = np.asarray(ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return rel * max(1.0, scale)


def assert_close(got, ref, what: str = '', rel: float = REL) -> float:
    """Asserts equal shapes and `|got - ref| <= tolerance(ref)`; returns the max difference."""
    ref = ref.detach().numpy() if hasattr(ref, 'detach') else np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=0, atol=tolerance(ref, rel), err_msg=what)
    return float(np.max(np.abs(got - ref))) if got.size else 0.0
