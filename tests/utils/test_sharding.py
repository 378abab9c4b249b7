"""Data parallelism: the same train steps on 1 and on 4 simulated CPU devices agree."""

import os
import subprocess
import sys

import numpy as np

_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, ml_collections, numpy as np, optax
from tldmi_jax import models
from tldmi_jax.defenses import transfer
from tldmi_jax.train import classifier
from tldmi_jax.utils import sharding

jax.config.update('jax_default_matmul_precision', 'highest')
model = models.get_model('small_tiny', 3)
v = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
plan = transfer.resolve(model, v['params'], v['batch_stats'],
                        ml_collections.ConfigDict({'fine_tune_from': 'block1'}))
tx = transfer.make_optimizer(optax.sgd(0.1, momentum=0.9), plan.labels)
state = classifier.TrainState(step=jnp.asarray(0), params=v['params'], batch_stats=v['batch_stats'],
                              opt_state=tx.init(v['params']), best_val=jnp.asarray(0.0),
                              best_step=jnp.asarray(0))
mesh = sharding.data_mesh(8)
state = sharding.replicate(state, mesh)
step = jax.jit(classifier.make_train_step(model, tx, plan, seed=0, flip=True))
rng = np.random.default_rng(0)
for _ in range(3):
    batch = sharding.shard_batch({'image': rng.uniform(size=(8, 16, 16, 3)).astype(np.float32),
                                  'label': rng.integers(0, 3, 8).astype(np.int32)}, mesh)
    assert len(batch['image'].sharding.device_set) == mesh.size
    state, _ = step(state, batch)
leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
np.savez(sys.argv[1], mesh_size=mesh.size, *leaves)
"""


def _run(devices, out):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    proc = subprocess.run(
        [sys.executable, '-c', _SCRIPT, out], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    return int(data['mesh_size']), [data[f'arr_{i}'] for i in range(len(data.files) - 1)]


def test_one_and_four_devices_agree(tmp_path):
    size1, one = _run(1, str(tmp_path / 'one.npz'))
    size4, four = _run(4, str(tmp_path / 'four.npz'))
    assert (size1, size4) == (1, 4)
    assert len(one) == len(four)
    for a, b in zip(one, four, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
