"""Attack accuracy against hand-computed values, and the original's top-5 defect."""

import math

import numpy as np
import pytest

from tldmi_jax.evaluation import attack_acc

K = 7  # Classes.
# (batch, seed, identity, rank of the true class among the logits; 0 = top-1).
RECORDS = [
    (0, 0, 0, 0),
    (0, 0, 1, 0),  # b0 s0: acc@1 1, acc@5 1
    (0, 1, 0, 0),
    (0, 1, 1, 3),  # b0 s1: acc@1 .5, acc@5 1
    (0, 2, 0, 2),
    (0, 2, 1, 6),  # b0 s2: acc@1 0, acc@5 .5
    (1, 0, 2, 0),
    (1, 0, 3, 5),  # b1 s0: acc@1 .5, acc@5 .5
    (1, 1, 2, 1),
    (1, 1, 3, 1),  # b1 s1: acc@1 0, acc@5 1
    (1, 2, 2, 6),
    (1, 2, 3, 6),  # b1 s2: acc@1 0, acc@5 0
]


def _logits(identity, rank):
    """Logits whose true class has the given rank (distinct values, no ties)."""
    others = [c for c in range(K) if c != identity]
    order = others[:rank] + [identity] + others[rank:]
    logits = np.zeros(K, np.float32)
    logits[order] = np.arange(K, 0, -1)
    return logits


def _arrays(records):
    batch, seed, identity, rank = (np.array(c) for c in zip(*records, strict=True))
    logits = np.stack([_logits(i, r) for i, r in zip(identity, rank, strict=True)])
    return logits, identity, seed, batch


def test_hand_computed_groups_mean_and_std():
    order = np.random.default_rng(0).permutation(len(RECORDS))  # Order must not matter.
    logits, identity, seed, batch = _arrays([RECORDS[i] for i in order])
    result = attack_acc.attack_accuracy(logits, identity, seed, batch)
    m = result.metrics
    assert m['attack/acc@1'] == pytest.approx(2 / 6)
    assert m['attack/acc@5'] == pytest.approx(4 / 6)
    # Sample stds across seeds: b0 top-1 (1, .5, 0) -> .5; b1 (.5, 0, 0) -> sqrt(1/12).
    assert m['attack/acc@1_std'] == pytest.approx((0.5 + math.sqrt(1 / 12)) / 2)
    # b0 top-5 (1, 1, .5) -> sqrt(1/12); b1 (.5, 1, 0) -> .5.
    assert m['attack/acc@5_std'] == pytest.approx((math.sqrt(1 / 12) + 0.5) / 2)
    groups = {(g['batch'], g['seed']): (g['acc@1'], g['acc@5']) for g in result.groups}
    assert groups[(0, 1)] == (0.5, 1.0) and groups[(1, 0)] == (0.5, 0.5)
    assert result.correct1.sum() == 4 and result.correct5.sum() == 8


def test_original_top5_defect_only_behind_flag():
    logits, identity, seed, batch = _arrays(RECORDS)
    fixed = attack_acc.attack_accuracy(logits, identity, seed, batch)
    buggy = attack_acc.attack_accuracy(logits, identity, seed, batch, reproduce_top5_bug=True)
    # The original adds the last seed's top-5 per batch: (b0 s2 .5 + b1 s2 0) / 2.
    assert buggy.metrics['attack/acc@5'] == pytest.approx(0.25)
    assert fixed.metrics['attack/acc@5'] == pytest.approx(4 / 6)
    for key in ('attack/acc@1', 'attack/acc@1_std', 'attack/acc@5_std'):
        assert buggy.metrics[key] == fixed.metrics[key]


def test_per_identity_and_single_seed_std():
    logits, identity, seed, batch = _arrays(RECORDS)
    result = attack_acc.attack_accuracy(logits, identity, seed, batch)
    rows = attack_acc.per_identity(identity, {'acc@1': result.correct1})
    assert [r['identity'] for r in rows] == [0, 1, 2, 3]
    assert [r['acc@1'] for r in rows] == pytest.approx([2 / 3, 1 / 3, 1 / 3, 0.0])
    one_seed = attack_acc.attack_accuracy(logits[:2], identity[:2], seed[:2], batch[:2])
    assert math.isnan(one_seed.metrics['attack/acc@1_std'])


