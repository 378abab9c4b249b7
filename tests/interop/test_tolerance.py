"""The parity tolerance scales with the reference's magnitude and still catches mismatches."""

import numpy as np
import pytest

from tests.interop import tolerance


def test_tolerance_scales_with_the_output():
    ref = np.array([3.0, -1.0, 0.5], np.float32)
    tolerance.assert_close(ref + 5e-4, ref)  # 1.7e-4 of the scale 3: float32 rounding.
    with pytest.raises(AssertionError):
        tolerance.assert_close(ref + 1e-2, ref)  # A real mismatch.
    small = np.array([0.01, -0.02], np.float32)
    tolerance.assert_close(small + 1e-4, small)  # Below 1 the bound stays absolute 2e-4.
    with pytest.raises(AssertionError):
        tolerance.assert_close(small + 1e-3, small)
    with pytest.raises(AssertionError):
        tolerance.assert_close(np.zeros(3), np.zeros(4))  # Shapes must agree.
