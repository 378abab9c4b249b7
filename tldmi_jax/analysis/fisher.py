"""Per-layer empirical Fisher information for the classification task and the MI task.

TL-DMI (Sec. 4.2) compares which layers of a conventionally trained target matter for
classification and which for model inversion. The estimator (as in the authors' earlier
AdAM code, `estimate_fisher`) is the empirical diagonal Fisher of the cross-entropy:

    F_j  = (1/N) sum_n (d CE(f(x_n; theta), y_n) / d theta_j)^2
    FI_l = (1/|theta_l|) sum_{j in layer l} F_j

The squared per-example gradients of a chunk of examples come from
`per_example.squared_sum` (`method='layers'`, the default: one vmapped backward pass with
respect to the layer outputs, then each layer's per-example weight gradients as products of
its input and output gradient) or from `jax.vmap(jax.grad(loss))` (`method='vmap'`, the
reference; 2-3x slower for VGG16 on a CPU). They are summed into a running total (one
compiled step per chunk, the last chunk padded and masked), so memory is bounded by the
chunk size for any number of examples. `analyze` needs only each group's mean, so it asks
for each tensor's sum (`per='tensor'`: `per_example.squared_norms`, which skips the
per-example kernel gradients where a Gram form is cheaper; VGG16 at 64 px 1.75x the
PyTorch loop against 1.24-1.36x for the per-parameter diagonal, docs/evaluation.md).
BatchNorm runs in inference mode (running statistics) and dropout is off, so the examples
do not interact. Layers are the model's `layer_groups` (the names freezing uses), each
parameter counted in the first group whose regex matches its '/'-joined path.

The two tasks differ only in their data:

* classification: private training images with their true labels;
* MI: the reconstructions of an attack on the same target, labelled with the identity
  each was optimised for.

`analyze(config, workdir)` writes `fisher.json` (per group: parameter count, FI of both
tasks, and both normalised by their task's maximum over groups, so that each curve peaks at
1 and the two shapes can share an axis), `fisher.csv` and `fisher.png`.
"""

import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util
from tqdm import tqdm

from tldmi_jax import classifiers, config_lib, data, models, reconstructions
from tldmi_jax.analysis import per_example
from tldmi_jax.data import pipeline, preprocess
from tldmi_jax.reporting import files
from tldmi_jax.utils import atomic, distributed, metrics, sharding
from tldmi_jax.utils import workdir as workdir_lib

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
TASKS = ('classification', 'mi')
# How the squared per-example gradients are computed: 'layers' (per_example.squared_sum: a
# backward pass with respect to the layer outputs, then products per layer) or 'vmap'
# (jax.vmap(jax.grad), the reference).
METHODS = ('layers', 'vmap')
# What `FisherEstimator.run` returns: per parameter, or summed over each parameter tensor.
PER = ('parameter', 'tensor')


