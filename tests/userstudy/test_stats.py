"""The user-study statistics: exact binomial test and interval, the summary, chart and report."""

import json
import math

import matplotlib.image
import numpy as np
import pytest
from scipy import stats as scipy_stats

from tldmi_jax.userstudy import stats

ARMS = ['none', 'tldmi', 'bido']
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# --- binomial_test ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    'k, n, expected',
    [
        (2, 10, 112 / 1024),  # 2 * (1 + 10 + 45) / 1024
        (5, 10, 1.0),
        (0, 5, 2 / 32),
        (9, 10, 22 / 1024),  # 2 * (1 + 10) / 1024
        (1, 1, 1.0),
        (0, 0, 1.0),
        (3, 7, 1.0),  # 3 and 4 are the two most likely outcomes.
    ],
)
def test_binomial_test_hand_computed(k, n, expected):
    assert stats.binomial_test(k, n) == pytest.approx(expected, rel=1e-12, abs=0)


def test_binomial_test_is_exactly_one_at_the_mode():
    assert stats.binomial_test(5, 10) == 1.0
    assert stats.binomial_test(3, 10, 0.3) == 1.0


def test_binomial_test_matches_scipy():
    for p in (0.5, 0.3, 0.77):
        for n in (1, 2, 3, 7, 10, 19, 33, 60):
            for k in range(n + 1):
                want = scipy_stats.binomtest(k, n, p).pvalue
                got = stats.binomial_test(k, n, p)
                assert got == pytest.approx(want, rel=1e-9, abs=0), (k, n, p)


def test_binomial_test_large_n_is_tiny_not_zero_or_nan():
    p_value = stats.binomial_test(900, 1000)
    assert 0 < p_value < 1e-100
    assert p_value == pytest.approx(scipy_stats.binomtest(900, 1000).pvalue, rel=1e-8)


@pytest.mark.parametrize('k, n, p', [(-1, 5, 0.5), (6, 5, 0.5), (2, 5, 0.0), (2, 5, 1.0)])
def test_binomial_test_rejects_bad_arguments(k, n, p):
    with pytest.raises(ValueError, match='binomial_test'):
        stats.binomial_test(k, n, p)


# --- clopper_pearson -------------------------------------------------------------------------


def test_clopper_pearson_edges():
    low, high = stats.clopper_pearson(0, 10)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    low, high = stats.clopper_pearson(10, 10)
    assert high == 1.0
    assert low == pytest.approx(0.025 ** (1 / 10), rel=1e-10)
    assert stats.clopper_pearson(0, 0) == (0.0, 1.0)
    low, high = stats.clopper_pearson(0, 4, level=0.9)
    assert (low, high) == (0.0, pytest.approx(1 - 0.05 ** (1 / 4), rel=1e-10))


@pytest.mark.parametrize('k, n, level', [(7, 10, 0.95), (13, 40, 0.9), (1, 3, 0.99)])
def test_clopper_pearson_matches_scipy(k, n, level):
    want = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=level, method='exact')
    low, high = stats.clopper_pearson(k, n, level)
    assert low == pytest.approx(want.low, rel=1e-9)
    assert high == pytest.approx(want.high, rel=1e-9)
    assert low < k / n < high


def test_clopper_pearson_rejects_bad_arguments():
    with pytest.raises(ValueError, match='level'):
        stats.clopper_pearson(1, 2, level=1.0)
    with pytest.raises(ValueError, match='k <= n'):
        stats.clopper_pearson(3, 2)


# --- summarize -------------------------------------------------------------------------------


def _answer(rater, left, right, choice, kind='pair', ms=1000, trial='t'):
    return {
        'rater': rater,
        'trial': trial,
        'kind': kind,
        'arm_left': left,
        'arm_right': right,
        'choice': choice,
        'response_ms': ms,
    }


