"""Data parallelism: the same train steps (plain and DP-SGD) and the Fisher information of
the trained model on 1 and on 4 simulated CPU devices agree.

The DP-SGD and Fisher parts compute per-example convolution gradients, which XLA's SPMD
partitioning of `vmap(grad)` gets wrong (`sharding.per_device` is the fix they test).
"""

import subprocess
import sys

import numpy as np

from tests.launch import crash

_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, ml_collections, numpy as np, optax
from tldmi_jax import config_lib, defenses, models
from tldmi_jax.analysis import fisher
from tldmi_jax.defenses import transfer
from tldmi_jax.train import classifier
from tldmi_jax.utils import sharding

jax.config.update('jax_default_matmul_precision', 'highest')
model = models.get_model('small_tiny', 3)
v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
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
# DP-SGD (every layer trainable, noise on): per-example gradients, clipped and noised.
spec = config_lib.classifier_config(dataset='synthetic', arch='small_tiny', num_classes=3,
                                    image_size=16, channels=3, lr=0.1, epochs=1, batch_size=8,
                                    defense='dpsgd').defense  # dp_clip_norm = noise = 1.0
dp_plan = transfer.resolve(model, v['params'], v['batch_stats'], spec)
dp_tx = transfer.make_optimizer(optax.sgd(0.1), dp_plan.labels)
objective = defenses.build(spec, model, v['params'], dp_plan, num_classes=3, train_size=80,
                           batch_size=8, steps_per_epoch=10, total_steps=10, mesh=mesh)
dp_state = sharding.replicate(state.replace(step=jnp.asarray(0), params=v['params'],
                                            opt_state=dp_tx.init(v['params'])), mesh)
dp_step = jax.jit(classifier.make_train_step(model, dp_tx, dp_plan, seed=0, flip=False,
                                             objective=objective))
for _ in range(3):
    batch = sharding.shard_batch({'image': rng.uniform(size=(8, 16, 16, 3)).astype(np.float32),
                                  'label': rng.integers(0, 3, 8).astype(np.int32)}, mesh)
    dp_state, _ = dp_step(dp_state, batch)
leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats, dp_state.params)))
np.savez(sys.argv[1], mesh_size=mesh.size, *leaves)
# Fisher information of the trained model: 20 examples in chunks of 8 split over the devices.
estimator = fisher.FisherEstimator(fisher.classifier_loss(model, state.batch_stats), 8)
xs = rng.uniform(size=(20, 16, 16, 3)).astype(np.float32)
ys = rng.integers(0, 3, 20)
info, n = estimator.run(state.params, [(xs, ys)])
assert n == 20 and estimator.mesh.size == mesh.size
# Per tensor (what fisher.analyze computes), each device summing its own examples' norms.
loss = fisher.classifier_loss(model, state.batch_stats)
sums, _ = fisher.FisherEstimator(loss, 8, per='tensor').run(state.params, [(xs, ys)])
np.savez(sys.argv[1] + '.fisher.npz', *jax.tree.leaves(info), *jax.tree.leaves(sums))
"""


def _run(devices, out):
    proc = subprocess.run(
        [sys.executable, '-c', _SCRIPT, out],
        env=crash.cpu_devices_env(devices),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    info = np.load(out + '.fisher.npz')
    return (
        int(data['mesh_size']),
        [data[f'arr_{i}'] for i in range(len(data.files) - 1)],
        [info[f'arr_{i}'] for i in range(len(info.files))],
    )


def test_one_and_four_devices_agree(tmp_path):
    size1, one, fisher1 = _run(1, str(tmp_path / 'one.npz'))
    size4, four, fisher4 = _run(4, str(tmp_path / 'four.npz'))
    assert (size1, size4) == (1, 4)
    assert len(one) == len(four)
    for a, b in zip(one, four, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Squared per-example gradients of parameters that differ in the last bits, summed in
    # another order: float32 rounding only (7e-5 relative observed). Without
    # `sharding.per_device` the conv layers' values are off by a factor of about 5.
    assert len(fisher1) == len(fisher4)
    for a, b in zip(fisher1, fisher4, strict=True):
        np.testing.assert_allclose(a, b, rtol=5e-4, atol=1e-9)
    # The per-tensor sums (second half): the per-parameter values summed, on both meshes.
    half = len(fisher1) // 2
    for i in range(half):
        assert fisher1[half + i].shape == ()
        np.testing.assert_allclose(fisher1[half + i], fisher1[i].sum(), rtol=1e-5)
        np.testing.assert_allclose(fisher4[half + i], fisher1[i].sum(), rtol=5e-4)
