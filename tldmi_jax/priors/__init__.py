"""Generative priors of the MI attacks: GMI, KEDMI, PLG-MI GANs and StyleGAN2, behind one
interface.

A `Prior` bundles a generator, a discriminator, their variables and the JSON spec that
rebuilds them. `make_prior` builds one with fresh variables, `save_prior`/`load_prior`
write and read it (orbax tree + `prior.json`), and `tldmi_jax.train.gan` trains one of the
`TRAINABLE` families. The StyleGAN2 prior of PPA (`stylegan2`) is only converted from the
released pickles (`tldmi_jax.interop.stylegan2`); it has a generator and no discriminator.

Example::

    from tldmi_jax import priors
    prior = priors.load_prior('workdirs/gan_gmi')           # a train_gan workdir or prior dir
    z = jax.random.normal(key, (8, prior.z_dim))
    images = prior.generate(prior.variables['generator'], z)  # [8, 64, 64, 3] in [0, 1]
    scores = prior.discriminate(prior.variables['discriminator'], images)  # [8]
"""

import dataclasses
import json
import os
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax

from tldmi_jax import config_lib
from tldmi_jax.priors import gmi, kedmi, plgmi, stylegan2
from tldmi_jax.utils import atomic, checkpoint

FAMILIES: dict[str, ModuleType] = {m.KIND: m for m in (gmi, kedmi, plgmi, stylegan2)}
TRAINABLE = (gmi.KIND, kedmi.KIND, plgmi.KIND)  # What `train.gan` trains; stylegan2 is converted.
PRIOR_DIR = 'prior'  # Where a train_gan workdir keeps its final prior.
SPEC_FILE = 'prior.json'
_TREE_DIR = 'variables'


def check_trainable(kind: str) -> None:
    """Raises ValueError, naming the trainable kinds, unless `train.gan` trains `kind`."""
    if kind not in TRAINABLE:
        raise ValueError(f'Unknown prior kind {kind!r}; known: {", ".join(TRAINABLE)}.')


@dataclasses.dataclass
class Prior:
    """A GAN prior.

    Attributes:
      kind: 'gmi' | 'kedmi' | 'plgmi' | 'stylegan2'.
      generator: gmi/kedmi: `(z, train) -> images [B, H, W, 3] in [0, 1]`;
        plgmi: `(z, y, train) -> images`; stylegan2: `stylegan2.Generator`, `(z, psi,
        cutoff, noise_mode) -> raw images [B, R, R, 3]` about [-1, 1], with `map` and
        `synthesize` methods for the w space.
      discriminator: gmi: `(x) -> scores [B]`; kedmi: `(x) -> (features [B, F], logits
        [B, K])`; plgmi: `(x, y, train) -> scores [B]`; stylegan2: None.
      variables: {'generator': {'params', 'batch_stats'}, 'discriminator': {'params', ...
        ('spectral' for plgmi)}}; stylegan2: {'generator': {'params', 'buffers'}}.
      z_dim: latent size.
      num_classes: the target's classes (0 for gmi).
      image_size: output side in pixels.
      spec: JSON-able arguments of `make_prior` that rebuild the modules.
    """

    kind: str
    generator: nn.Module
    discriminator: nn.Module
    variables: dict
    z_dim: int
    num_classes: int
    image_size: int
    spec: dict

    def generate(self, g_vars: dict, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Images from latents in eval mode (running BatchNorm statistics).

        Args:
          g_vars: generator variables, e.g. `self.variables['generator']`.
          z: [B, z_dim] float32.
          y: int [B] class labels (plgmi only; required there).

        Returns:
          [B, image_size, image_size, 3] in [0, 1] (raw tanh for plgmi with out_act='tanh';
          stylegan2: psi 1, the stored noise, `stylegan2.to_images` without crop or resize).
        """
        if self.kind == stylegan2.KIND:
            return stylegan2.to_images(_apply_eval(self.generator, g_vars, z, train=None))
        if self.kind == 'plgmi':
            if y is None:
                raise ValueError('The plgmi generator is conditional: pass labels y.')
            return _apply_eval(self.generator, g_vars, z, y)
        return _apply_eval(self.generator, g_vars, z)

    def discriminate(self, d_vars: dict, x: jax.Array, y: jax.Array | None = None) -> Any:
        """The discriminator on images x [B, H, W, 3] in eval mode (see `discriminator`)."""
        if self.discriminator is None:
            raise ValueError(f'The {self.kind} prior has no discriminator (only G_ema converts).')
        if self.kind == 'plgmi':
            return _apply_eval(self.discriminator, d_vars, x, y)
        return _apply_eval(self.discriminator, d_vars, x, train=None)


def _apply_eval(module: nn.Module, variables: dict, *inputs: jax.Array, train=False):
    """`module.apply(variables, *inputs, train=False)`; `train=None` for modules without a
    `train` argument. Called eagerly it runs compiled once per module and shapes (an
    unjitted apply compiles every operation on its own); inside a traced function it is
    traced inline, as before (a nested jit would change float rounding in the attacks)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((variables, inputs))):
        return _apply(module, variables, *inputs, train=train)
    return _apply_jit(module, variables, *inputs, train=train)