def classifier_loss(model: nn.Module, batch_stats: Any) -> LossFn:
    """`loss(params, x [H, W, C], y []) -> CE` of one example, BatchNorm in inference mode."""

    def loss(params, x, y):
        variables = {'params': params, 'batch_stats': batch_stats}
        _, logits = model.apply(variables, x[None], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

    return loss


class FisherEstimator:
    """Accumulates squared per-example gradients over chunks of examples.

    Each chunk is split over the devices (`sharding.data_mesh`: the largest device count
    that divides `chunk_size`); each device computes its examples' gradients
    (`sharding.per_device`), parameters and the running total are replicated. The result
    equals the one-device result up to float summation order.

    Args:
      loss_fn: `loss(params, x, y) -> scalar` for one example (no batch axis).
      chunk_size: examples per step; bounds memory (`vmap`: chunk_size x parameters).
      method: a name of `METHODS`; both give the same values up to float32 rounding.
      per: 'parameter' (the diagonal: one value per parameter) or 'tensor' (its sum over
        each parameter tensor, one number each: what the per-layer means need, and faster
        with `method='layers'`: `per_example.squared_norms`).
    """

    def __init__(
        self, loss_fn: LossFn, chunk_size: int, method: str = 'layers', per: str = 'parameter'
    ):
        if chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
        if method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
        if per not in PER:
            raise ValueError(f'per must be one of {PER}, got {per!r}.')
        self.chunk_size, self.per = chunk_size, per
        self.mesh = sharding.data_mesh(chunk_size)
        if method == 'layers':
            squares = (per_example.squared_norms if per == 'tensor' else per_example.squared_sum)(
                loss_fn
            )
        else:
            grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))

            def squares(params, xs, ys, mask):
                def square(g):
                    # Elementwise, not a dot product: no reduced-precision (TF32) matmul on GPUs.
                    g = jnp.sum(mask.reshape((-1,) + (1,) * (g.ndim - 1)) * g * g, axis=0)
                    return jnp.sum(g) if per == 'tensor' else g

                return jax.tree.map(square, grads(params, xs, ys))

        # Each device's sum over its examples, stacked on a leading device axis.
        partial_sums = sharding.per_device(
            lambda *args: jax.tree.map(lambda s: s[None], squares(*args)), self.mesh, 3
        )

        def step(total, params, xs, ys, mask):
            return jax.tree.map(
                lambda t, s: t + jnp.sum(s, axis=0), total, partial_sums(params, xs, ys, mask)
            )

        self._step = jax.jit(step, donate_argnums=0)

    def _chunks(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple]:
        size = self.chunk_size
        for xs, ys in batches:
            for start in range(0, len(xs), size):
                x, y = np.asarray(xs[start : start + size]), np.asarray(ys[start : start + size])
                real = len(x)
                mask = np.zeros(size, np.float32)
                mask[:real] = 1.0
                x, y = pipeline.pad_batch(x, size), pipeline.pad_batch(y, size)
                yield x, y.astype(np.int32), mask, real

    def run(
        self,
        params: Any,
        batches: Iterable[tuple[np.ndarray, np.ndarray]],
        desc: str | None = None,
        total_examples: int | None = None,
    ) -> tuple[Any, int]:
        """Mean squared per-example gradient of every parameter.

        Args:
          params: the parameters (pytree).
          batches: iterable of `(inputs [B, ...], int labels [B])`, any B.
          desc: with a name, a progress bar of examples (stderr, main process only).
          total_examples: the number of examples, for the bar (None: unknown).

        Returns:
          `(fisher, n)`: a pytree like `params` (with `per='tensor'`, of scalars: each
          tensor's sum of F_j) and the number of examples.
        """
        params = sharding.replicate(params, self.mesh)
        zeros = (lambda p: jnp.zeros((), p.dtype)) if self.per == 'tensor' else jnp.zeros_like
        total = sharding.replicate(jax.tree.map(zeros, params), self.mesh)
        n = 0
        bar = tqdm(
            total=total_examples,
            desc=desc,
            unit='ex',
            dynamic_ncols=True,
            mininterval=1.0,
            disable=desc is None or not distributed.is_main(),
        )
        with bar:
            for x, y, mask, real in self._chunks(batches):
                x, y, mask = sharding.shard_batch((x, y, mask), self.mesh)
                total = self._step(total, params, x, y, mask)
                n += real
                if not bar.disable:  # Count computed examples, not dispatched ones.
                    jax.block_until_ready(total)
                bar.update(real)
        if n == 0:
            raise ValueError('No examples for the Fisher information.')
        return jax.tree.map(lambda t: np.asarray(t, np.float64) / n, total), n


