"""tldmi_jax: model-inversion robustness (TL-DMI) in JAX/Flax."""

__version__ = '0.1.0'
