"""Trainer step bookkeeping."""

import pytest

from tldmi_jax.utils import loop


def test_schedule():
    sched = loop.make_schedule(100, 8, epochs=3)
    assert (sched.steps_per_epoch, sched.total_steps) == (12, 36)
    assert loop.make_schedule(100, 8, epochs=3, total_steps=5).total_steps == 5
    assert sched.every(0) == 12 and sched.every(4) == 4
    assert sched.due(24, 12) and sched.due(36, 10) and not sched.due(25, 12)
    with pytest.raises(ValueError, match='Batch size 64 exceeds the 10 public images'):
        loop.make_schedule(10, 64, epochs=1, what='public images')
