"""The sharded latent search gives the same latents on 1 and on 4 simulated CPU devices."""

import os
import subprocess
import sys

import numpy as np

_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np, optax
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
np.savez(sys.argv[1], latents=np.asarray(latents), devices=jax.device_count())
"""


def _run(devices, out):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    proc = subprocess.run(
        [sys.executable, '-c', _SCRIPT, out], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def test_sharded_search_matches_single_device(tmp_path):
    one = _run(1, str(tmp_path / 'one.npz'))
    four = _run(4, str(tmp_path / 'four.npz'))
    assert int(one['devices']) == 1 and int(four['devices']) == 4
    np.testing.assert_allclose(four['latents'], one['latents'], atol=1e-5)
