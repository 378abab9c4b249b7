"""Attack accuracy: does the evaluation model recognise each reconstruction as its target?

The original protocol (`metrics/eval_accuracy.py` of TL-DMI/LOMMA) attacks identities in
batches (5 batches of 60 identities) with several seeds (5) and scores every
(batch, seed) group separately:

* `acc@k` of a group: the fraction of its reconstructions whose target identity is among
  the evaluation model's top-k logits.
* reported accuracy: the mean over all groups (with equal group sizes this is the mean over
  batches of the per-batch mean over seeds, as the original computes it);
* reported std: for each batch the sample standard deviation (ddof=1, `statistics.stdev`)
  of the group accuracies across its seeds, averaged over batches (batches with one seed
  have no std and are skipped; NaN if no batch has two seeds).

The original adds the *last* seed's top-5 accuracy of each batch instead of the seed mean
(`aver_acc5 += acc5 / N`). `reproduce_top5_bug=True` reproduces that; the default reports
the mean over groups. Accuracies are fractions in [0, 1] (the original prints percent).
Top-k ties are broken towards the lower class index (a stable sort), as argmax does.
"""

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from tldmi_jax import classifiers


@dataclasses.dataclass(frozen=True)
class AttackAccuracy:
    """Attack accuracy and its breakdown.

    Attributes:
      metrics: `attack/acc@1`, `attack/acc@1_std`, `attack/acc@5`, `attack/acc@5_std`.
      correct1: bool [N], top-1 correct per reconstruction.
      correct5: bool [N], top-5 correct per reconstruction.
      groups: one dict per (batch, seed) group: batch, seed, num, acc@1, acc@5.
    """

    metrics: dict[str, float]
    correct1: np.ndarray
    correct5: np.ndarray
    groups: list[dict[str, float]]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """bool [N]: `labels[i]` is among the `min(k, K)` largest of `logits[i]` ([N, K])."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
    return np.any(top == labels[:, None], axis=-1)


def _std_across_seeds(groups: list[dict[str, float]], key: str) -> float:
    stds = []
    for b in sorted({g['batch'] for g in groups}):
        values = [g[key] for g in groups if g['batch'] == b]
        if len(values) >= 2:
            stds.append(float(np.std(values, ddof=1)))
    return float(np.mean(stds)) if stds else float('nan')


def attack_accuracy(
    logits: np.ndarray,
    identity: np.ndarray,
    seed: np.ndarray,
    batch: np.ndarray,
    *,
    reproduce_top5_bug: bool = False,
) -> AttackAccuracy:
    """Top-1/top-5 attack accuracy per (batch, seed) group, their mean and seed std.

    Args:
      logits: float [N, K], the evaluation model's logits on the reconstructions.
      identity: int [N], the target identity of each reconstruction.
      seed: int [N], its seed index.
      batch: int [N], its identity batch.
      reproduce_top5_bug: report acc@5 as the original code does (mean over batches of
        the last seed's top-5 accuracy).

    Returns:
      An `AttackAccuracy`.
    """
    identity, seed, batch = (np.asarray(a).astype(np.int64) for a in (identity, seed, batch))
    n = len(identity)
    if n == 0 or np.shape(logits)[0] != n or seed.shape != (n,) or batch.shape != (n,):
        raise ValueError(
            f'Need N >= 1 logits, identities, seeds and batches of one length; got '
            f'{np.shape(logits)}, {identity.shape}, {seed.shape}, {batch.shape}.'
        )
    correct1 = topk_correct(logits, identity, 1)
    correct5 = topk_correct(logits, identity, 5)
    groups = []
    for b, s in sorted({(int(b), int(s)) for b, s in zip(batch, seed, strict=True)}):
        member = (batch == b) & (seed == s)
        groups.append(
            {
                'batch': b,
                'seed': s,
                'num': int(member.sum()),
                'acc@1': float(correct1[member].mean()),
                'acc@5': float(correct5[member].mean()),
            }
        )
    acc5 = float(np.mean([g['acc@5'] for g in groups]))
    if reproduce_top5_bug:
        last = {}
        for g in groups:  # Sorted by (batch, seed): the highest seed of a batch wins.
            last[g['batch']] = g
        acc5 = float(np.mean([g['acc@5'] for g in last.values()]))
    metrics = {
        'attack/acc@1': float(np.mean([g['acc@1'] for g in groups])),
        'attack/acc@1_std': _std_across_seeds(groups, 'acc@1'),
        'attack/acc@5': acc5,
        'attack/acc@5_std': _std_across_seeds(groups, 'acc@5'),
    }
    return AttackAccuracy(metrics, correct1, correct5, groups)


def per_identity(identity: np.ndarray, columns: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per-identity means of per-reconstruction columns (e.g. correctness, KNN distance).

    Args:
      identity: int [N].
      columns: name -> float/bool [N].

    Returns:
      One row per identity, sorted: `{'identity', 'num', **{name: mean}}`.
    """
    identity = np.asarray(identity)
    rows = []
    for ident in np.unique(identity):
        member = identity == ident
        row = {'identity': int(ident), 'num': int(member.sum())}
        row.update(
            {k: float(np.mean(np.asarray(v, np.float64)[member])) for k, v in columns.items()}
        )
        rows.append(row)
    return rows


class Evaluator:
    """big_vision-style evaluator: `Evaluator(predict_fn, **cfg).run(recon)` yields metrics.

    `predict_fn(images [B, h, w, C] in [0, 1]) -> (features, logits)` is the evaluation
    model (e.g. `features.resized_fn(model, variables, 112)`); `run` takes the arrays of
    `tldmi_jax.reconstructions.load` (images, identity, seed, batch), so an attack can log
    `attack/acc@1` while it optimises.
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        *,
        batch_size: int = 64,
        reproduce_top5_bug: bool = False,
    ):
        self.predict_fn = predict_fn
        self.batch_size = batch_size
        self.reproduce_top5_bug = reproduce_top5_bug

    def run(self, recon: dict[str, np.ndarray]) -> Iterator[tuple[str, float]]:
        _, logits = classifiers.run_batched(self.predict_fn, recon['images'], self.batch_size)
        result = attack_accuracy(
            logits,
            recon['identity'],
            recon['seed'],
            recon['batch'],
            reproduce_top5_bug=self.reproduce_top5_bug,
        )
        yield from result.metrics.items()


Z95 = 1.959963984540054  # The standard normal's 97.5 % quantile.


def stratified_interval(values: np.ndarray, strata: np.ndarray) -> dict[str, float]:
    """Mean of `values` over strata and its normal-approximation 95 % interval.

    The strata (the attacked identities) are fixed and the members of a stratum (its seeds)
    are random draws: the mean is the mean of the stratum means, and its variance
    `sum_c s_c^2 / n_c / C^2`, with `s_c^2` the sample variance (ddof=1) within stratum c.
    A stratum whose members all agree contributes no variance. When some stratum has a
    single member there is no within-stratum variance to use: every value is then taken
    as one independent draw (`s^2 / N`, s over all values).

    Args:
      values: float/bool [N], e.g. top-1 correctness per reconstruction, or the paired
        difference of two targets' correctness.
      strata: int [N], the identity of each value.

    Returns:
      `{'mean', 'se', 'low', 'high', 'half_width', 'n'}`; se and the bounds are NaN for
      N < 2.
    """
    values = np.asarray(values, np.float64)
    strata = np.asarray(strata)
    if values.shape != strata.shape or values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f'Need N >= 1 values and strata of one length; got {values.shape}, {strata.shape}.'
        )
    groups = [values[strata == c] for c in np.unique(strata)]
    mean = float(np.mean([g.mean() for g in groups]))
    if min(len(g) for g in groups) >= 2:
        var = sum(float(np.var(g, ddof=1)) / len(g) for g in groups) / len(groups) ** 2
    elif len(values) >= 2:
        var = float(np.var(values, ddof=1)) / len(values)
    else:
        var = float('nan')
    se = float(np.sqrt(var))
    half = Z95 * se
    return {
        'mean': mean,
        'se': se,
        'low': mean - half,
        'high': mean + half,
        'half_width': half,
        'n': len(values),
    }


def paired_difference(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], key: str = 'acc@1'
) -> dict[str, float]:
    """`a[key] - b[key]` over the reconstructions both have, by (identity, seed, batch).

    Two attacks with the same seed start each (identity, seed) instance from the same
    latent, so the difference per instance removes the instance's own luck and the
    interval (`stratified_interval` over identities) is narrower than comparing two
    independent intervals.

    Args:
      a, b: per-reconstruction columns (`identity`, `seed`, `batch` and `key`), e.g. read
        from two evaluations' `per_reconstruction.csv`.
      key: the column to compare.

    Returns:
      `stratified_interval`'s dict of the differences, plus `matched` (the number of
      instances both have).

    Raises:
      ValueError: the two share no instance, or one has an instance twice.
    """

    def index(cols):
        keys = list(
            zip(
                *(
                    np.asarray(cols[k]).astype(np.int64).tolist()
                    for k in ('identity', 'seed', 'batch')
                ),
                strict=True,
            )
        )
        if len(set(keys)) != len(keys):
            raise ValueError('An (identity, seed, batch) instance occurs twice.')
        return dict(zip(keys, np.asarray(cols[key], np.float64).tolist(), strict=True))

    ia, ib = index(a), index(b)
    common = sorted(set(ia) & set(ib))
    if not common:
        raise ValueError('The two evaluations share no (identity, seed, batch) instance.')
    diff = np.array([ia[k] - ib[k] for k in common])
    out = stratified_interval(diff, np.array([k[0] for k in common]))
    out['matched'] = len(common)
    return out