def test_topk_with_fewer_classes_than_k_and_ties():
    logits = np.array([[0.0, 1.0, 1.0], [3.0, 2.0, 1.0]])
    assert attack_acc.topk_correct(logits, np.array([2, 2]), 5).tolist() == [True, True]
    # Ties go to the lower index, as argmax.
    assert attack_acc.topk_correct(logits, np.array([1, 0]), 1).tolist() == [True, True]
    with pytest.raises(ValueError, match='one length'):
        attack_acc.attack_accuracy(logits, np.array([0]), np.array([0]), np.array([0]))


def test_evaluator_yields_named_metrics():
    logits, identity, seed, batch = _arrays(RECORDS)
    images = np.zeros((len(identity), 2, 2, 1), np.float32)
    images[:, 0, 0, 0] = np.arange(len(identity))
    table = logits

    def predict(x):  # Looks the logits up by the index written into the image.
        idx = np.asarray(x)[:, 0, 0, 0].astype(int)
        return np.zeros((len(idx), 1)), table[idx]

    evaluator = attack_acc.Evaluator(predict, batch_size=5)
    recon = {'images': images, 'identity': identity, 'seed': seed, 'batch': batch}
    out = dict(evaluator.run(recon))
    assert out['attack/acc@1'] == pytest.approx(2 / 6)
    assert set(out) == {'attack/acc@1', 'attack/acc@1_std', 'attack/acc@5', 'attack/acc@5_std'}


def test_stratified_interval_by_hand():
    # Class 0: (1, 1, 0, 0) var 1/3; class 1: (1, 0, 0, 0) var 1/4; class 2: all 1, var 0.
    values = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1], float)
    strata = np.repeat([0, 1, 2], 4)
    order = np.random.default_rng(1).permutation(12)  # Order must not matter.
    ci = attack_acc.stratified_interval(values[order], strata[order])
    assert ci['mean'] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    se = math.sqrt((1 / 3 / 4 + 1 / 4 / 4 + 0) / 9)
    assert ci['se'] == pytest.approx(se)
    assert ci['half_width'] == pytest.approx(1.959964 * se, rel=1e-6)
    assert (ci['low'], ci['high']) == pytest.approx(
        (ci['mean'] - ci['half_width'], ci['mean'] + ci['half_width'])
    )
    assert ci['n'] == 12


def test_stratified_interval_single_member_strata_pool_everything():
    values = np.array([1, 0, 1, 1], float)
    ci = attack_acc.stratified_interval(values, np.arange(4))
    assert ci['mean'] == pytest.approx(0.75)
    assert ci['se'] == pytest.approx(math.sqrt(np.var(values, ddof=1) / 4))
    one = attack_acc.stratified_interval(np.array([1.0]), np.array([3]))
    assert one['mean'] == 1.0 and math.isnan(one['se'])
    with pytest.raises(ValueError, match='one length'):
        attack_acc.stratified_interval(np.zeros(3), np.zeros(2))


def test_paired_difference_matches_instances_and_is_narrower():
    rng = np.random.default_rng(0)
    identity, seed = np.repeat(np.arange(5), 40), np.tile(np.arange(40), 5)
    batch = np.zeros(200, int)
    luck = rng.random(200)  # Shared by both targets: the instance's own difficulty.
    a = {'identity': identity, 'seed': seed, 'batch': batch, 'acc@1': (luck < 0.7) * 1.0}
    b = {'identity': identity, 'seed': seed, 'batch': batch, 'acc@1': (luck < 0.6) * 1.0}
    perm = rng.permutation(200)  # b in another order: matched by (identity, seed, batch).
    b = {k: v[perm] for k, v in b.items()}
    d = attack_acc.paired_difference(a, b)
    assert d['matched'] == 200
    assert d['mean'] == pytest.approx(a['acc@1'].mean() - b['acc@1'].mean())
    unpaired = math.hypot(
        attack_acc.stratified_interval(a['acc@1'], identity)['se'],
        attack_acc.stratified_interval(b['acc@1'], b['identity'])['se'],
    )
    assert 0 < d['se'] < unpaired / 2
    assert d['low'] > 0  # a beats b on every instance where they differ.
    few = {k: v[:10] for k, v in b.items()}
    assert attack_acc.paired_difference(a, few)['matched'] == 10
    other = dict(a, seed=seed + 100)
    with pytest.raises(ValueError, match='share no'):
        attack_acc.paired_difference(other, b)
    twice = {k: np.concatenate([v, v[:1]]) for k, v in a.items()}
    with pytest.raises(ValueError, match='twice'):
        attack_acc.paired_difference(twice, b)
