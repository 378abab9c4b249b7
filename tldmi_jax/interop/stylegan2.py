"""StyleGAN2-ADA generator (PPA's prior) -> a `stylegan2` prior directory.

`convert_stylegan2(src, dst)` reads G_ema of a released network pickle (`ffhq.pkl`,
`afhqdog.pkl`, read by `stylegan2_pkl` without running any of its code) or a tensors-only
export of it (`torch.save(G_ema.state_dict(), 'g.pth')`, or the same names in an `.npz`),
maps every tensor onto `tldmi_jax.priors.stylegan2.Generator` and writes a prior directory
(`priors.load_prior`):

  prior, report = convert_stylegan2('ffhq.pkl', 'converted/stylegan2_ffhq')

The architecture comes from the pickled constructor arguments (`Generator(z_dim, c_dim,
w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs)`), or, for a
tensors-only export, from the tensor shapes; what shapes cannot tell (`conv_clamp`,
`mapping_lr`, `resample_filter`) takes the released models' values unless `options` says
otherwise, and the report says so.

Tensor names (`b{res}` for res = 4, 8, ..., conv0 only above 4 px):

| PyTorch (`G_ema.state_dict()`) | Flax variable |
|---|---|
| `mapping.fc{i}.weight` [out, in], `.bias` | `params/mapping/fc{i}/kernel` [in, out], `bias` |
| `mapping.w_avg` [w_dim] | `buffers/mapping/w_avg` |
| `synthesis.b4.const` [C, 4, 4] | `params/synthesis/b4/const` [4, 4, C] |
| `synthesis.b{res}.conv{j}.weight` [O, I, 3, 3], `.bias` | `params/.../kernel` [3, 3, I, O], bias |
| `synthesis.b{res}.conv{j}.affine.weight`, `.bias` | `params/.../conv{j}/affine/kernel`, `bias` |
| `synthesis.b{res}.conv{j}.noise_strength` [] | `params/.../conv{j}/noise_strength` [1] |
| `synthesis.b{res}.conv{j}.noise_const` [res, res] | `buffers/.../conv{j}/noise_const` |
| `synthesis.b{res}.torgb.weight` [3, I, 1, 1], `.bias`, `.affine.*` | `params/.../torgb/...` |
| `*.resample_filter` | not a variable: checked equal to the model's FIR filter |

Every tensor is mapped or ignored with its reason, every variable is filled; otherwise one
`ConversionError` lists every problem (`tldmi_jax.interop.convert`).
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tldmi_jax import config_lib, priors
from tldmi_jax.interop import convert, stylegan2_pkl, torch_load
from tldmi_jax.interop.kinds import ConversionError, Kind
from tldmi_jax.interop.mapping import Rule, linear, oihw_to_hwio
from tldmi_jax.priors import stylegan2, stylegan2_ops
from tldmi_jax.utils import npz

KIND = 'stylegan2_ada'  # The `--kind` of launch/convert.py.
DESCRIPTION = (
    'StyleGAN2-ADA G_ema (PPA): a network pickle ffhq.pkl/afhqdog.pkl, read without running '
    'its code, or a tensors-only export .pth/.npz of G_ema -> prior dir'
)
# `Generator.__init__` of the original, in order (init_args are positional).
_GENERATOR_ARGS = (
    'z_dim',
    'c_dim',
    'w_dim',
    'img_resolution',
    'img_channels',
    'mapping_kwargs',
    'synthesis_kwargs',
)
# The defaults of `MappingNetwork` and of `SynthesisNetwork` with its block and layer kwargs.
_MAPPING = dict(
    num_layers=8,
    embed_features=None,
    layer_features=None,
    activation='lrelu',
    lr_multiplier=0.01,
    w_avg_beta=0.995,
)
_SYNTHESIS = dict(
    channel_base=32768,
    channel_max=512,
    num_fp16_res=0,
    conv_clamp=None,
    architecture='skip',
    resample_filter=[1, 3, 3, 1],
    use_noise=True,
    activation='lrelu',
    fp16_channels_last=False,
    kernel_size=3,
)
_REQUIRED = {  # Setting: (the only value converted, why).
    'c_dim': (0, 'class-conditional generators (a label embedding) are not supported'),
    'mapping_kwargs.activation': ('lrelu', 'only the leaky ReLU mapping is built'),
    'synthesis_kwargs.architecture': ('skip', "only the 'skip' synthesis is built"),
    'synthesis_kwargs.activation': ('lrelu', 'only the leaky ReLU synthesis is built'),
    'synthesis_kwargs.use_noise': (True, 'the noise inputs are always built'),
    'synthesis_kwargs.kernel_size': (3, 'the convolutions are 3x3'),
}
_FILTER_KEY = re.compile(r'(.+\.)?resample_filter')
_FILTER_TOL = 1e-6


def rules(model: stylegan2.Generator) -> list[Rule]:
    """Every tensor of `G_ema.state_dict()` onto `model`'s variables (see the module doc)."""
    out = [Rule('mapping.w_avg', 'buffers/mapping/w_avg')]
    for i in range(model.mapping_layers):
        out += linear(f'mapping.fc{i}', f'mapping/fc{i}')
    for res in stylegan2.block_resolutions(model.img_resolution):
        src, dst = f'synthesis.b{res}', f'synthesis/b{res}'
        if res == 4:
            out.append(Rule(f'{src}.const', f'params/{dst}/const', _chw_to_hwc))
        for layer in ('conv1',) if res == 4 else ('conv0', 'conv1'):
            s, d = f'{src}.{layer}', f'{dst}/{layer}'
            out += linear(f'{s}.affine', f'{d}/affine')
            out += [
                Rule(f'{s}.weight', f'params/{d}/kernel', oihw_to_hwio),
                Rule(f'{s}.bias', f'params/{d}/bias'),
                Rule(f'{s}.noise_strength', f'params/{d}/noise_strength', _scalar_to_vector),
                Rule(f'{s}.noise_const', f'buffers/{d}/noise_const'),
            ]
        s, d = f'{src}.torgb', f'{dst}/torgb'
        out += linear(f'{s}.affine', f'{d}/affine')
        out += [Rule(f'{s}.weight', f'params/{d}/kernel', oihw_to_hwio)]
        out += [Rule(f'{s}.bias', f'params/{d}/bias')]
    return out


