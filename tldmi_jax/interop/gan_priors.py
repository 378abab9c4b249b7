"""GAN priors from their two PyTorch halves: convert both, check them, write one prior.

The originals save a GAN as two files, the generator and the discriminator;
`convert_prior` converts both halves of a family (their kinds and rules:
`tldmi_jax.interop.gans`) and writes one prior directory (`tldmi_jax.priors.save_prior`),
which `priors.load_prior` and the attacks read:

  prior, report = convert_prior('kedmi', 'celeba_G.tar', 'celeba_D.tar', 'converted/kedmi')
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tldmi_jax import priors
from tldmi_jax.interop import convert, torch_load
from tldmi_jax.interop.gans import PRIORS, prior_modules


def _num_classes(
    family: str,
    states: Mapping[str, Mapping[str, np.ndarray]],
    keys: Mapping[str, str | None],
) -> int | None:
    """The prior's classes from whichever halves hold them (0 if neither kind has any).

    Raises:
      ValueError: if the two halves disagree.
    """
    if not any(keys.values()):
        return 0  # GMI: unconditional
    found = {}
    for half, key in keys.items():
        state = torch_load.strip_wrapper_prefix(states[half])
        if key and key in state:
            found[half] = int(np.shape(state[key])[0])
    if len(set(found.values())) > 1:
        detail = ', '.join(f'the {half} has {k}' for half, k in found.items())
        raise ValueError(f'The two halves of the {family} prior disagree on the classes: {detail}.')
    return next(iter(found.values()), None)


def convert_prior_state(
    family: str,
    g_state: Mapping[str, np.ndarray],
    d_state: Mapping[str, np.ndarray],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    sources: tuple[str, str] = ('generator state dict', 'discriminator state dict'),
) -> tuple[priors.Prior, dict[str, Any]]:
    """Converts the two state dicts of a GAN into a `priors.Prior`.

    Args:
      family: 'gmi' | 'kedmi' | 'plgmi' (`PRIORS`).
      g_state, d_state: flat `{torch key: array}` of the generator and the discriminator.
      arch: `family` (default) or `f'{family}_tiny'`.
      num_classes: the target's classes; None reads them from the checkpoints (KEDMI's
        `fc_layer`, PLG-MI's embeddings; both halves must agree). Ignored for gmi.
      image_size: output side (default 64).
      options: prior options (z_dim, g_dim, d_dim, ...; `CONVERTED_DEFAULTS` apply).
      sources: names of the two sources in messages and the report.

    Returns:
      `(prior, report)`: the report holds the spec, both halves' conversion reports and
      notes.

    Raises:
      ConversionError: listing every problem of both halves.
      ValueError: unknown family, halves that disagree on the classes, bad options.
    """
    if family not in PRIORS:
        raise ValueError(f'Unknown prior kind {family!r}; known: {", ".join(PRIORS)}.')
    kinds = dataclasses.asdict(PRIORS[family])  # {'generator': kind, 'discriminator': kind}
    arch = arch or family
    options = dict(options or {})
    states = {'generator': g_state, 'discriminator': d_state}
    if num_classes is None:
        keys = {half: convert.get_kind(name).num_classes_key for half, name in kinds.items()}
        num_classes = _num_classes(family, states, keys)
    conversions, errors = {}, []
    for (half, name), source in zip(kinds.items(), sources, strict=True):
        try:
            conversions[half] = convert.convert_state_dict(
                name,
                states[half],
                arch=arch,
                num_classes=num_classes,
                image_size=image_size,
                model_kwargs=options,
                source=source,
            )
        except convert.ConversionError as e:
            errors.append(f'{half}: {e}')
    if errors:
        raise convert.ConversionError('\n'.join(errors))
    d_conv = conversions['discriminator']
    g, d, spec = prior_modules(family, arch, d_conv.num_classes, d_conv.image_size, **options)
    variables = {
        half: {c: tree for c, tree in conv.variables.items() if tree}
        for half, conv in conversions.items()
    }
    prior = priors.from_modules(g, d, spec, variables)
    notes = []
    if family == 'plgmi' and spec['out_act'] == 'tanh':
        notes.append(
            "out_act='tanh': the generator returns the original's raw tanh output in [-1, 1], "
            'which the original feeds to the target as an image'
        )
    report = {
        'kind': family,
        'spec': spec,
        'generator': conversions['generator'].report,
        'discriminator': d_conv.report,
        'notes': notes,
    }
    return prior, report


def convert_prior(
    family: str,
    g_src: str,
    d_src: str,
    dst: str,
    *,
    g_key: str | None = None,
    d_key: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[priors.Prior, dict[str, Any]]:
    """Reads a GAN's two PyTorch checkpoints safely and writes a prior directory.

    Args:
      family: 'gmi' | 'kedmi' | 'plgmi'.
      g_src, d_src: the generator's and the discriminator's `.pth`/`.tar` files.
      dst: output directory: `priors.save_prior` (variables + `prior.json`, so
        `priors.load_prior(dst)` works) plus `conversion.json` (the report).
      g_key, d_key: '/'-paths of the state dicts inside the files; None finds them.
      arch, num_classes, image_size, options: see `convert_prior_state`.

    Returns:
      `(prior, report)`.

    Raises:
      FileNotFoundError: naming a missing file.
      torch_load.UnsafeCheckpointError: if a file would need arbitrary code to load.
      ConversionError, ValueError: see `convert_prior_state`.
    """
    g_state = torch_load.load_state_dict(g_src, key=g_key)
    d_state = torch_load.load_state_dict(d_src, key=d_key)
    prior, report = convert_prior_state(
        family,
        g_state,
        d_state,
        arch=arch,
        num_classes=num_classes,
        image_size=image_size,
        options=options,
        sources=(g_src, d_src),
    )
    priors.save_prior(dst, prior, files={'conversion.json': report})
    return prior, report
