"""loop.FiniteGuard: the first non-finite loss or parameter stops training, naming the step."""

import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax.utils import loop


class _Manager:
    def __init__(self, latest):
        self.latest, self.waited = latest, False

    def wait_until_finished(self):
        self.waited = True

    def latest_step(self):
        return self.latest


def test_finite_metrics_pass():
    guard = loop.FiniteGuard()
    guard.check({'train/loss': [jnp.float32(1.0)] * 3}, 3, params={'w': jnp.ones(2)})


def test_first_bad_step_last_metrics_and_kept_checkpoint_are_named():
    guard = loop.FiniteGuard()
    guard.record(10, {'train/loss': 0.5, 'train/acc@1': 0.75, 'train/epoch': 1.0})
    acc = {
        'd/loss': [jnp.float32(v) for v in (1.0, 2.0, np.inf, np.nan)],  # steps 11..14
        'g/loss': [jnp.float32(np.nan)],  # Logged less often: mapped to the window's end.
    }
    mngr = _Manager(10)
    with pytest.raises(loop.NonFiniteError) as err:
        guard.check(acc, 14, mngr)
    message = str(err.value)
    assert message.startswith('non-finite loss at step 13 (d/loss=inf)')
    assert 'last finite metrics (step 10): train/loss=0.5, train/acc@1=0.75' in message
    assert 'the last good checkpoint (step 10) is kept' in message and mngr.waited


def test_non_finite_parameters_are_caught_before_saving():
    with pytest.raises(loop.NonFiniteError, match='non-finite parameters after step 4'):
        loop.FiniteGuard().check({}, 4, _Manager(None), params={'w': jnp.array([1.0, jnp.nan])})
