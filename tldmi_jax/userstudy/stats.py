"""Statistics of the pairwise user study: counts, exact tests and intervals, a chart, a report.

Raters see two reconstructions of one person (from two arms, e.g. no defense and TL-DMI) next
to reference photos of that person and answer 'left', 'right' or 'tie' ("cannot tell").
Attention checks put a real reference photo on one side; a rater who misses too many of them
is excluded from the pooled counts (but still listed on their own).

    result = stats.summarize(answers, arms=['no_defense', 'tldmi'])
    stats.bar_chart(result, os.path.join(out, 'preference.png'))
    report = stats.markdown(result)

Per pair, `share_a` is the share of the decided answers (ties left out) that chose the arm
earlier in `arms`; the p-value is the exact two-sided binomial test of share 1/2 and the
interval the Clopper-Pearson one.
"""

import math
import os
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

REFERENCE = '__reference__'  # The arm name of the real photo on an attention check.
KINDS = ('pair', 'attention')
CHOICES = ('left', 'right', 'tie')
TITLE = 'Which looks more like the person?'
_RELATIVE_TOLERANCE = 1 + 1e-7  # Outcomes this close to the observed one count as as likely.


def _check_fraction(function: str, name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f'{function}: {name} must lie strictly between 0 and 1, got {value}')


def _check_counts(function: str, k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f'{function}: need 0 <= k <= n, got k={k}, n={n}')