def _chw_to_hwc(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f'expected a [C, H, W] constant, got shape {x.shape}')
    return np.transpose(x, (1, 2, 0))


def _scalar_to_vector(x: np.ndarray) -> np.ndarray:
    if x.ndim != 0:
        raise ValueError(f'expected a scalar, got shape {x.shape}')
    return x.reshape(1)


def _build(arch: str, num_classes: int, image_size: int, **options):
    """`Kind.build`: the generator and the shapes of its variables."""
    del arch
    g, _, spec = priors.build_modules(
        stylegan2.KIND, num_classes=num_classes, image_size=image_size, **options
    )
    return g, priors.abstract_variables(spec)['generator']


def _filter_check(taps) -> Any:
    """Checks that every `resample_filter` buffer is the FIR filter the model uses."""
    want = stylegan2_ops.fir_filter(taps)

    def check(state: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
        errors = []
        for key, value in state.items():
            if not _FILTER_KEY.fullmatch(key):
                continue
            value = np.asarray(value)
            # Filters of 8 or more taps are stored separable (1-D) by the original.
            got = np.outer(value, value) if value.ndim == 1 else value
            if got.shape != want.shape or not np.allclose(got, want, atol=_FILTER_TOL):
                errors.append(f'{key}: not the FIR filter of resample_filter={list(taps)}')
        return errors, []

    return check


def make_kind(taps=(1, 3, 3, 1)) -> Kind:
    """The conversion table entry of a generator whose FIR filter has `taps`."""
    return Kind(
        KIND,
        stylegan2.KIND,
        rules,
        DESCRIPTION,
        ignore=((_FILTER_KEY.pattern, 'FIR filter buffer: a constant of the model (checked)'),),
        checks=(_filter_check(tuple(taps)),),
        build=_build,
        classifier=False,
    )


def options_from_kwargs(init_args: list, init_kwargs: Mapping[str, Any]):
    """`(image_size, prior options, notes)` from the pickled `Generator` arguments.

    Raises:
      ConversionError: listing every argument this model cannot reproduce or does not know.
    """
    if len(init_args) > len(_GENERATOR_ARGS):
        raise ConversionError(f'Generator has {len(init_args)} positional arguments.')
    kw = dict(zip(_GENERATOR_ARGS, init_args, strict=False))
    errors = [f'{k} given twice' for k in init_kwargs if k in kw]
    kw.update(init_kwargs)
    errors += [f'unknown Generator argument {k!r}' for k in kw if k not in _GENERATOR_ARGS]
    groups = {'mapping_kwargs': _MAPPING, 'synthesis_kwargs': _SYNTHESIS}
    merged = {}
    for group, defaults in groups.items():
        given = kw.get(group) or {}
        errors += [f'unknown {group} argument {k!r}' for k in given if k not in defaults]
        merged[group] = {**defaults, **given}
    for name, (value, why) in _REQUIRED.items():
        group, _, key = name.partition('.')
        got = merged[group][key] if key else kw.get(group, 0)
        if got != value:
            errors.append(f'{name}={got!r}: {why}')
    missing = [k for k in ('z_dim', 'w_dim', 'img_resolution', 'img_channels') if k not in kw]
    errors += [f'missing Generator argument {k!r}' for k in missing]
    if errors:
        raise ConversionError(
            'Cannot convert this StyleGAN2-ADA generator:\n' + '\n'.join(f'- {e}' for e in errors)
        )
    mapping, synthesis = merged['mapping_kwargs'], merged['synthesis_kwargs']
    w_dim = int(kw['w_dim'])
    features = mapping['layer_features']
    options = dict(
        z_dim=int(kw['z_dim']),
        w_dim=w_dim,
        mapping_layers=int(mapping['num_layers']),
        layer_features=None if features in (None, w_dim) else int(features),
        mapping_lr=float(mapping['lr_multiplier']),
        channel_base=int(synthesis['channel_base']),
        channel_max=int(synthesis['channel_max']),
        conv_clamp=synthesis['conv_clamp'],
        resample_filter=[float(t) for t in synthesis['resample_filter']],
        channels=int(kw['img_channels']),
    )
    notes = []
    if synthesis['num_fp16_res']:
        notes.append(
            f'num_fp16_res={synthesis["num_fp16_res"]}: those float16 layers run in float32 '
            'here, as PPA runs them (force_fp32=True)'
        )
    return int(kw['img_resolution']), options, notes


def _channel_base(widths: dict[int, int], channel_max: int) -> int:
    """The smallest `channel_base` with `min(base // res, channel_max) == widths[res]`."""
    base = max(channel_max * r if c >= channel_max else c * r for r, c in widths.items())
    if any(stylegan2.channels_at(r, base, channel_max) != c for r, c in widths.items()):
        raise ConversionError(
            f'Cannot convert: the block widths {widths} do not follow min(channel_base // res, '
            'channel_max).'
        )
    return base


def options_from_tensors(state: Mapping[str, np.ndarray]):
    """`(image_size, prior options, notes)` read off the tensor shapes of a state dict.

    Raises:
      ConversionError: the tensors are not a StyleGAN2 generator's.
    """
    layers = sorted(
        int(m.group(1)) for k in state if (m := re.fullmatch(r'mapping\.fc(\d+)\.weight', k))
    )
    resolutions = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r'synthesis\.b(\d+)\.', k))}
    )
    if not layers or layers != list(range(len(layers))) or not resolutions:
        raise ConversionError(
            'Cannot convert: these tensors are not a StyleGAN2 generator (no mapping.fc0..N '
            f'or synthesis.b* keys; found e.g. {sorted(state)[:5]}).'
        )
    top = resolutions[-1]
    try:
        first, last = state['mapping.fc0.weight'], state[f'mapping.fc{layers[-1]}.weight']
        widths = {4: int(np.shape(state['synthesis.b4.const'])[0])}
        for res in resolutions[1:]:
            widths[res] = int(np.shape(state[f'synthesis.b{res}.conv1.weight'])[0])
        channels = int(np.shape(state[f'synthesis.b{top}.torgb.weight'])[0])
    except KeyError as e:
        raise ConversionError(f'Cannot convert: the generator tensors lack {e}.') from None
    w_dim = int(np.shape(last)[0])
    hidden = int(np.shape(first)[0])
    channel_max = max(widths.values())
    defaults = config_lib.prior_options(stylegan2.KIND)
    options = dict(
        z_dim=int(np.shape(first)[1]),
        w_dim=w_dim,
        mapping_layers=len(layers),
        layer_features=None if len(layers) == 1 or hidden == w_dim else hidden,
        mapping_lr=defaults['mapping_lr'],
        channel_base=_channel_base(widths, channel_max),
        channel_max=channel_max,
        conv_clamp=defaults['conv_clamp'],
        resample_filter=list(defaults['resample_filter']),
        channels=channels,
    )
    notes = [
        'a tensors-only export does not record conv_clamp, mapping_lr and resample_filter: '
        f'{options["conv_clamp"]}, {options["mapping_lr"]} and {options["resample_filter"]} '
        "(the released models' values) unless options= says otherwise"
    ]
    return top, options, notes