def group_means(
    fisher: Any, layer_groups: tuple[tuple[str, str], ...], counts: Any = None
) -> list[dict[str, Any]]:
    """Averages a per-parameter tree over each layer group's parameters.

    Args:
      fisher: pytree of per-parameter values, or with `counts` of per-tensor sums.
      layer_groups: ordered `(name, regex over '/'-joined paths)`; a parameter belongs to
        the first group that fully matches it.
      counts: None, or a pytree like `fisher` of each tensor's parameter count (the
        `FisherEstimator(..., per='tensor')` case).

    Returns:
      One `{'group', 'num_params', 'value'}` per group in order, plus '(ungrouped)' for
      parameters no group matches.
    """
    flat = {
        k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(fisher, sep='/').items()
    }
    if counts is None:
        sizes = {k: v.size for k, v in flat.items()}
    else:
        sizes = {k: int(v) for k, v in traverse_util.flatten_dict(counts, sep='/').items()}
    rows, seen = [], set()
    for name, regex in layer_groups:
        pattern = re.compile(regex)
        keys = [k for k in flat if k not in seen and pattern.fullmatch(k)]
        seen.update(keys)
        count = sum(sizes[k] for k in keys)
        total = sum(float(flat[k].sum()) for k in keys)
        rows.append({'group': name, 'num_params': count, 'value': total / count if count else 0.0})
    rest = [k for k in flat if k not in seen]
    if rest:
        count = sum(sizes[k] for k in rest)
        total = sum(float(flat[k].sum()) for k in rest)
        rows.append({'group': '(ungrouped)', 'num_params': count, 'value': total / count})
    return rows


def normalise(values: list[float]) -> list[float]:
    """Divides by the maximum (all zeros stay zeros)."""
    top = max(values) if values else 0.0
    return [v / top if top > 0 else 0.0 for v in values]


