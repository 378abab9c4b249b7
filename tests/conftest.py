"""Test setup: persistent compilation cache, fast-compiling XLA, no network."""

import os

# Must be set before jax is imported by any test module.
_CACHE = os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Launcher subprocesses inherit these and compile like the in-process tests (shared cache).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402

jax.config.update('jax_disable_most_optimizations', True)
jax.config.update('jax_default_matmul_precision', 'highest')
