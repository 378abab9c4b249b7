"""Sums of squared per-example gradients without per-example weight-gradient convolutions.

`jax.vmap(jax.grad(loss))` gives every example its own weight gradients; for a convolution,
`vmap` turns the weight gradient into one convolution grouped over the examples, which
XLA:CPU runs slowly, and summing the squares of the stacked [N, ...] gradients over N is slow
on XLA:CPU as well (issue 15). `squared_sum(loss)` below returns
`sum_n w_n (d loss_n / d theta)^2` from one vmapped backward pass with respect to the layers'
OUTPUTS (ordinary batched convolutions, no weight gradients) and forms each example's weight
gradient of a layer from the layer's input x and output gradient dy:

* `nn.Conv`: one product per kernel tap t, `kernel[t] = x_t^T dy` with x_t the input window
  the tap sees (padded, dilated and strided as the convolution does; im2col without
  materialising the patches; feature groups included), `bias = sum dy`; the same for
  `models.layers.DepthwiseConv` (a depthwise `nn.Conv` computed as slices);
* `nn.Dense`: `kernel = x^T dy`, `bias = sum dy` (over every axis but the features); with
  one row per example the squares are summed without forming the per-example kernels:
  `sum_n w_n (x_n dy_n^T)^2 = (w x^2)^T (dy^2)`;
* `layers.BatchNorm` in inference mode: `scale = sum dy * x_hat`, `bias = sum dy`;
* `layers.PReLU`: `alpha = sum dy * min(x, 0)`.

The per-example gradients are squared and added up one example at a time (`fori_loop`), so
only one example's gradients exist at once. VGG16 at 64 px, chunks of 8 on 2 CPU cores:
0.10-0.12 s/example against 0.20-0.37 for `vmap(grad)` (measurements: docs/evaluation.md).

`squared_norms(loss)` gives each parameter tensor's sum of those squares, one number per
tensor (all the per-layer Fisher means need), and needs less: a layer whose squared norm
has a closed form is done for all examples at once without its per-example gradient
(`norms`): a dense layer with one row per example (`||x||^2 ||dy||^2`), BatchNorm and
PReLU, and a convolution with few output positions and many channels through Gram matrices
over its P output positions, `||sum_p dy_p^T x~_p||^2 = sum_{p,q} (dy_p . dy_q)(x~_p . x~_q)`
(x~_p the input patch position p sees), where 2 P^2 (C k + O) FLOPs undercut the per-tap
products' 2 P O C k. Every other layer's per-example gradient is squared and summed to one
number inside the loop, so no per-parameter total is kept either.

A method interceptor (`nn.intercept_methods`) adds a zero perturbation to each such layer's
output, so that the gradient with respect to the perturbation is the gradient with respect
to the output, and records what the formula needs from the input. Every other parameter,
and every parameter of a layer this cannot see reliably, is differentiated directly in the
same backward pass, as `jax.vmap(jax.grad)` does:

* layers of other types or configurations (transposed, circular, masked or injected-op
  convolutions, flax's own BatchNorm, BatchNorm with batch statistics, ...);
* layers called while another method interceptor runs inside this one (MID's VIB splices
  its bottleneck into the `fc` call that way), since that interceptor may change the
  layer's input after this one recorded it;
* a layer whose formula would give a gradient of another shape than its parameter.

The loss must use a layer's parameters only through that layer's calls (as the library's
classifiers do): a parameter also read elsewhere (weight tying, a penalty on the weights)
would lose that part of its gradient. tests/analysis/test_per_example.py compares the
result with `jax.vmap(jax.grad)` on every layer configuration the model zoo uses and checks
that every parameter of every architecture of `tldmi_jax.models.ARCHS` gets a formula.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import linear

from tldmi_jax.models import layers

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
Path = tuple[str, ...]


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def _rows(x: jax.Array, trailing: int) -> jax.Array:
    """`x` with every axis before the last `trailing` ones merged into one."""
    keep = x.shape[x.ndim - trailing :]
    return x.reshape((math.prod(x.shape[: x.ndim - trailing]), *keep))


# Full float32 products on every backend (a GPU's default would round the inputs to TF32).
_einsum = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)


def _weighted_squares(w: jax.Array, g: jax.Array) -> jax.Array:
    """`sum_n w_n ||g_n||^2` of per-example values `g` [N, ...]."""
    return _einsum('n,n->', w, jnp.sum(jnp.square(g.reshape(len(g), -1)), axis=1))


@dataclasses.dataclass(frozen=True)
class _Dense:
    """`nn.Dense`: y = x W + b over the last axis."""

    use_bias: bool

    def record(self, module: nn.Module, x: jax.Array) -> jax.Array:
        return x

    def one(self, x: jax.Array, dy: jax.Array) -> dict[str, jax.Array]:
        x, dy = _rows(x, 1), _rows(dy, 1)
        out = {'kernel': _einsum('pi,po->io', x, dy)}
        if self.use_bias:
            out['bias'] = dy.sum(0)
        return out

    def squared(self, x: jax.Array, dy: jax.Array, w: jax.Array) -> dict[str, jax.Array] | None:
        """With one row per example: sum_n w_n (x_n dy_n^T)^2 = (w x^2)^T dy^2 (else None)."""
        if math.prod(x.shape[1:-1]) != 1:
            return None
        x, dy = x.reshape(len(x), -1), dy.reshape(len(dy), -1)
        out = {'kernel': _einsum('ni,no->io', w[:, None] * x * x, dy * dy)}
        if self.use_bias:
            out['bias'] = _einsum('n,no->o', w, dy * dy)
        return out

    def norms(self, x: jax.Array, dy: jax.Array, w: jax.Array) -> dict[str, jax.Array] | None:
        """With one row per example: ||x_n dy_n^T||^2 = ||x_n||^2 ||dy_n||^2 (else None)."""
        if math.prod(x.shape[1:-1]) != 1:
            return None
        x2 = jnp.sum(jnp.square(x.reshape(len(x), -1)), axis=1)
        dy2 = jnp.sum(jnp.square(dy.reshape(len(dy), -1)), axis=1)
        out = {'kernel': _einsum('n,n->', w, x2 * dy2)}
        if self.use_bias:
            out['bias'] = _einsum('n,n->', w, dy2)
        return out

    def finish(self, name: str, g: jax.Array) -> jax.Array:
        return g


@dataclasses.dataclass(frozen=True)
class _Conv:
    """`nn.Conv` (shared weights): its weight gradient as one product per kernel tap."""

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Any  # As `lax.conv_general_dilated` takes it: a string or (low, high) pairs.
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]
    groups: int
    use_bias: bool

    def record(self, module: nn.Module, x: jax.Array) -> jax.Array:
        return x

    def _windows(self, x: jax.Array, dy: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """`([x_t [P, C] for each kernel tap t], dy [P, O])` of one example: x_t is the
        input window tap t sees at the P output positions (padded, dilated and strided as
        the convolution does; the layer's own batch axes merged into the positions)."""
        spatial = len(self.kernel_size)
        x = _rows(x, spatial + 1)  # [B, *spatial, C]: the layer's own batch axes merged.
        dy = _rows(dy, spatial + 1)
        sizes, out_sizes = x.shape[1:-1], dy.shape[1:-1]
        pads = self.padding
        if isinstance(pads, str):
            dilated = [(n - 1) * d + 1 for n, d in zip(sizes, self.input_dilation, strict=True)]
            window = [
                (k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation, strict=True)
            ]
            pads = jax.lax.padtype_to_pads(dilated, window, self.strides, pads)
        # The input as the convolution sees it: padded and dilated (zeros in between).
        inner = [(lo, hi, d - 1) for (lo, hi), d in zip(pads, self.input_dilation, strict=True)]
        x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *inner, (0, 0, 0)])
        channels = x.shape[-1]
        windows = []
        for tap in np.ndindex(*self.kernel_size):
            begin = [t * d for t, d in zip(tap, self.kernel_dilation, strict=True)]
            end = [
                b + (n - 1) * s + 1 for b, n, s in zip(begin, out_sizes, self.strides, strict=True)
            ]
            seen = jax.lax.slice(x, [0, *begin, 0], [len(x), *end, channels], [1, *self.strides, 1])
            windows.append(seen.reshape(-1, channels))
        return windows, dy.reshape(-1, dy.shape[-1])

    def one(self, x: jax.Array, dy: jax.Array) -> dict[str, Any]:
        """Kernel gradient as a tuple of taps, each [G, O/G, C/G]: tap t's is
        sum_p dy(p)^T x(p + t) (dy first: XLA:CPU then transposes nothing per tap; the slices
        of x are the right-hand operand in their own layout)."""
        windows, dy = self._windows(x, dy)
        g, channels, out = self.groups, windows[0].shape[-1], dy.shape[-1]
        dy_rows = dy.reshape(-1, g, out // g)
        taps = [
            _einsum('pgo,pgc->goc', dy_rows, seen.reshape(-1, g, channels // g)) for seen in windows
        ]
        # A tuple of per-tap gradients: summed over examples tap by tap and stacked once at
        # the end (`finish`), not stacked (copied) for every example.
        result = {'kernel': tuple(taps)}
        if self.use_bias:
            result['bias'] = dy.sum(0)
        return result

    def norms(self, x: jax.Array, dy: jax.Array, w: jax.Array) -> dict[str, jax.Array] | None:
        """`sum_n w_n ||g_n||^2` per parameter tensor from Gram matrices over the output
        positions, without forming the per-example kernel gradients:
        ||sum_p dy_p^T x~_p||^2 = sum_{p,q} (dy_p . dy_q) (x~_p . x~_q), x~_p the input patch
        output position p sees (x~_p . x~_q = sum_t x_t(p) . x_t(q)). Per example that costs
        2 P^2 (C k + O) FLOPs against the per-tap products' 2 P O C k (P positions, C input
        and O output channels, k kernel taps): cheaper where few positions meet many
        channels (VGG16's last two stages at 64 px). None where it is not cheaper, or with
        feature groups: the per-tap products then."""
        positions = math.prod(dy.shape[1:-1])
        cin, out, taps = x.shape[-1], dy.shape[-1], math.prod(self.kernel_size)
        if self.groups != 1 or positions * (cin * taps + out) >= out * cin * taps:
            return None

        def one_example(x, dy):
            windows, dy = self._windows(x, dy)
            seen = sum(_einsum('pc,qc->pq', v, v) for v in windows)
            kernel = jnp.sum(seen * _einsum('po,qo->pq', dy, dy))
            return {'kernel': kernel, 'bias': jnp.sum(jnp.square(dy.sum(0)))}

        per = jax.vmap(one_example)(x, dy)
        names = ('kernel', 'bias') if self.use_bias else ('kernel',)
        return {k: _einsum('n,n->', w, per[k]) for k in names}

    def squared(self, x: jax.Array, dy: jax.Array, w: jax.Array) -> None:
        return None

    def finish(self, name: str, g: jax.Array | tuple[jax.Array, ...]) -> jax.Array:
        if name != 'kernel':
            return g
        g = jnp.stack(g)  # `one`'s tuple of taps: [taps, G, O/G, C/G].
        taps, groups, out, cin = g.shape
        g = g.transpose(0, 3, 1, 2)  # [taps, C/G, G, O/G]: output channel = group * O/G + o.
        return g.reshape(*self.kernel_size, cin, groups * out)


@dataclasses.dataclass(frozen=True)
class _Channelwise:
    """A per-feature affine part: BatchNorm with running statistics (y = x_hat * scale +
    bias) or PReLU (y = x for x >= 0, alpha x otherwise)."""

    names: tuple[str, ...]  # Among 'scale' (times the recorded value), 'bias', 'alpha'.

    def record(self, module: nn.Module, x: jax.Array) -> jax.Array:
        if isinstance(module, layers.PReLU):
            return jnp.where(x >= 0, jnp.zeros_like(x), x)
        stats = module.variables['batch_stats']
        return (x - stats['mean']) * jax.lax.rsqrt(stats['var'] + module.epsilon)

    def one(self, v: jax.Array, dy: jax.Array) -> dict[str, jax.Array]:
        v, dy = _rows(v, 1), _rows(dy, 1)
        return {k: (dy if k == 'bias' else dy * v).sum(0) for k in self.names}

    def squared(self, v: jax.Array, dy: jax.Array, w: jax.Array) -> None:
        return None

    def norms(self, v: jax.Array, dy: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
        """All examples at once: one value per feature and example."""
        per = jax.vmap(self.one)(v, dy)
        return {k: _weighted_squares(w, g) for k, g in per.items()}

    def finish(self, name: str, g: jax.Array) -> jax.Array:
        return g


def _conv_rule(module: nn.Conv) -> _Conv | None:
    if (
        module.mask is not None
        or not module.shared_weights
        # `layers.conv_general_dilated` computes what `lax.conv_general_dilated` does.
        or module.conv_general_dilated not in (None, layers.conv_general_dilated)
        or module.conv_general_dilated_cls is not None
    ):
        return None
    size = module.kernel_size
    size = (size,) if isinstance(size, int) else tuple(size)
    if not 1 <= len(size) <= 3:
        return None

    def each(value):
        value = 1 if value is None else value
        return (value,) * len(size) if isinstance(value, int) else tuple(value)

    padding = linear.canonicalize_padding(module.padding, len(size))
    if isinstance(padding, str) and padding not in ('SAME', 'VALID', 'SAME_LOWER'):
        return None  # CIRCULAR, REFLECT and CAUSAL pad the input by hand first.
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return _Conv(
        size,
        each(module.strides),
        padding,
        each(module.input_dilation),
        each(module.kernel_dilation),
        module.feature_group_count,
        module.use_bias,
    )


def _rule(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """The formula for a call of `module` (None: differentiate its parameters directly)."""
    kind = type(module)
    if kind is nn.Dense:
        if module.dot_general is None and module.dot_general_cls is None:
            return _Dense(module.use_bias)
    elif kind is nn.Conv:
        return _conv_rule(module)
    elif kind is layers.DepthwiseConv:  # nn.Conv with feature_group_count = channels.
        k, s, p = module.kernel_size, module.stride, module.padding
        return _Conv((k, k), (s, s), ((p, p), (p, p)), (1, 1), (1, 1), args[0].shape[-1], False)
    elif kind is layers.BatchNorm:
        train = args[1] if len(args) > 1 else kwargs.get('train')
        if train is False:  # Batch statistics (or a traced flag) couple the examples.
            names = ('scale',) * module.use_scale + ('bias',) * module.use_bias
            return _Channelwise(names)
    elif kind is layers.PReLU:
        return _Channelwise(('alpha',))
    return None


class _Interceptor:
    """Finds the layers a formula covers (`perturbations` None; inside `jax.eval_shape`),
    or records what their formulas need and perturbs their outputs (`perturbations`:
    `{key: zeros like the output}` of the covered layers)."""

    def __init__(self, perturbations: dict[str, jax.Array] | None = None, covered=()):
        self.perturbations = perturbations
        self.covered = frozenset(covered)
        self.calls: dict[Path, list[tuple[Any, str, jax.ShapeDtypeStruct]]] = {}
        self.refused: set[Path] = set()
        self.matches: dict[Path, bool] = {}
        self.names: dict[Path, set[str]] = {}
        self.recorded: dict[str, jax.Array] = {}

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != '__call__' or module.scope is None:
            return next_fun(*args, **kwargs)
        rule = _rule(module, args, kwargs)
        if rule is None:
            return next_fun(*args, **kwargs)
        path = tuple(module.scope.path)
        x = args[0] if args else kwargs.get('inputs', kwargs.get('x'))
        if next_fun is not context.orig_method or not isinstance(x, jax.Array | np.ndarray):
            # Another interceptor runs after this one and may change the input or output.
            self.refused.add(path)
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        calls = self.calls.setdefault(path, [])
        key = f'{"/".join(path)}#{len(calls)}'
        calls.append((rule, key, jax.ShapeDtypeStruct(y.shape, y.dtype)))
        if self.perturbations is None:
            params = module.variables.get('params', {})
            grads = {k: rule.finish(k, g) for k, g in rule.one(rule.record(module, x), y).items()}
            shapes = {k: p.shape for k, p in params.items()}
            match = {k: g.shape for k, g in grads.items()} == shapes
            self.matches[path] = self.matches.get(path, True) and match
            self.names[path] = set(params)
            return y
        if path not in self.covered:
            return y
        self.recorded[key] = rule.record(module, x)
        return y + self.perturbations[key]


def _discover(loss_fn: LossFn, params: Any, x: Any, y: Any) -> dict[Path, list]:
    """`{module path: its calls}` of the layers whose every parameter a formula gives
    (traced with shapes only)."""
    found = _Interceptor()
    with nn.intercept_methods(found):
        # A new function each time: `jax.eval_shape` caches its trace per function and
        # shapes, and a cached trace would run no layer past this interceptor.
        jax.eval_shape(lambda *args: loss_fn(*args), params, x, y)
    param_paths = set(traverse_util.flatten_dict(params))
    covered = {}
    for path, calls in found.calls.items():
        names = {path + (name,) for name in found.names[path]}
        same_rule = len({rule for rule, _, _ in calls}) == 1  # e.g. not train=True, then False
        if path not in found.refused and same_rule and found.matches[path]:
            if names <= param_paths:
                covered[path] = calls
    return covered


def coverage(loss_fn: LossFn, params: Any, x: Any, y: Any) -> dict[str, list[str]]:
    """Which parameters `squared_sum` computes by a formula (traces shapes, compiles nothing).

    Args:
      loss_fn: as for `squared_sum`.
      params: the parameters (arrays or `jax.ShapeDtypeStruct`s).
      x, y: one example (arrays or shape structs).

    Returns:
      `{'formula': [...], 'autodiff': [...]}`: '/'-joined parameter paths.
    """
    covered = _discover(loss_fn, params, x, y)
    split = {'formula': [], 'autodiff': []}
    for k in traverse_util.flatten_dict(params):
        split['formula' if k[:-1] in covered else 'autodiff'].append('/'.join(k))
    return split


def squared_sum(loss_fn: LossFn) -> Callable[..., Any]:
    """`sum_n w_n (grad of loss_fn at example n)^2` by the formulas of the module docstring.

    Args:
      loss_fn: `loss(params, x, y) -> scalar` of one example, running linen modules.

    Returns:
      `fn(params, xs [N, ...], ys [N, ...], weights [N]) -> tree like params`, equal to
      `sum_n weights_n * jax.grad(loss_fn)(params, xs[n], ys[n]) ** 2` up to float32
      rounding. Trace it inside `jax.jit`; inside `shard_map` (`sharding.per_device`) it
      gives each device's sum over its own examples.
    """
    return _squares(loss_fn, per_tensor=False)


def squared_norms(loss_fn: LossFn) -> Callable[..., Any]:
    """`sum_n w_n ||grad of loss_fn at example n||^2` per parameter tensor: what
    `squared_sum` gives, summed over each tensor, at less cost. Where a layer's formula can
    give the squared norm without the per-example gradient itself (`norms`: a dense layer
    with one row per example, BatchNorm and PReLU, and a convolution whose Gram form is
    cheaper than its per-tap products), it is computed for all examples at once; the other
    layers' per-example gradients are squared and summed to one number each, so no
    per-parameter total is kept.

    Returns:
      `fn(params, xs, ys, weights) -> tree of scalars shaped like params`, equal to
      `jax.tree.map(jnp.sum, squared_sum(loss_fn)(params, xs, ys, weights))` up to float32
      rounding.
    """
    return _squares(loss_fn, per_tensor=True)


def _squares(loss_fn: LossFn, per_tensor: bool) -> Callable[..., Any]:
    """`squared_sum` (per parameter) or `squared_norms` (`per_tensor`)."""

    def reduce(g):  # One example's squares: as they are, or summed over the tensor.
        if not per_tensor:
            return g
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(g))

    def fn(params, xs, ys, weights):
        flat = traverse_util.flatten_dict(params)
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (xs, ys))
        covered = _discover(loss_fn, params, *one)
        fixed = {k: v for k, v in flat.items() if k[:-1] in covered}
        free = {k: v for k, v in flat.items() if k[:-1] not in covered}
        zeros = {
            key: jnp.zeros(shape.shape, shape.dtype)
            for calls in covered.values()
            for _, key, shape in calls
        }
        manual = tuple(jax.sharding.get_abstract_mesh().manual_axes)
        if manual:  # Inside shard_map: gradients of this device's examples, not summed over all.
            zeros = jax.tree.map(lambda z: jax.lax.pcast(z, manual, to='varying'), zeros)

        def loss(perturbations, free, x, y):
            interceptor = _Interceptor(perturbations, covered)
            tree = traverse_util.unflatten_dict({**fixed, **free})
            with nn.intercept_methods(interceptor):
                value = loss_fn(tree, x, y)
            return value, interceptor.recorded

        # One backward pass per example (batched by vmap into ordinary convolutions): the
        # gradients with respect to the covered layers' outputs and to the other parameters.
        backward = jax.grad(loss, argnums=(0, 1), has_aux=True)
        (d_out, d_free), recorded = jax.vmap(backward, in_axes=(None, None, 0, 0))(
            zeros, free, xs, ys
        )
        out, looped = {}, {}
        for path, calls in covered.items():
            rule, key = calls[0][0], calls[0][1]
            sums = None
            if len(calls) == 1:  # (A layer called more than once: its gradients add up first.)
                batched = rule.norms if per_tensor else rule.squared
                sums = batched(recorded[key], d_out[key], weights)
            if sums is None:
                looped[path] = calls
            else:
                out.update({path + (name,): g for name, g in sums.items()})
        if per_tensor:  # The other parameters: all examples at once (their gradients exist).
            for k, g in d_free.items():
                out[k] = _weighted_squares(weights, g)
            d_free = {}

        def squares(example):
            """w_n g_n^2 of one example, for the other parameters."""
            recorded, d_out, d_free, w = example
            grads = {k: w * g * g for k, g in d_free.items()}
            for path, calls in looped.items():
                rule = calls[0][0]
                parts = [rule.one(recorded[key], d_out[key]) for _, key, _ in calls]
                for name in parts[0]:  # A layer called more than once: the sum over its calls.
                    g = functools.reduce(_tree_add, [part[name] for part in parts])
                    grads[path + (name,)] = reduce(jax.tree.map(lambda a: w * a * a, g))
            return grads

        keys = [key for calls in looped.values() for _, key, _ in calls]
        examples = (
            {k: recorded[k] for k in keys},
            {k: d_out[k] for k in keys},
            d_free,
            weights,
        )

        def add(n, total):
            return _tree_add(total, squares(jax.tree.map(lambda a: a[n], examples)))

        # One example at a time: a batched product would write N x parameters, which
        # XLA:CPU then sums over N several times slower than this loop adds them up. (The
        # first example starts the total, so that it has the loop's type under shard_map.)
        if keys or d_free:
            total = squares(jax.tree.map(lambda a: a[0], examples))
            out.update(jax.lax.fori_loop(1, len(weights), add, total))
        for k, g in out.items():  # Back to the parameters' layouts and dtypes.
            rule = covered[k[:-1]][0][0] if k[:-1] in covered else None
            if not per_tensor and rule:
                g = rule.finish(k[-1], g)
            out[k] = g.astype(flat[k].dtype)
        return traverse_util.unflatten_dict(out)

    return fn