def plot(path: str, groups: list[str], curves: dict[str, list[float]], title: str) -> str:
    """Line plot of normalised FI per layer group, one line per task; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.22 * len(groups) + 2.0), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for (label, values), marker in zip(curves.items(), ('o', 's', '^'), strict=False):
        ax.plot(x, values, marker=marker, markersize=3, label=label)
    ax.set_xticks(x, groups, rotation=90, fontsize=7)
    ax.set_xlabel('layer group (input -> output)')
    ax.set_ylabel('FI / max over layers')
    values = np.concatenate([np.asarray(v, np.float64) for v in curves.values()])
    if np.all(values > 0) and values.max() / values.min() > 100:
        ax.set_yscale('log')  # Layers differ by orders of magnitude: linear hides all but one.
        ax.set_ylabel('FI / max over layers (log scale)')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic.savefig(fig, path, dpi=120)
    return path


def _resized_batches(images, labels, size, chunk) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(images), chunk):
        x = jnp.asarray(images[start : start + chunk], jnp.float32)
        yield np.asarray(classifiers.resize(x, size)), labels[start : start + chunk]


def _subsample(indices: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if cap and len(indices) > cap:
        return np.sort(np.random.default_rng(seed).choice(indices, cap, replace=False))
    return indices


def analyze(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Computes and writes the per-layer Fisher information of both tasks.

    Args:
      config: see `configs/fisher_celeba.py`.
      workdir: output directory.

    Returns:
      The contents of `fisher.json`.
    """
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    if not config.target.checkpoint or not config.attack_dir:
        raise ValueError('Set --config.target.checkpoint and --config.attack_dir.')
    recon, meta = reconstructions.load(config.attack_dir)
    recorded = meta.get('target', {}) or {}
    model, variables, size = classifiers.load_block(
        config.target,
        fallback_arch=recorded.get('arch'),
        fallback_size=meta.get('image_size'),
        name='target',
    )
    reconstructions.check_target(
        config.attack_dir, meta, config.target.checkpoint, classifiers.fingerprint(variables)
    )
    if not hasattr(model, 'layer_groups'):
        raise ValueError(f'{type(model).__name__} has no layer_groups.')
    # Per tensor: the group means need only each tensor's sum (`per_example.squared_norms`).
    estimator = FisherEstimator(
        classifier_loss(model, variables['batch_stats']), config.fisher.chunk_size, per='tensor'
    )
    counts = jax.tree.map(np.size, variables['params'])
    cap, chunk = int(config.fisher.max_examples or 0), config.fisher.chunk_size

    dc = config.data
    source = data.get_source(
        dc.name, dc.split, root=dc.root, data_dir=dc.data_dir, **dict(dc.get('kwargs') or {})
    )
    labels = np.asarray(source.labels)
    identities = np.unique(recon['identity'])
    if config.fisher.classification_identities == 'attacked':
        indices = np.flatnonzero(np.isin(labels, identities))
    elif config.fisher.classification_identities == 'all':
        indices = np.arange(len(source))
    else:
        raise ValueError("fisher.classification_identities must be 'all' or 'attacked'.")
    indices = _subsample(indices, cap, config.seed)
    workdir_lib.save_config(config, workdir)  # The inputs are valid: the run starts here.
    batches = (
        (b['image'], b['label'])
        for b in pipeline.epoch_batches(
            source,
            indices,
            chunk,
            preprocess=preprocess.get_preprocess(dc.name, size),
            seed=0,
            epoch=0,
            shuffle=False,
            drop_remainder=False,
        )
    )
    fisher_cls, n_cls = estimator.run(
        variables['params'], batches, 'fisher (classification)', len(indices)
    )
    logging.info('Fisher (classification): %d private images', n_cls)

    keep = _subsample(np.arange(len(recon['identity'])), cap, config.seed)
    mi_batches = _resized_batches(
        recon['images'][keep], recon['identity'][keep].astype(np.int32), size, chunk
    )
    fisher_mi, n_mi = estimator.run(variables['params'], mi_batches, 'fisher (MI)', len(keep))
    logging.info('Fisher (MI): %d reconstructions', n_mi)

    rows_cls = group_means(fisher_cls, model.layer_groups, counts)
    rows_mi = group_means(fisher_mi, model.layer_groups, counts)
    norm_cls = normalise([r['value'] for r in rows_cls])
    norm_mi = normalise([r['value'] for r in rows_mi])
    # The cut-point name (`stage{k}`, `head`: what `defense.fine_tune_from` takes) of each
    # group, for the plot and the tables: the first name `models.cut_points` gives it (the
    # model's vocabulary first, else the group's own name).
    cut = {}
    for name, group in models.cut_points(model).items():
        cut.setdefault(group, name)
    groups = [
        {
            'group': a['group'],
            'cut_point': cut[a['group']],
            'num_params': a['num_params'],
            'classification': a['value'],
            'mi': b['value'],
            'classification_normalised': na,
            'mi_normalised': nb,
        }
        for a, b, na, nb in zip(rows_cls, rows_mi, norm_cls, norm_mi, strict=True)
    ]
    result = {
        'groups': groups,
        'num_examples': {'classification': n_cls, 'mi': n_mi},
        'normalisation': 'each task divided by its maximum over layer groups',
        'estimator': 'empirical diagonal Fisher of CE, mean over examples and group params',
        'target': config.target.checkpoint,
        'attack_dir': config.attack_dir,
        'protocol_hash': config_lib.protocol_hash(
            {
                'identities': identities.tolist(),
                'seeds': np.unique(recon['seed']).tolist(),
                'target': classifiers.variables_hash(variables),
                'data': pipeline.split_fingerprint(dc.name, dc.split, source, dc.get('kwargs')),
                'classification_identities': config.fisher.classification_identities,
                'max_examples': cap,
            }
        ),
    }
    if distributed.is_main():  # A multi-process run: every chunk was split over all devices.
        files.write_json(os.path.join(workdir, 'fisher.json'), result)
        files.write_csv(os.path.join(workdir, 'fisher.csv'), groups)
        plot(
            os.path.join(workdir, 'fisher.png'),
            [
                g['group'] if g['cut_point'] == g['group'] else f'{g["cut_point"]} ({g["group"]})'
                for g in groups
            ],
            {'classification (private data)': norm_cls, 'MI (reconstructions)': norm_mi},
            f'Empirical Fisher information per layer ({type(model).__name__})',
        )
        logging.info('Fisher information written to %s', workdir)
    distributed.barrier(f'fisher:{workdir}')
    return result
