"""Label smoothing: targets, PPA's warm-up schedule (and the code's slope), the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tldmi_jax.defenses import label_smoothing


def test_smoothed_targets_by_hand():
    t = label_smoothing.smoothed_targets(jnp.array([1, 3]), 4, -0.05)
    # (1 - a) * onehot + a / K with a = -0.05, K = 4: 1.0375 on the label, -0.0125 elsewhere.
    expected = np.full((2, 4), -0.0125, np.float32)
    expected[0, 1] = expected[1, 3] = 1.0375
    np.testing.assert_allclose(t, expected, rtol=1e-6)
    np.testing.assert_allclose(t.sum(-1), [1.0, 1.0], rtol=1e-6)
    positive = label_smoothing.smoothed_targets(jnp.array([0]), 5, 0.1)
    np.testing.assert_allclose(positive, [[0.92, 0.02, 0.02, 0.02, 0.02]], rtol=1e-6)


class ScheduleTest(parameterized.TestCase):
    @parameterized.parameters(
        (0, 0.0),
        (49, 0.0),
        (50, -0.05 * 1 / 25),
        (62, -0.05 * 13 / 25),
        (74, -0.05),  # The ramp reaches alpha at the end epoch.
        (75, -0.05),
        (150, -0.05),
    )
    def test_negative_warm_up(self, epoch, expected):
        got = label_smoothing.alpha_at(epoch, -0.05, start_epoch=50, end_epoch=75)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)

    @parameterized.parameters(
        (49, 0.0),
        (50, -0.05 * 1 / 50),
        (74, -0.05 * 25 / 50),  # PPA's code, 100 epochs: half of alpha, ...
        (75, -0.05),  # ... then a jump.
    )
    def test_original_ramp(self, epoch, expected):
        got = label_smoothing.alpha_at(
            epoch, -0.05, start_epoch=50, end_epoch=75, num_epochs=100, original_ramp=True
        )
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)

    @parameterized.parameters(0, 50, 74, 200)
    def test_positive_has_no_schedule(self, epoch):
        np.testing.assert_allclose(label_smoothing.alpha_at(epoch, 0.1), 0.1, rtol=1e-6)

    def test_traced_epoch(self):
        f = jax.jit(lambda e: label_smoothing.alpha_at(e, -0.05, start_epoch=2, end_epoch=4))
        got = [float(f(jnp.int32(e))) for e in range(6)]
        np.testing.assert_allclose(got, [0, 0, -0.025, -0.05, -0.05, -0.05], atol=1e-7)


def test_cross_entropy_by_hand():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    alpha = -0.05
    logp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    targets = np.full((2, 3), alpha / 3)
    targets[0, 0] += 1 - alpha
    targets[1, 2] += 1 - alpha
    expected = -(targets * logp).sum(-1)
    np.testing.assert_allclose(
        label_smoothing.cross_entropy(logits, labels, alpha), expected, rtol=1e-5
    )
    # alpha = 0 is the plain cross-entropy.
    plain = -logp[[0, 1], [0, 2]]
    np.testing.assert_allclose(label_smoothing.cross_entropy(logits, labels, 0.0), plain, rtol=1e-5)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match='ls_alpha must be < 1'):
        label_smoothing.check(1.0, 50, 75)
    with pytest.raises(ValueError, match='ls_start_epoch < defense.ls_end_epoch'):
        label_smoothing.check(-0.05, 75, 50)
    label_smoothing.check(0.1, 75, 50)  # Positive smoothing ignores the window.
    with pytest.raises(ValueError, match='num_epochs > start_epoch'):
        label_smoothing.alpha_at(0, -0.05, num_epochs=40, original_ramp=True)
