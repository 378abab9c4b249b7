"""BiDO (Peng et al., KDD 2022): bilateral dependency optimisation over hidden layers.

For every chosen hidden representation Z (flattened per example) the loss adds
`lambda_x * dep(X, Z) - lambda_y * dep(Z, Y)`: the dependency on the input X is minimised
and the dependency on the one-hot labels Y maximised. As in `AlanPeng0897/Defend_MI`
(`BiDO/hsic.py`, `BiDO/engine.py:multilayer_hsic`):

* kernels: Gaussian `exp(-||a - b||^2 / (2 sigma^2 d))` with sigma = 5 and d the
  representation's dimension, for X and Z; for Y a linear kernel `Y Y^T` (their default
  `--ktype=linear`) or the same Gaussian;
* `hsic` (their `hsic_normalized_cca`): with right-centred kernels `Kc = K H`
  (`H = I - 11^T / m`), `R = Kc (Kc + eps m I)^-1` (eps = 1e-5) and
  `dep = sum(Rx * Ry^T) = tr(Rx Ry)`, a normalised HSIC that is about the rank of the
  centred Gram matrix for identical inputs;
* `coco` (their `coco_normalized_cca`): `sqrt(||(H Kx H)(H Ky H)||_F) / m`;
* `hsic_biased` (not in the original; the textbook estimator, for comparison):
  `tr(Kx H Ky H) / (m - 1)^2`.

The hidden layers of their VGG16 are the outputs of blocks 1-4 (after each max-pool) and
the features (the BatchNorm1d output). Here the representations are captured without
changing the models, with `capture_intermediates` on named top-level modules: by default
the last unit of every stage but the last (the `block{b}`/`stage{s}` cut points of the
architecture, or its layer groups when it has none), max-pooled 2x2 for VGG to match the
original's block outputs, plus the model's features. `defense.bido_layers` names the
modules explicitly. Published VGG16 weights: (lambda_x, lambda_y) = (0.05, 0.5) for HSIC.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from tldmi_jax.models import layers as layers_lib
from tldmi_jax.models import vgg

MEASURES = ('hsic', 'coco', 'hsic_biased')
KERNELS = ('gaussian', 'linear')
EPSILON = 1e-5  # The original's ridge `epsilon * m` in the normalised HSIC.


def sq_distances(x: jax.Array) -> jax.Array:
    """Squared Euclidean distances; x [m, d] -> [m, m] (abs() as in the original)."""
    r = jnp.sum(x * x, axis=1, keepdims=True)
    return jnp.abs(r - 2.0 * x @ x.T + r.T)


def kernel_matrix(x: jax.Array, kind: str = 'gaussian', sigma: float = 5.0) -> jax.Array:
    """Gram matrix of the rows of x [m, d]: Gaussian (variance 2 sigma^2 d) or linear."""
    if kind == 'gaussian':
        return jnp.exp(-sq_distances(x) / (2.0 * sigma * sigma * x.shape[1]))
    if kind == 'linear':
        return x @ x.T
    raise ValueError(f'Unknown kernel {kind!r}; use one of {KERNELS}.')


def _centering(m: int) -> jax.Array:
    return jnp.eye(m, dtype=jnp.float32) - jnp.full((m, m), 1.0 / m, jnp.float32)


def hsic_normalized(kx: jax.Array, ky: jax.Array, epsilon: float = EPSILON) -> jax.Array:
    """The original's normalised HSIC `tr(Rx Ry)`, `R = K H (K H + eps m I)^-1`; [m, m] -> []."""
    m = kx.shape[0]
    h = _centering(m)
    ridge = epsilon * m * jnp.eye(m, dtype=kx.dtype)

    def resolvent(k):
        kc = k @ h
        # kc commutes with (kc + ridge)^-1, so kc @ inv(.) == solve(., kc).
        return jnp.linalg.solve(kc + ridge, kc)

    return jnp.sum(resolvent(kx) * resolvent(ky).T)


def coco(kx: jax.Array, ky: jax.Array) -> jax.Array:
    """The original's COCO `sqrt(||(H Kx H)(H Ky H)||_F) / m`; [m, m] -> []."""
    m = kx.shape[0]
    h = _centering(m)
    prod = (h @ kx @ h) @ (h @ ky @ h)
    return jnp.sqrt(jnp.sqrt(jnp.sum(prod * prod))) / m


def hsic_biased(kx: jax.Array, ky: jax.Array) -> jax.Array:
    """The biased HSIC estimator `tr(Kx H Ky H) / (m - 1)^2`; [m, m] -> []."""
    m = kx.shape[0]
    h = _centering(m)
    return jnp.trace(kx @ h @ ky @ h) / (m - 1) ** 2


_MEASURE_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'hsic': hsic_normalized,
    'coco': coco,
    'hsic_biased': hsic_biased,
}