def _log_pmf(i: int, n: int, log_p: float, log_q: float) -> float:
    """log P(X = i) for X ~ Binomial(n, p), given log p and log (1 - p)."""
    log_comb = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
    return log_comb + i * log_p + (n - i) * log_q


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test of `k` successes in `n` trials with success rate `p`.

    The p-value is the total probability of the outcomes no more likely than the observed
    one (the definition of `scipy.stats.binomtest`), computed in log space.

    Args:
        k: The number of successes, 0 <= k <= n.
        n: The number of trials (0 gives 1.0).
        p: The success probability under the null hypothesis, 0 < p < 1.

    Returns:
        The p-value, in (0, 1].

    Raises:
        ValueError: If `k`, `n` or `p` is out of range.
    """
    _check_fraction('binomial_test', 'p', p)
    _check_counts('binomial_test', k, n)
    if n == 0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    logs = [_log_pmf(i, n, log_p, log_q) for i in range(n + 1)]
    threshold = logs[k] + math.log(_RELATIVE_TOLERANCE)
    kept = [value for value in logs if value <= threshold]
    if len(kept) == len(logs):
        return 1.0  # The observed outcome is a most likely one.
    return min(1.0, math.fsum(math.exp(value) for value in kept))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval of a binomial proportion.

    Args:
        k: The number of successes, 0 <= k <= n.
        n: The number of trials (0 gives the whole range (0, 1)).
        level: The confidence level, 0 < level < 1.

    Returns:
        `(low, high)`; low is 0 when k == 0 and high is 1 when k == n.

    Raises:
        ValueError: If `k`, `n` or `level` is out of range.
    """
    _check_fraction('clopper_pearson', 'level', level)
    _check_counts('clopper_pearson', k, n)
    if n == 0:
        return 0.0, 1.0
    from scipy import stats as scipy_stats  # Imported here: it takes seconds to import.

    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(scipy_stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def _counts(a: int, b: int, ties: int, level: float) -> dict[str, Any]:
    """The COUNTS record of one pair (see `summarize`)."""
    n = a + b
    if n == 0:
        share = low = high = p_value = None
    else:
        share = a / n
        low, high = clopper_pearson(a, n, level)
        p_value = binomial_test(a, n, 0.5)
    return {
        'n': n,
        'a': a,
        'b': b,
        'ties': ties,
        'share_a': share,
        'ci_low': low,
        'ci_high': high,
        'p_value': p_value,
    }


def _check_answer(index: int, answer: Mapping) -> None:
    """Raises ValueError if an answer has a wrong kind, choice or pair of sides."""
    kind, choice = answer['kind'], answer['choice']
    if kind not in KINDS:
        raise ValueError(f'answer {index}: kind must be one of {KINDS}, got {kind!r}')
    if choice not in CHOICES:
        raise ValueError(f'answer {index}: choice must be one of {CHOICES}, got {choice!r}')
    sides = (answer['arm_left'], answer['arm_right'])
    references = sides.count(REFERENCE)
    if kind == 'attention' and references != 1:
        raise ValueError(
            f'answer {index}: an attention check needs {REFERENCE!r} on exactly one side, '
            f'got {sides}'
        )
    if kind == 'pair' and references:
        raise ValueError(f'answer {index}: a pair trial cannot show {REFERENCE!r}: {sides}')
    if kind == 'pair' and sides[0] == sides[1]:
        raise ValueError(f'answer {index}: a pair trial shows the same arm twice: {sides}')


def summarize(
    answers: Sequence[Mapping],
    arms: Sequence[str],
    *,
    min_attention: float = 1.0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Counts, exact tests and intervals of every pair of arms, pooled and per rater.

    Args:
        answers: One mapping per answer with the keys 'rater', 'trial', 'kind' ('pair' or
            'attention'), 'arm_left', 'arm_right', 'choice' ('left', 'right' or 'tie') and
            'response_ms'. An attention check has `REFERENCE` on one side; it is passed iff
            the rater chose that side.
        arms: The arms of the study, in order; a pair is reported as `[a, b]` with `a`
            earlier in `arms` than `b`, whichever side each was shown on.
        min_attention: A rater shown at least one attention check is excluded from the
            pooled counts if their share of passed checks is below this.
        level: The confidence level of the intervals.

    Returns:
        A JSON-serialisable dict with 'level', 'min_attention', 'raters' (per rater: pair
        'answers', 'attention_shown', 'attention_passed', 'attention_accuracy' (None if none
        shown), 'excluded', 'median_response_ms' over their pair answers (None if none)),
        'excluded_raters' (sorted) and 'pairs': per pair with at least one answer, in the
        order of `arms`, `{'arms': [a, b], 'pooled': COUNTS, 'per_rater': {rater: COUNTS
        with 'excluded'}}`, where COUNTS holds 'n' (decided answers, a + b), 'a', 'b',
        'ties', 'share_a' (a / n), 'ci_low', 'ci_high' and 'p_value' (these four None when
        n == 0). Pooled counts leave the excluded raters out.

    Raises:
        ValueError: On an arm name not in `arms` (all of them are named), a repeated arm, or
            a malformed answer.
    """
    arms = list(arms)
    if len(set(arms)) != len(arms):
        raise ValueError(f'summarize: arms must be distinct, got {arms}')
    if REFERENCE in arms:
        raise ValueError(f'summarize: {REFERENCE!r} is reserved for attention checks')
    if not 0 <= min_attention <= 1:
        raise ValueError(f'summarize: min_attention must lie in [0, 1], got {min_attention}')
    if not 0 < level < 1:
        raise ValueError(f'summarize: level must lie strictly between 0 and 1, got {level}')
    rank = {arm: i for i, arm in enumerate(arms)}
    unknown = set()
    for index, answer in enumerate(answers):
        _check_answer(index, answer)
        for side in (answer['arm_left'], answer['arm_right']):
            if side != REFERENCE and side not in rank:
                unknown.add(side)
    if unknown:
        raise ValueError(f'summarize: arms not in the study {arms}: {sorted(unknown, key=str)}')

    shown: dict[str, int] = {}
    passed: dict[str, int] = {}
    times: dict[str, list[float]] = {}
    # (a, b) -> rater -> [a, b, ties]
    tallies: dict[tuple[str, str], dict[str, list[int]]] = {}
    for answer in answers:
        rater = str(answer['rater'])
        shown.setdefault(rater, 0)
        passed.setdefault(rater, 0)
        times.setdefault(rater, [])
        left, right, choice = answer['arm_left'], answer['arm_right'], answer['choice']
        if answer['kind'] == 'attention':
            shown[rater] += 1
            correct = 'left' if left == REFERENCE else 'right'
            passed[rater] += choice == correct
            continue
        if answer.get('response_ms') is not None:
            times[rater].append(float(answer['response_ms']))
        a, b = (left, right) if rank[left] < rank[right] else (right, left)
        tally = tallies.setdefault((a, b), {}).setdefault(rater, [0, 0, 0])
        if choice == 'tie':
            tally[2] += 1
        else:
            tally[0 if (left if choice == 'left' else right) == a else 1] += 1

    raters = {}
    for rater in sorted(shown):
        accuracy = passed[rater] / shown[rater] if shown[rater] else None
        pair_answers = sum(sum(by_rater.get(rater, ())) for by_rater in tallies.values())
        median = float(statistics.median(times[rater])) if times[rater] else None
        raters[rater] = {
            'answers': pair_answers,
            'attention_shown': shown[rater],
            'attention_passed': passed[rater],
            'attention_accuracy': accuracy,
            'excluded': accuracy is not None and accuracy < min_attention,
            'median_response_ms': median,
        }
    excluded = sorted(rater for rater, record in raters.items() if record['excluded'])

    pairs = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            by_rater = tallies.get((a, b))
            if not by_rater:
                continue
            pooled = [0, 0, 0]
            per_rater = {}
            for rater in sorted(by_rater):
                counts = by_rater[rater]
                per_rater[rater] = {**_counts(*counts, level), 'excluded': rater in excluded}
                if rater not in excluded:
                    pooled = [total + count for total, count in zip(pooled, counts, strict=True)]
            pairs.append(
                {'arms': [a, b], 'pooled': _counts(*pooled, level), 'per_rater': per_rater}
            )
    return {
        'level': float(level),
        'min_attention': float(min_attention),
        'raters': raters,
        'excluded_raters': excluded,
        'pairs': pairs,
    }


def format_p(p_value: float | None) -> str:
    """'0.0213' style, '<1e-4' below 1e-4, '-' for None."""
    if p_value is None:
        return '-'
    return '<1e-4' if p_value < 1e-4 else f'{p_value:.4f}'


def _wrap(name: str, width: int = 14, lines: int = 4) -> str:
    """A label broken into lines of at most `width` characters (long names cut with '...').

    Lines break preferably after an underscore or a hyphen, else inside a word.
    """
    spaced = name.replace('_', '_ ')  # textwrap breaks at spaces; the spaces are taken out.
    parts = [p.replace('_ ', '_') for p in textwrap.wrap(spaced, width)] or ['']
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][: width - 3] + '...'
    return '\n'.join(parts)


def _figure(summary: Mapping[str, Any]) -> Any:
    """The bar chart of `bar_chart` as a matplotlib Figure (with an Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = list(summary.get('pairs') or [])
    fig = Figure(figsize=(max(5.0, 2.6 * len(pairs) + 1.5), 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(TITLE)
    if not pairs:
        ax.text(0.5, 0.5, 'no answers yet', ha='center', va='center', fontsize=14)
        ax.set_axis_off()
        return fig
    width = 0.36
    ticks, labels = [], []
    for x, pair in enumerate(pairs):
        a, b = pair['arms']
        counts = pair['pooled']
        ticks += [x - width / 2, x + width / 2]
        labels += [_wrap(str(a)), _wrap(str(b))]
        if counts['n'] == 0:
            ax.text(x, 0.04, 'n = 0', ha='center', va='bottom', fontsize=9)
            continue
        share_a = counts['share_a']
        low, high = counts['ci_low'], counts['ci_high']
        ax.bar(x - width / 2, share_a, width, color='tab:blue')
        ax.bar(x + width / 2, 1 - share_a, width, color='tab:orange')
        ax.errorbar(
            x - width / 2,
            share_a,
            yerr=[[share_a - low], [high - share_a]],
            color='black',
            capsize=4,
            linewidth=1,
        )
        top = max(high, 1 - share_a)
        note = f'p = {format_p(counts["p_value"])}\nn = {counts["n"]}'
        ax.text(x, top + 0.03, note, ha='center', va='bottom', fontsize=9)
    ax.axhline(0.5, color='grey', linestyle='--', linewidth=1)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    level = summary.get('level', 0.95)
    ax.set_ylabel(f'share of decided answers\n(bar: {level * 100:g}% CI of the first)')
    fig.tight_layout()
    return fig


def bar_chart(summary: Mapping[str, Any], path: str) -> str:
    """A PNG bar chart of the pooled preference of every pair; returns `path`.

    One group per pair: the share of decided answers for each arm, the Clopper-Pearson
    interval of the first arm's share, its p-value and n above, a dashed line at 1/2. A
    pair without decided answers keeps its labels and draws no bars; a summary without pairs
    gives a figure saying so. The file is written to `path + '.tmp'` and then renamed.
    """
    fig = _figure(summary)
    tmp = path + '.tmp'
    try:
        fig.savefig(tmp, format='png', dpi=120)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _cell(text: Any) -> str:
    """Markdown table cell text (pipes escaped)."""
    return str(text).replace('|', '\\|')


def format_share(counts: Mapping[str, Any]) -> str:
    """'0.667 [0.094, 0.992]': the share of the first arm and its interval; '-' when n = 0."""
    if counts['share_a'] is None:
        return '-'
    return f'{counts["share_a"]:.3f} [{counts["ci_low"]:.3f}, {counts["ci_high"]:.3f}]'


def _counts_cells(c: Mapping[str, Any]) -> str:
    """The a | b | ties | share [CI] | p cells of one table row."""
    return f'{c["a"]} | {c["b"]} | {c["ties"]} | {format_share(c)} | {format_p(c["p_value"])}'


def markdown(summary: Mapping[str, Any]) -> str:
    """A Markdown report: the pooled table, the per-rater table and the excluded raters."""
    level = summary.get('level', 0.95)
    raters = summary.get('raters') or {}
    excluded = list(summary.get('excluded_raters') or [])
    pairs = list(summary.get('pairs') or [])
    share_head = f'share of a [{level * 100:g}% CI]'
    lines = [
        f'# User study: {TITLE.lower()}',
        '',
        f'{len(raters)} raters, {len(excluded)} excluded (attention accuracy below '
        f'{summary.get("min_attention", 1.0):.0%}). "a" is the first arm of the pair, n the '
        'decided answers ("cannot tell" left out); p-values: exact two-sided binomial test '
        'of a share of 1/2.',
        '',
        '## Pooled',
        '',
    ]
    if not pairs:
        lines.append('No answers yet.')
    else:
        lines += [
            f'| pair | a | b | cannot tell | {share_head} | p-value |',
            '|---|---|---|---|---|---|',
        ]
        for pair in pairs:
            a, b = pair['arms']
            c = pair['pooled']
            lines.append(f'| {_cell(a)} vs {_cell(b)} | {_counts_cells(c)} |')
    lines += ['', '## Per rater', '']
    if not pairs:
        lines.append('No answers yet.')
    else:
        lines += [
            f'| rater | pair | a | b | cannot tell | {share_head} | p-value | excluded |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for pair in pairs:
            a, b = pair['arms']
            for rater, c in pair['per_rater'].items():
                lines.append(
                    f'| {_cell(rater)} | {_cell(a)} vs {_cell(b)} | {_counts_cells(c)} | '
                    f'{"yes" if c["excluded"] else "no"} |'
                )
    lines += ['', '## Excluded raters', '']
    if not excluded:
        lines.append('None.')
    for rater in excluded:
        record = raters.get(rater, {})
        accuracy = record.get('attention_accuracy')
        shown_text = f'{accuracy:.0%}' if accuracy is not None else '-'
        lines.append(
            f'- {rater}: attention checks passed {record.get("attention_passed", 0)}/'
            f'{record.get("attention_shown", 0)} ({shown_text})'
        )
    return '\n'.join(lines) + '\n'