def convert_network(
    tensors: Mapping[str, np.ndarray],
    image_size: int,
    options: Mapping[str, Any],
    *,
    source: str = 'StyleGAN2 state dict',
    notes: list[str] | tuple[str, ...] = (),
) -> tuple[priors.Prior, dict[str, Any]]:
    """Maps G_ema's tensors onto a `stylegan2` prior.

    Args:
      tensors: `{name: array}` as `G_ema.state_dict()`.
      image_size: the output resolution.
      options: the prior options (`config_lib.PRIOR_OPTIONS['stylegan2']` keys).
      source: name of the source in messages and the report.
      notes: notes for the report.

    Returns:
      `(prior, report)`.

    Raises:
      ConversionError: listing every unmapped, missing or misshapen tensor and failed check.
    """
    options = dict(options)
    kind = make_kind(options['resample_filter'])
    conversion = convert.convert_state_dict(
        kind, tensors, num_classes=0, image_size=image_size, model_kwargs=options, source=source
    )
    g, _, spec = priors.build_modules(stylegan2.KIND, image_size=image_size, **options)
    variables = {'generator': {c: tree for c, tree in conversion.variables.items() if tree}}
    prior = priors.from_modules(g, None, spec, variables)
    report = {
        'kind': KIND,
        'source': source,
        'spec': spec,
        'num_ws': g.num_ws,
        'generator': conversion.report,
        'notes': [*notes, *conversion.report['notes']],
    }
    return prior, report