def _apply(module: nn.Module, variables: dict, *inputs: jax.Array, train=False):
    if train is None:
        return module.apply(variables, *inputs)
    return module.apply(variables, *inputs, train=train)


_apply_jit = jax.jit(_apply, static_argnames=('module', 'train'))


def _family(kind: str) -> ModuleType:
    if kind not in FAMILIES:
        raise ValueError(f'Unknown prior kind {kind!r}; known: {", ".join(FAMILIES)}.')
    return FAMILIES[kind]


def build_modules(kind: str, *, num_classes: int = 0, image_size: int = 64, tiny=False, **kw):
    """The modules and resolved spec of a prior, without variables.

    Returns:
      `(generator, discriminator, spec)`.

    Raises:
      ValueError: unknown kind or option, or sizes the family cannot build.
    """
    family = _family(kind)
    options = config_lib.prior_options(kind, tiny=tiny)
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise ValueError(f'{kind} prior has no option(s) {unknown}; known: {sorted(options)}.')
    options.update(kw)
    num_classes = 0 if kind == 'gmi' else int(num_classes)
    g, d = family.build(num_classes, int(image_size), **options)
    spec = dict(kind=kind, num_classes=num_classes, image_size=int(image_size), **options)
    return g, d, spec


def make_prior(
    kind: str, *, num_classes: int = 0, image_size: int = 64, tiny: bool = False, seed=0, **kw
) -> Prior:
    """Builds a prior with freshly initialised variables.

    Args:
      kind: 'gmi' | 'kedmi' | 'plgmi' | 'stylegan2'.
      num_classes: the target's classes (kedmi, plgmi); ignored for gmi; 0 for stylegan2.
      image_size: output side, 4 * 2**n (64 in the originals; tiny tests use 16 or 32;
        stylegan2: a power of two, 1024 for FFHQ).
      tiny: start from the family's tiny widths (tests, runlocal) instead of the originals.
      seed: initialisation seed.
      **kw: family options: z_dim, g_dim, d_dim; kedmi mbd_features, mbd_kernel_dims;
        plgmi bottom_width, out_act ('unit' | 'tanh'); stylegan2: see
        `config_lib.PRIOR_OPTIONS['stylegan2']`.

    Returns:
      A `Prior`.

    Raises:
      ValueError: unknown kind or option, bad sizes.
    """
    g, d, spec = build_modules(
        kind, num_classes=num_classes, image_size=image_size, tiny=tiny, **kw
    )
    family = _family(kind)
    init = jax.jit(
        lambda key: family.init(
            g,
            d,
            key,
            z_dim=spec['z_dim'],
            image_size=spec['image_size'],
            num_classes=spec['num_classes'],
        )
    )
    with _float32_defaults():
        variables = init(jax.random.key(seed))
    return from_modules(g, d, spec, variables)


def _float32_defaults():
    """Builds prior variables in float32 also under `JAX_ENABLE_X64=1`.

    The priors' own layers (`layers.ConvTranspose`, `InstanceNorm`, spectral norm) create
    parameters in JAX's default float type, which x64 mode makes float64; those would then
    meet float32 activations in a convolution. The priors are float32 models, like the
    PyTorch originals and like flax's layers (whose `param_dtype` is float32).
    """
    return jax.enable_x64(False)


