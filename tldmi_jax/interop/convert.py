"""PyTorch checkpoint -> tldmi_jax model checkpoint, for every registered *kind*.

A kind names one family of PyTorch checkpoints (`vgg16` = the TL-DMI/KEDMI VGG16 target,
`evolve_ir152` = the face.evoLVe MS-Celeb-1M IR-152 backbone, ...); `KINDS`
(`tldmi_jax.interop.kinds`) is the one table of them.

Conversion is strict. Every source key is consumed by a rule or matched by an `ignore`
pattern (with the reason, reported); every target leaf is filled unless the kind leaves it
out on purpose (`skip_targets`, e.g. the fresh TL-DMI head of a pretraining backbone; the
trainer's `init.dont_load` keeps those freshly initialised). Anything else (an unmapped or
missing key, a shape that differs) fails with one `ConversionError` listing all problems.

  conversion = convert_checkpoint('vgg16', 'VGG16_88.26.tar', 'converted/vgg16')
  model, variables = classifiers.load('converted/vgg16')

The output directory is a model checkpoint (`tldmi_jax.utils.checkpoint.save_model`) with
`conversion.json` (the report) and, for complete classifiers, the `config.json` that
`tldmi_jax.classifiers.load` reads. The FID Inception (`fid_inception`) is a model checkpoint for
`config.fid.inception_checkpoint`. The GAN kinds are the two halves of a prior (generator,
discriminator); they convert in pairs into a prior directory with
`tldmi_jax.interop.gan_priors.convert_prior`.
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from tldmi_jax import models
from tldmi_jax.interop import torch_load
from tldmi_jax.interop.kinds import (
    COMMON_IGNORE,
    FAMILIES,
    KINDS,
    ConversionError,
    Kind,
    get_kind,
    kind_for_state,
)
from tldmi_jax.interop.mapping import Rule
from tldmi_jax.utils import checkpoint

__all__ = [
    'FAMILIES',
    'KINDS',
    'Conversion',
    'ConversionError',
    'Kind',
    'convert_checkpoint',
    'get_kind',
    'kind_for_state',
]


@dataclasses.dataclass
class Conversion:
    """A converted model: variables, the model they belong to, and the report.

    `other_collections` holds variable collections besides params and batch_stats (the
    'spectral' vectors of a PLG-MI discriminator).
    """

    params: dict[str, Any]
    batch_stats: dict[str, Any]
    model: nn.Module
    arch: str
    num_classes: int
    image_size: int
    channels: int
    model_kwargs: dict[str, Any]
    report: dict[str, Any]
    other_collections: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def variables(self) -> dict[str, Any]:
        return {'params': self.params, 'batch_stats': self.batch_stats, **self.other_collections}

    def config(self) -> dict[str, Any]:
        """The `config.json` content `train.classifier.load_classifier` reads."""
        return {
            'model': {
                'arch': self.arch,
                'num_classes': self.num_classes,
                'kwargs': self.model_kwargs,
            },
            'data': {'image_size': self.image_size, 'channels': self.channels},
        }


def _model_and_targets(
    kind: Kind,
    arch: str,
    num_classes: int,
    image_size: int,
    channels: int,
    model_kwargs: Mapping[str, Any],
) -> tuple[nn.Module, dict]:
    """The model and `{'collection/path': ShapeDtypeStruct}` of its variables (shapes only)."""
    if kind.build is not None:
        model, shapes = kind.build(arch, num_classes, image_size, **model_kwargs)
    else:
        model = kind.make_model(arch, num_classes, **model_kwargs)
        inputs = kind.example_inputs(image_size, channels)
        init = lambda *xs: model.init(jax.random.key(0), *xs, train=False)
        shapes = jax.eval_shape(init, *inputs)
    return model, {'/'.join(k): v for k, v in traverse_util.flatten_dict(shapes).items()}


def _apply_rules(
    rules: list[Rule], state: Mapping[str, np.ndarray], expected: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], set[str], set[str], dict[str, list[str]]]:
    """Runs the rules: `(filled leaves, used source keys, reported targets, errors)`."""
    out, used, reported = {}, set(), set()
    errors = {'missing': [], 'no_target': [], 'shape': []}
    for rule in rules:
        if rule.dst in out or rule.dst in reported:
            raise ValueError(f'Mapping bug: more than one rule fills {rule.dst}.')
        if rule.dst not in expected:
            errors['no_target'].append(f'{rule.src} -> {rule.dst}')
            reported.add(rule.dst)
            continue
        if rule.src not in state:
            errors['missing'].append(f'{rule.src} (for {rule.dst})')
            reported.add(rule.dst)
            continue
        used.add(rule.src)
        src_shape = tuple(np.shape(state[rule.src]))
        want = tuple(expected[rule.dst].shape)
        try:
            value = rule.transform(np.asarray(state[rule.src]))
        except ValueError as e:
            errors['shape'].append(f'{rule.src} {src_shape} -> {rule.dst}: {e}')
            reported.add(rule.dst)
            continue
        if tuple(value.shape) != want:
            errors['shape'].append(
                f'{rule.src} {src_shape} -> {rule.dst} {tuple(value.shape)}, model has {want}'
            )
            reported.add(rule.dst)
            continue
        out[rule.dst] = np.ascontiguousarray(value, dtype=np.dtype(expected[rule.dst].dtype))
    return out, used, reported, errors


def _sort_leftovers(
    kind: Kind, state: Mapping[str, np.ndarray], used: set[str]
) -> tuple[dict[str, str], list[str]]:
    """Source keys no rule used: `({ignored key: reason}, [unmapped 'key shape'])`."""
    ignore = [(re.compile(p), reason) for p, reason in (*COMMON_IGNORE, *kind.ignore)]
    ignored, unmapped = {}, []
    for key in state:
        if key in used:
            continue
        reason = next((r for p, r in ignore if p.fullmatch(key)), None)
        if reason is None:
            unmapped.append(f'{key} {tuple(np.shape(state[key]))}')
        else:
            ignored[key] = reason
    return ignored, unmapped


def _apply_aliases(kind: Kind, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in kind.aliases:
            if re.fullmatch(pattern, new):
                new = re.sub(pattern, repl, new)
        if new in out:
            raise ConversionError(f'{key!r} and another key both become {new!r}.')
        out[new] = value
    return out


def _format_errors(source: str, sections: list[tuple[str, list[str]]], hint: str) -> str:
    parts = [f'Cannot convert {source}:']
    for title, items in sections:
        if items:
            parts.append(f'- {title} ({len(items)}):')
            parts.extend(f'    {item}' for item in items)
    if hint:
        parts.append(hint)
    return '\n'.join(parts)


def convert_state_dict(
    kind: str | Kind,
    state: Mapping[str, np.ndarray],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    channels: int = 3,
    model_kwargs: Mapping[str, Any] | None = None,
    source: str = 'state dict',
) -> Conversion:
    """Maps a flat PyTorch state dict (numpy arrays) onto the kind's model.

    Args:
      kind: a `KINDS` name or a `Kind`.
      state: `{torch key: array}`; a `module.` prefix is dropped.
      arch: target arch instead of the kind's (e.g. `vgg16_tiny`, `gmi_tiny`).
      num_classes: class count; None reads it from the kind's `num_classes_key`.
      image_size: input size (sets the flatten width of VGG/IR heads); None uses the kind's
        or the arch's default.
      channels: input channels.
      model_kwargs: extra module attributes for `models.get_model` (the prior options,
        e.g. `g_dim`, for the GAN halves).
      source: name of the source used in messages.

    Returns:
      The `Conversion` (float32 numpy variables).

    Raises:
      ConversionError: listing every unmapped source key, every source key the mapping
        needs but the state dict lacks, every unfilled target leaf, every shape mismatch
        and every failed check.
    """
    kind = get_kind(kind)
    state = _apply_aliases(kind, torch_load.strip_wrapper_prefix(state))
    arch = arch or kind.arch
    model_kwargs = dict(model_kwargs or {})
    if num_classes is None:
        key = kind.num_classes_key
        num_classes = int(np.shape(state[key])[0]) if key and key in state else 1000
    image_size = image_size or kind.image_size or models.default_image_size(arch)
    model, targets = _model_and_targets(kind, arch, num_classes, image_size, channels, model_kwargs)

    skip = [re.compile(p) for p in kind.skip_targets]
    left_fresh = sorted(p for p in targets if any(s.fullmatch(p.split('/', 1)[1]) for s in skip))
    expected = {p: v for p, v in targets.items() if p not in left_fresh}

    out, used, reported, errors = _apply_rules(kind.rules(model), state, expected)
    ignored, unmapped = _sort_leftovers(kind, state, used)
    unfilled = sorted(p for p in expected if p not in out and p not in reported)
    check_errors, notes = [], []
    for check in kind.checks:
        check_fail, check_notes = check(state)
        check_errors += check_fail
        notes += check_notes

    if unmapped or unfilled or check_errors or any(errors.values()):
        hint = ''
        if errors['shape']:
            hint = (
                f'(Shapes were checked for arch={arch}, num_classes={num_classes}, '
                f'image_size={image_size}; a head width that differs often means another '
                'image size.)'
            )
        sections = [
            ('source keys with no mapping', unmapped),
            ('source keys the mapping needs but the checkpoint lacks', errors['missing']),
            ('mapped targets the model does not have', errors['no_target']),
            ('shape mismatches', errors['shape']),
            ('model variables left unfilled', unfilled),
            ('failed checks', check_errors),
        ]
        raise ConversionError(_format_errors(f'{source} as kind {kind.name!r}', sections, hint))

    tree = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})
    report = {
        'kind': kind.name,
        'source': source,
        'arch': arch,
        'num_classes': num_classes if kind.full_model else None,
        'image_size': image_size,
        'mapped': len(out),
        'ignored': ignored,
        'left_fresh': left_fresh,
        'notes': notes,
    }
    return Conversion(
        params=tree.pop('params', {}),
        batch_stats=tree.pop('batch_stats', {}),
        model=model,
        arch=arch,
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        model_kwargs=model_kwargs,
        report=report,
        other_collections=tree,
    )


def convert_checkpoint(
    kind: str | Kind,
    src: str,
    dst: str,
    *,
    src_key: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    channels: int = 3,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Conversion:
    """Reads a PyTorch checkpoint safely, converts it and writes a model checkpoint.

    Args:
      kind: a `KINDS` name, a `FAMILIES` name (`torchvision_resnet`, `torchvision_densenet`:
        the depth is read from the checkpoint) or a `Kind`.
      src: the `.pth`/`.tar` file.
      dst: output directory (replaced): an orbax model checkpoint plus `conversion.json`
        and, for complete classifiers, `config.json` (so `load_classifier(dst)` works);
        `fid_inception` writes what `evaluation.evaluate.load_inception` reads.
      src_key: '/'-path of the state dict inside the checkpoint; None finds it.
      arch, num_classes, image_size, channels, model_kwargs: see `convert_state_dict`.

    Returns:
      The `Conversion`.

    Raises:
      FileNotFoundError: naming `src` if it is missing.
      torch_load.UnsafeCheckpointError: if `src` would need arbitrary code to load.
      ConversionError: see `convert_state_dict`.
      ValueError: for one half of a GAN prior (use `gan_priors.convert_prior`).
    """
    if isinstance(kind, str) and kind in FAMILIES:
        state = torch_load.load_state_dict(src, key=src_key)
        kind = kind_for_state(kind, state)
    else:
        state = None
    kind = get_kind(kind)
    if kind.prior:
        raise ValueError(
            f'{kind.name} is one half of a {kind.prior} prior; convert it together with the '
            f'other half: launch/convert.py --kind={kind.prior} --src=GENERATOR '
            '--src_d=DISCRIMINATOR --dst=DIR (gan_priors.convert_prior).'
        )
    if state is None:
        state = torch_load.load_state_dict(src, key=src_key)
    conversion = convert_state_dict(
        kind,
        state,
        arch=arch,
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        model_kwargs=model_kwargs,
        source=src,
    )
    files = {'conversion.json': conversion.report}
    if kind.full_model and kind.classifier:
        files['config.json'] = conversion.config()
    checkpoint.save_model(dst, conversion.params, conversion.batch_stats, files=files)
    return conversion
