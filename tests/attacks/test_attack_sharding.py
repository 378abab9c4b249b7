"""The sharded latent search gives the same latents on 1 and on 4 simulated CPU devices,
for a linear problem and for one through a conv net (per-instance input gradients)."""

import subprocess
import sys

import numpy as np

from tests.launch import crash

_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from tldmi_jax import models
from tldmi_jax.attacks import latent_search

jax.config.update('jax_default_matmul_precision', 'highest')
W = jax.random.normal(jax.random.key(42), (6, 5))

def loss(z, label, key):
    return -jax.nn.log_softmax(jnp.tanh(z) @ W)[label] + 0.01 * jax.random.normal(key, ()), {}

problem = latent_search.Problem(init=lambda k: jax.random.normal(k, (6,)), loss=loss,
                                tx=optax.sgd(0.1, momentum=0.9, nesterov=True),
                                project=lambda z: jnp.clip(z, -1, 1))
search = latent_search.LatentSearch(problem, num_seeds=2, key=jax.random.key(3), checkpoint_every=5)
latents, images, _ = search.run_batch(np.arange(8, dtype=np.int32) % 5, 15)
# Latent images through a tiny CNN with BatchNorm (inference): conv input gradients.
net = models.get_model('small_tiny', 5)
net_vars = jax.jit(net.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))

def conv_loss(z, label, key):
    logits = net.apply(net_vars, jax.nn.sigmoid(z)[None], train=False)[1][0]
    return -jax.nn.log_softmax(logits)[label] + 0.01 * jax.random.normal(key, ()), {}

conv = latent_search.Problem(init=lambda k: jax.random.normal(k, (8, 8, 3)), loss=conv_loss,
                             tx=optax.adam(0.05))
conv_search = latent_search.LatentSearch(conv, num_seeds=2, key=jax.random.key(4),
                                         checkpoint_every=5)
conv_latents, _, _ = conv_search.run_batch(np.arange(8, dtype=np.int32) % 5, 10)
np.savez(sys.argv[1], latents=np.asarray(latents), conv=np.asarray(conv_latents),
         devices=jax.device_count())
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
    return np.load(out)


def test_sharded_search_matches_single_device(tmp_path):
    one = _run(1, str(tmp_path / 'one.npz'))
    four = _run(4, str(tmp_path / 'four.npz'))
    assert int(one['devices']) == 1 and int(four['devices']) == 4
    np.testing.assert_allclose(four['latents'], one['latents'], atol=1e-5)
    # Float32 reductions in another order inside the conv net, over 10 Adam steps.
    np.testing.assert_allclose(four['conv'], one['conv'], atol=1e-5)
