"""Trial plans: every pair once, balanced sides, seeded attention checks."""

import collections

import pytest

from tldmi_jax.userstudy import stats, trials


def _manifest(num_pairs, pool=4):
    pairs = [
        {'id': f'p{i:05d}', 'kind': 'pair', 'arms': ['none', 'tldmi']} for i in range(num_pairs)
    ]
    checks = [
        {'id': f'a{i:05d}', 'kind': 'attention', 'arms': ['none', stats.REFERENCE]}
        for i in range(pool)
    ]
    return {'trials': pairs, 'attention': checks}


@pytest.mark.parametrize('num_pairs', [1, 2, 7, 8, 31])
def test_every_pair_trial_once_with_balanced_sides(num_pairs):
    plan = trials.plan(_manifest(num_pairs), seed=3, attention_rate=0.0)
    assert sorted(p['trial'] for p in plan) == [f'p{i:05d}' for i in range(num_pairs)]
    left = collections.Counter(p['left'] for p in plan)
    assert left['none'] == (num_pairs + 1) // 2 and left['tldmi'] == num_pairs // 2
    assert all({p['left'], p['right']} == {'none', 'tldmi'} for p in plan)


def test_attention_checks_count_sides_and_seed():
    manifest = _manifest(20, pool=6)
    plan = trials.plan(manifest, seed=11, attention_rate=0.25)
    checks = [p for p in plan if p['kind'] == 'attention']
    assert len(checks) == 5  # round(0.25 * 20)
    assert len({c['trial'] for c in checks}) == 5
    on_left = sum(c['left'] == stats.REFERENCE for c in checks)
    # 5 checks: the first option (the arm) on the left in 3, so the reference in 2.
    assert on_left == 2
    # Seeded: the same seed gives the same plan, another seed another order.
    assert trials.plan(manifest, seed=11, attention_rate=0.25) == plan
    assert trials.plan(manifest, seed=12, attention_rate=0.25) != plan
    # The checks are mixed in, not appended.
    positions = [i for i, p in enumerate(plan) if p['kind'] == 'attention']
    assert positions != list(range(20, 25))


@pytest.mark.parametrize(
    'num_pairs, rate, pool, expected',
    [(10, 0.0, 5, 0), (10, 0.01, 5, 1), (10, 0.3, 5, 3), (10, 1.0, 5, 5), (10, 0.5, 0, 0)],
)
def test_num_attention(num_pairs, rate, pool, expected):
    assert trials.num_attention(num_pairs, rate, pool) == expected


def test_bad_rate_refused():
    with pytest.raises(ValueError, match='attention_rate'):
        trials.plan(_manifest(3), seed=0, attention_rate=1.5)


def test_rater_seed_is_stable_and_differs_by_rater_and_study():
    a = trials.rater_seed('abc', 'alice')
    assert a == trials.rater_seed('abc', 'alice')
    assert 0 <= a < 2**31
    assert a != trials.rater_seed('abc', 'bob')
    assert a != trials.rater_seed('abd', 'alice')
    # A fixed value (the first 31 bits of SHA-256): the same on every machine and release.
    assert trials.rater_seed('study', 'rater') == 1774676385