def dependencies(
    hidden: jax.Array,
    data: jax.Array,
    targets: jax.Array,
    *,
    measure: str = 'hsic',
    sigma: float = 5.0,
    label_kernel: str = 'linear',
) -> tuple[jax.Array, jax.Array]:
    """`(dep(X, Z), dep(Z, Y))` for one hidden layer (the original's `hsic_objective`).

    Args:
      hidden: Z, [m, ...] (flattened per example).
      data: X, [m, ...] input images (flattened per example).
      targets: Y, [m, K] one-hot labels.
      measure: one of `MEASURES`.
      sigma: Gaussian kernel width.
      label_kernel: kernel on Y, one of `KERNELS`.

    Returns:
      Two scalars.
    """
    m = hidden.shape[0]
    dep = _MEASURE_FNS[measure]
    kz = kernel_matrix(hidden.reshape(m, -1).astype(jnp.float32), 'gaussian', sigma)
    kx = kernel_matrix(data.reshape(m, -1).astype(jnp.float32), 'gaussian', sigma)
    ky = kernel_matrix(targets.astype(jnp.float32), label_kernel, sigma)
    return dep(kz, kx), dep(kz, ky)


def check(measure: str, label_kernel: str, sigma: float, lambda_x: float, lambda_y: float):
    """Validates the BiDO hyperparameters.

    Raises:
      ValueError: for an unknown measure or kernel, sigma <= 0 or negative weights.
    """
    if measure not in MEASURES:
        raise ValueError(f'defense.bido_measure must be one of {MEASURES}, got {measure!r}.')
    if label_kernel not in KERNELS:
        raise ValueError(
            f'defense.bido_label_kernel must be one of {KERNELS}, got {label_kernel!r}.'
        )
    if not sigma > 0:
        raise ValueError(f'defense.bido_sigma must be > 0, got {sigma}.')
    if lambda_x < 0 or lambda_y < 0:
        raise ValueError(
            f'defense.bido_lambda_x/lambda_y must be >= 0, got ({lambda_x}, {lambda_y}).'
        )


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def _group_module(group_regex: str, modules: Sequence[str], paths: Sequence[str]) -> str | None:
    """The last (in natural order) top-level module owning parameters of a group."""
    pattern = re.compile(group_regex)
    owners = {p.split('/', 1)[0] for p in paths if pattern.fullmatch(p)}
    owners &= set(modules)
    return max(owners, key=_natural) if owners else None


def default_layers(model: nn.Module, params: Any) -> tuple[str, ...]:
    """The last module of every stage but the last (see the module docstring)."""
    groups = [(n, r) for n, r in model.layer_groups if n not in ('head', 'vib', 'stem')]
    names = [n for n, _ in groups]
    cuts = dict(getattr(model, 'cut_points', {}) or {})
    stage_keys = sorted((k for k in cuts if re.fullmatch(r'(block|stage)\d+', k)), key=_natural)
    starts = sorted({names.index(cuts[k]) for k in stage_keys if cuts[k] in names})
    if len(starts) >= 2:
        ends = [s - 1 for s in starts[1:]]  # The group before the next stage's first one.
    else:
        ends = list(range(len(names) - 1))
    paths = ['/'.join(k) for k in traverse_util.flatten_dict(params)]
    modules = sorted({p.split('/', 1)[0] for p in paths})
    out = [_group_module(groups[i][1], modules, paths) for i in ends if i >= 0]
    return tuple(m for m in out if m is not None)


def resolve_layers(model: nn.Module, params: Any, layers: str = '') -> tuple[str, ...]:
    """Top-level module names whose outputs are regularised (plus the features).

    Args:
      model: the classifier (possibly wrapped).
      params: its parameters (arrays or shapes).
      layers: comma-separated module names; empty for `default_layers`.

    Raises:
      ValueError: for a name that is no top-level module with parameters.
    """
    modules = sorted({k[0] for k in traverse_util.flatten_dict(params)}, key=_natural)
    if not layers:
        return default_layers(model, params)
    names = tuple(n.strip() for n in layers.split(',') if n.strip())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f'defense.bido_layers: unknown modules {unknown}; modules are {modules}.')
    return names


def capture_filter(layers: Sequence[str]) -> Callable[[nn.Module, str], bool]:
    """A `capture_intermediates` filter keeping the `__call__` outputs of `layers`."""
    wanted = frozenset(layers)

    def keep(module: nn.Module, method_name: str) -> bool:
        return method_name == '__call__' and '/'.join(module.scope.path) in wanted

    return keep


def pools_blocks(model: nn.Module) -> bool:
    """Whether captured unit outputs are max-pooled 2x2 (VGG: the original's block outputs)."""
    return isinstance(getattr(model, 'inner', model), vgg.VGG)


def hidden_representations(
    intermediates: Any, layers: Sequence[str], features: jax.Array, pool: bool
) -> list[jax.Array]:
    """The captured outputs of `layers` (pooled if `pool`), then the features."""
    out = []
    for name in layers:
        h = intermediates[name]['__call__'][0]
        if pool and h.ndim == 4:
            h = layers_lib.max_pool(h, 2, 2)
        out.append(h)
    return [*out, features]