def read_source(src: str, src_key: str | None = None):
    """`(tensors, image_size, options, notes, source)` of a pickle or tensors-only export.

    Raises:
      FileNotFoundError: naming `src`.
      UnsafeCheckpointError, ValueError, ConversionError: see `convert_stylegan2`.
    """
    if not os.path.isfile(src):
        raise FileNotFoundError(
            f'StyleGAN2-ADA generator not found: {src} (expected the network pickle of '
            'stylegan2-ada-pytorch, ffhq.pkl or afhqdog.pkl, or a tensors-only export of '
            'G_ema as .pth or .npz)'
        )
    ext = os.path.splitext(src)[1].lower()
    if ext == '.pkl':
        network = stylegan2_pkl.read_network_pickle(src, key=src_key)
        if network.class_name != 'Generator':
            raise ConversionError(
                f'{src}: network {network.key!r} is a {network.class_name}, not a Generator.'
            )
        size, options, notes = options_from_kwargs(network.init_args, network.init_kwargs)
        return network.tensors, size, options, notes, f'{src}[{network.key}]'
    if ext == '.npz':
        tensors = npz.load(src, 'StyleGAN2 generator tensors', fix='export them again')
    else:
        tensors = torch_load.load_state_dict(src, key=src_key)
    size, options, notes = options_from_tensors(torch_load.strip_wrapper_prefix(tensors))
    return tensors, size, options, notes, src


def convert_stylegan2(
    src: str,
    dst: str,
    *,
    src_key: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[priors.Prior, dict[str, Any]]:
    """Reads a StyleGAN2-ADA generator safely and writes a `stylegan2` prior directory.

    Args:
      src: a network pickle (`.pkl`: `ffhq.pkl`, `afhqdog.pkl`, a training snapshot) or a
        tensors-only export of G_ema (`.pth`/`.pt`/`.tar` from `torch.save`, or `.npz`).
      dst: output directory (replaced): `priors.save_prior` plus `conversion.json`.
      src_key: the network of a pickle ('G_ema', default; or 'G'); for a `.pth`, the
        '/'-path of the state dict inside it (None finds it).
      options: prior options that override what the source says or implies (e.g.
        `{'conv_clamp': 256}` for a tensors-only export of an ADA-config model).

    Returns:
      `(prior, report)`.

    Raises:
      FileNotFoundError: naming `src`.
      UnsafeCheckpointError: the file would need code to load (nothing from it ran).
      ConversionError: unsupported settings, or tensors that do not map (all listed).
      ValueError: a damaged or foreign file, unknown options.
    """
    tensors, image_size, found, notes, source = read_source(src, src_key)
    unknown = sorted(set(options or {}) - set(found))
    if unknown:
        raise ValueError(f'Unknown stylegan2 option(s) {unknown}; known: {sorted(found)}.')
    prior, report = convert_network(
        tensors, image_size, {**found, **(options or {})}, source=source, notes=notes
    )
    priors.save_prior(dst, prior, files={'conversion.json': report})
    return prior, report