def _answers():
    ref = stats.REFERENCE
    return [
        # r1: passes its one attention check.
        _answer('r1', 'none', 'tldmi', 'right', ms=1000),  # -> tldmi (b)
        _answer('r1', 'tldmi', 'none', 'left', ms=3000),  # tldmi on the left -> b
        _answer('r1', 'tldmi', 'none', 'right', ms=2000),  # -> none (a)
        _answer('r1', 'none', 'tldmi', 'tie', ms=4000),
        _answer('r1', 'bido', 'none', 'left', ms=500),  # pair (none, bido) -> bido (b)
        _answer('r1', ref, 'tldmi', 'left', kind='attention', ms=9999),
        # r2: no attention checks at all -> not excluded.
        _answer('r2', 'tldmi', 'none', 'right', ms=1500),  # -> none (a)
        _answer('r2', 'none', 'tldmi', 'left', ms=2500),  # -> none (a)
        _answer('r2', 'none', 'tldmi', 'tie', ms=1000),
        # r3: fails one of two attention checks -> excluded.
        _answer('r3', 'none', 'tldmi', 'left', ms=800),  # -> none (a)
        _answer('r3', 'tldmi', 'none', 'tie', ms=700),
        _answer('r3', 'none', ref, 'right', kind='attention'),  # passed
        _answer('r3', ref, 'bido', 'tie', kind='attention'),  # failed ('tie' is wrong)
    ]


def test_summarize_exact_values():
    summary = stats.summarize(_answers(), ARMS)
    json.dumps(summary)  # JSON-serialisable.
    assert summary['level'] == 0.95 and summary['min_attention'] == 1.0
    assert summary['raters'] == {
        'r1': {
            'answers': 5,
            'attention_shown': 1,
            'attention_passed': 1,
            'attention_accuracy': 1.0,
            'excluded': False,
            'median_response_ms': 2000.0,
        },
        'r2': {
            'answers': 3,
            'attention_shown': 0,
            'attention_passed': 0,
            'attention_accuracy': None,
            'excluded': False,
            'median_response_ms': 1500.0,
        },
        'r3': {
            'answers': 2,
            'attention_shown': 2,
            'attention_passed': 1,
            'attention_accuracy': 0.5,
            'excluded': True,
            'median_response_ms': 750.0,
        },
    }
    assert summary['excluded_raters'] == ['r3']
    # (none, tldmi) first, then (none, bido) in the canonical order; no (tldmi, bido) answers.
    assert [pair['arms'] for pair in summary['pairs']] == [['none', 'tldmi'], ['none', 'bido']]

    first = summary['pairs'][0]
    # Pooled over r1 and r2: a = 1 + 2, b = 2, ties = 2 (r3 left out).
    low, high = stats.clopper_pearson(3, 5)
    assert first['pooled'] == {
        'n': 5,
        'a': 3,
        'b': 2,
        'ties': 2,
        'share_a': 0.6,
        'ci_low': low,
        'ci_high': high,
        'p_value': 1.0,
    }
    assert set(first['per_rater']) == {'r1', 'r2', 'r3'}
    r1 = first['per_rater']['r1']
    assert (r1['n'], r1['a'], r1['b'], r1['ties'], r1['excluded']) == (3, 1, 2, 1, False)
    assert r1['share_a'] == pytest.approx(1 / 3)
    assert r1['p_value'] == 1.0
    r2 = first['per_rater']['r2']
    assert (r2['n'], r2['a'], r2['b'], r2['ties'], r2['share_a']) == (2, 2, 0, 1, 1.0)
    assert r2['p_value'] == pytest.approx(0.5)
    assert (r2['ci_low'], r2['ci_high']) == (pytest.approx(0.025**0.5), 1.0)
    assert first['per_rater']['r3'] == {
        'n': 1,
        'a': 1,
        'b': 0,
        'ties': 1,
        'share_a': 1.0,
        'ci_low': pytest.approx(0.025, rel=1e-12),
        'ci_high': 1.0,
        'p_value': 1.0,
        'excluded': True,
    }

    second = summary['pairs'][1]
    assert second['pooled']['n'] == 1 and second['pooled']['b'] == 1
    assert second['pooled']['share_a'] == 0.0 and second['pooled']['ci_low'] == 0.0
    assert list(second['per_rater']) == ['r1']


def test_summarize_pair_of_only_excluded_or_tied_answers_has_empty_pooled_counts():
    answers = [
        _answer('r3', 'tldmi', 'bido', 'left'),
        _answer('r3', stats.REFERENCE, 'none', 'right', kind='attention'),
        _answer('r4', 'tldmi', 'bido', 'tie'),
    ]
    summary = stats.summarize(answers, ARMS)
    (pair,) = summary['pairs']
    assert pair['arms'] == ['tldmi', 'bido']
    assert pair['pooled'] == {
        'n': 0,
        'a': 0,
        'b': 0,
        'ties': 1,
        'share_a': None,
        'ci_low': None,
        'ci_high': None,
        'p_value': None,
    }
    assert pair['per_rater']['r3']['excluded'] and pair['per_rater']['r3']['a'] == 1
    assert summary['raters']['r4']['median_response_ms'] == 1000.0


