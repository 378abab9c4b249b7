"""What one rater sees: the study's trials in a seeded order with balanced left/right sides.

A study's manifest (`manifest.py`) lists two kinds of trial, each an identity's reference
images and two options:

* `pair`: one reconstruction from each of two arms (e.g. `none` vs `tldmi`);
* `attention`: one reconstruction and `stats.REFERENCE`, a private image that is also shown
  among the references, so a rater who looks picks it.

`plan(manifest, seed, attention_rate)` gives one rater's list: every pair trial once, plus
`round(attention_rate * pairs)` attention checks (at least one when the rate is above zero)
drawn from the manifest's pool, shuffled together. Left/right is balanced: within the pair
trials the first arm of the pair is on the left in half of them (one more when the count is
odd), and the same for the reference among the attention checks. Everything depends only on
`seed` (`rater_seed` derives it from the study and the rater id), and the plan is stored with
the rater, so it never changes under them.
"""

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def rater_seed(study_hash: str, rater: str) -> int:
    """A 31-bit seed from the study and the rater id (stable across runs and machines)."""
    digest = hashlib.sha256(f'{study_hash}\0{rater}'.encode()).digest()
    return int.from_bytes(digest[:4], 'big') & 0x7FFFFFFF


def _balanced_sides(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` booleans, True for "first option on the left", half each, in random order."""
    sides = np.arange(n) < (n + 1) // 2
    return rng.permutation(sides)


def num_attention(num_pairs: int, attention_rate: float, pool: int) -> int:
    """How many attention checks a rater gets."""
    if attention_rate <= 0 or pool == 0:
        return 0
    return min(pool, max(1, round(attention_rate * num_pairs)))


def plan(manifest: Mapping[str, Any], seed: int, attention_rate: float) -> list[dict[str, str]]:
    """One rater's trials in order.

    Args:
      manifest: the study manifest (`trials`: pair trials, `attention`: the check pool; each
        with `id` and `arms`, two names in the study's canonical order).
      seed: the rater's seed.
      attention_rate: attention checks per pair trial (0 for none).

    Returns:
      `[{'trial': id, 'kind': 'pair'|'attention', 'left': arm, 'right': arm}, ...]`.
    """
    if not 0.0 <= attention_rate <= 1.0:
        raise ValueError(f'attention_rate={attention_rate}: must be in [0, 1]')
    rng = np.random.default_rng(seed)
    pairs: Sequence[Mapping[str, Any]] = manifest['trials']
    pool: Sequence[Mapping[str, Any]] = manifest.get('attention', [])
    count = num_attention(len(pairs), attention_rate, len(pool))
    checks = [pool[i] for i in sorted(rng.choice(len(pool), count, replace=False))] if count else []
    items = []
    for group in (pairs, checks):
        for trial, first_left in zip(group, _balanced_sides(rng, len(group)), strict=True):
            a, b = trial['arms']
            left, right = (a, b) if first_left else (b, a)
            items.append(
                {'trial': trial['id'], 'kind': trial['kind'], 'left': left, 'right': right}
            )
    return [items[i] for i in rng.permutation(len(items))]