def from_modules(g: nn.Module, d: nn.Module, spec: dict, variables: dict) -> Prior:
    """A `Prior` from its modules, the spec that built them and their variables."""
    return Prior(
        kind=spec['kind'],
        generator=g,
        discriminator=d,
        variables=variables,
        z_dim=spec['z_dim'],
        num_classes=spec['num_classes'],
        image_size=spec['image_size'],
        spec=dict(spec),
    )


def abstract_variables(spec: dict) -> dict:
    """Shapes and dtypes of a prior's variables (no computation)."""
    kw = {k: v for k, v in spec.items() if k not in ('kind', 'num_classes', 'image_size')}
    g, d, spec = build_modules(
        spec['kind'], num_classes=spec['num_classes'], image_size=spec['image_size'], **kw
    )
    family = _family(spec['kind'])
    with _float32_defaults():
        return jax.eval_shape(
            lambda key: family.init(
                g,
                d,
                key,
                z_dim=spec['z_dim'],
                image_size=spec['image_size'],
                num_classes=spec['num_classes'],
            ),
            jax.random.key(0),
        )


def save_prior(path: str, prior: Prior, files: dict[str, Any] | None = None) -> None:
    """Writes `prior` to the directory `path` (replacing it): variables + `prior.json`.

    The directory is written beside `path` and swapped in whole (`atomic.replacing_dir`), so
    a killed save never leaves a half-written prior. `files` (`{filename: payload}`) are
    written as JSON beside them (a converter's `conversion.json`).
    """
    with atomic.replacing_dir(path) as tmp:
        checkpoint.save_tree(os.path.join(tmp, _TREE_DIR), prior.variables)
        atomic.write_json(os.path.join(tmp, SPEC_FILE), prior.spec, sort_keys=True)
        for name, payload in (files or {}).items():
            atomic.write_json(os.path.join(tmp, name), payload)


def find_prior_dir(path: str) -> str:
    """The prior directory of `path`: the path itself or a train_gan workdir's `prior/`.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: neither `path` nor `path/prior` holds a `prior.json`.
    """
    atomic.recover_dir(path)
    atomic.recover_dir(os.path.join(path, PRIOR_DIR))
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Prior not found: {path} does not exist.')
    for candidate in (path, os.path.join(path, PRIOR_DIR)):
        if os.path.isfile(os.path.join(candidate, SPEC_FILE)):
            return candidate
    raise ValueError(
        f'{path} is not a prior: no {SPEC_FILE} in it or in {os.path.join(path, PRIOR_DIR)} '
        '(write one with save_prior or launch/train_gan.py).'
    )


def load_prior(path: str) -> Prior:
    """Reads a prior written by `save_prior` (or the `prior/` of a train_gan workdir).

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: `path` is not a prior, or its variables do not fit its spec (the message
        names the file and every mismatched leaf).
    """
    prior_dir = find_prior_dir(path)
    spec_path = os.path.join(prior_dir, SPEC_FILE)
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        kw = {k: v for k, v in spec.items() if k not in ('kind', 'num_classes', 'image_size')}
        g, d, spec = build_modules(
            spec['kind'], num_classes=spec['num_classes'], image_size=spec['image_size'], **kw
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f'{spec_path} is not a valid prior spec: {e!r}') from e
    tree_path = os.path.join(prior_dir, _TREE_DIR)
    try:
        raw = checkpoint.read_tree(tree_path)
    except Exception as e:  # orbax raises several types for a missing or foreign dir
        raise ValueError(
            f'{tree_path} is not a readable prior checkpoint ({checkpoint.first_line(e)}); '
            're-copy or retrain the prior'
        ) from e
    shapes = abstract_variables(spec)
    try:
        variables = checkpoint.merge_params(raw, shapes, (), 'prior variables')
    except ValueError as e:
        raise ValueError(f'{tree_path} does not fit {spec_path}: {e}') from e
    return from_modules(g, d, spec, jax.device_put(variables))