def test_summarize_min_attention_threshold():
    summary = stats.summarize(_answers(), ARMS, min_attention=0.5)
    assert summary['excluded_raters'] == []
    assert summary['pairs'][0]['pooled']['n'] == 6


def test_summarize_unknown_arm_is_named():
    answers = _answers() + [_answer('r1', 'none', 'mystery', 'left')]
    answers.append(_answer('r2', stats.REFERENCE, 'ghost', 'left', kind='attention'))
    with pytest.raises(ValueError, match="'ghost', 'mystery'"):
        stats.summarize(answers, ARMS)


@pytest.mark.parametrize(
    'answer, match',
    [
        (_answer('r1', 'none', 'none', 'left'), 'same arm'),
        (_answer('r1', 'none', 'tldmi', 'up'), 'choice'),
        (_answer('r1', 'none', 'tldmi', 'left', kind='quiz'), 'kind'),
        (_answer('r1', 'none', 'tldmi', 'left', kind='attention'), 'attention check'),
        (_answer('r1', stats.REFERENCE, 'tldmi', 'left'), 'pair trial'),
    ],
)
def test_summarize_rejects_malformed_answers(answer, match):
    with pytest.raises(ValueError, match=match):
        stats.summarize([answer], ARMS)


def test_summarize_empty():
    assert stats.summarize([], ARMS) == {
        'level': 0.95,
        'min_attention': 1.0,
        'raters': {},
        'excluded_raters': [],
        'pairs': [],
    }


# --- bar_chart and markdown ------------------------------------------------------------------


def _check_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert np.ptp(image[..., :3]) > 0.5  # Not a blank canvas.
    return image


def test_bar_chart_writes_a_png(tmp_path):
    summary = stats.summarize(_answers(), ARMS)
    path = str(tmp_path / 'preference.png')
    assert stats.bar_chart(summary, path) == path
    _check_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['preference.png']  # No .tmp left.


def test_bar_chart_empty_summary_and_empty_pair(tmp_path):
    empty = stats.summarize([], ARMS)
    _check_png(stats.bar_chart(empty, str(tmp_path / 'empty.png')))
    fig = stats._figure(empty)
    assert any(t.get_text() == 'no answers yet' for t in fig.axes[0].texts)

    tied = stats.summarize([_answer('r1', 'tldmi', 'bido', 'tie')], ARMS)
    _check_png(stats.bar_chart(tied, str(tmp_path / 'tied.png')))
    ax = stats._figure(tied).axes[0]
    assert not ax.patches  # No bars drawn...
    assert [t.get_text() for t in ax.get_xticklabels()] == ['tldmi', 'bido']  # ...labels kept.


def test_bar_chart_long_labels_do_not_overlap():
    arms = ['no_defense_resnet152_ffhq_baseline', 'tldmi_resnet152_ffhq_lambda_0.1', 'x']
    answers = [
        _answer('r1', arms[0], arms[1], 'left'),
        _answer('r1', arms[1], arms[2], 'right'),
        _answer('r1', arms[0], arms[2], 'left'),
    ]
    fig = stats._figure(stats.summarize(answers, arms))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == 6
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 < right.x0, 'tick labels overlap'
    assert all('\n' in t.get_text() for t in fig.axes[0].get_xticklabels()[:2])


def test_markdown_report():
    summary = stats.summarize(_answers(), ARMS)
    text = stats.markdown(summary)
    low, high = stats.clopper_pearson(3, 5)
    assert f'| none vs tldmi | 3 | 2 | 2 | 0.600 [{low:.3f}, {high:.3f}] | 1.0000 |' in text
    assert '| none vs bido | 0 | 1 | 0 | 0.000 [0.000, 0.975] | 1.0000 |' in text
    assert '| r2 | none vs tldmi | 2 | 0 | 1 | 1.000 [0.158, 1.000] | 0.5000 | no |' in text
    assert '| r3 | none vs tldmi | 1 | 0 | 1 | 1.000 [0.025, 1.000] | 1.0000 | yes |' in text
    assert '- r3: attention checks passed 1/2 (50%)' in text
    assert 'share of a [95% CI]' in text
    assert 'No answers yet.' in stats.markdown(stats.summarize([], ARMS))


def test_format_p():
    assert stats.format_p(0.021312) == '0.0213'
    assert stats.format_p(3e-5) == '<1e-4'
    assert stats.format_p(None) == '-'
    assert stats.format_p(math.nextafter(1e-4, 1)) == '0.0001'
