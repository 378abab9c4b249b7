"""Model-inversion attacks on one latent-search loop (`latent_search.py`).

Each attack is one module exporting the same names:

* `NAME`: its name in configs (`config.attack.name`);
* `PRIOR_KIND`: the `tldmi_jax.priors` kind it searches (`gmi`, `kedmi`, `plgmi`,
  `stylegan2`);
* `LOMMA`: whether LOMMA's identity terms (`lomma.py`) apply on top of it;
* `make_problem(ctx, cfg)`: the `latent_search.Problem` (latent, losses, optimizer, clamp);
* optionally `EXECUTION_ONLY`: hyperparameters that set memory use and batching but not the
  result (PPA's chunk sizes), left out of the protocol hash, as `seed_chunk` is for every
  attack (`runner.EXECUTION_ONLY`).

`ATTACKS` is built from those modules. LOMMA is an option of its base attack
(`--config.attack.name=gmi --config.attack.lomma=ours`); the old names `lomma_gmi` and
`lomma_kedmi` still work and log a deprecation line. Every default hyperparameter lives in
`tldmi_jax.config_lib.ATTACK_DEFAULTS` (and `LOMMA_DEFAULTS`); `hyperparameters` fills the
fields a config leaves unset (None) from there.
"""

import dataclasses
from types import ModuleType

import ml_collections
from absl import logging

from tldmi_jax import config_lib
from tldmi_jax.attacks import gmi, kedmi, lomma, plgmi, ppa

_MODULES = (gmi, kedmi, plgmi, ppa)
ATTACKS: dict[str, ModuleType] = {m.NAME: m for m in _MODULES}
_OLD_PREFIX = 'lomma_'


@dataclasses.dataclass(frozen=True)
class Spec:
    """A resolved attack: the base attack and the LOMMA variant ('' for none)."""

    name: str
    lomma: str = ''

    @property
    def label(self) -> str:
        """Its name in outputs and tables: `gmi`, or `gmi+lomma` with LOMMA (any variant)."""
        return f'{self.name}+lomma' if self.lomma else self.name

    @property
    def module(self) -> ModuleType:
        return ATTACKS[self.name]

    @property
    def needs_students(self) -> bool:
        """Whether the LOMMA variant averages over augmented (distilled) models."""
        return bool(self.lomma) and lomma.VARIANTS[self.lomma]['use_augmented']


def names() -> list[str]:
    """Every accepted attack name: the base attacks, then `<base>+lomma` for LOMMA."""
    return [*ATTACKS, *(f'{n}+lomma' for n, m in ATTACKS.items() if m.LOMMA)]


def get(name: str) -> ModuleType:
    """The attack module called `name`.

    Raises:
      ValueError: for an unknown name (listing the known ones).
    """
    if name not in ATTACKS:
        raise ValueError(f'Unknown attack {name!r}; use one of {", ".join(names())}.')
    return ATTACKS[name]


def resolve(attack: ml_collections.ConfigDict) -> Spec:
    """The `Spec` of `config.attack` (`name`, `lomma`, the deprecated `variant`).

    `name` may be a base attack (`gmi`), `<base>+lomma`, or the old `lomma_<base>`; the
    old `attack.variant` field is an alias of `attack.lomma`.

    Raises:
      ValueError: an unknown attack or LOMMA variant, or LOMMA on an attack it does not
        apply to.
    """
    name = str(attack.get('name') or '')
    variant = str(attack.get('lomma') or '')
    old_variant = attack.get('variant')
    if old_variant:
        logging.warning('attack.variant is deprecated: use --config.attack.lomma=%s', old_variant)
        variant = variant or str(old_variant)
    if name.startswith(_OLD_PREFIX):
        name = name[len(_OLD_PREFIX) :]
        variant = variant or config_lib.LOMMA_DEFAULTS['variant']
        logging.warning(
            'attack.name=%s%s is deprecated: use --config.attack.name=%s --config.attack.lomma=%s',
            _OLD_PREFIX,
            name,
            name,
            variant,
        )
    elif name.endswith('+lomma'):
        name, variant = name[: -len('+lomma')], variant or config_lib.LOMMA_DEFAULTS['variant']
    module = get(name)
    if variant:
        if variant not in lomma.VARIANTS:
            raise ValueError(
                f'Unknown LOMMA variant {variant!r}; use one of {sorted(lomma.VARIANTS)}.'
            )
        if not module.LOMMA:
            raise ValueError(f'LOMMA applies to gmi and kedmi, not to {name}.')
    return Spec(name, variant)


def hyperparameters(attack: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The attack's hyperparameters: the defaults, then every field the config sets.

    The defaults are `config_lib.ATTACK_DEFAULTS[name]` (plus `LOMMA_DEFAULTS` with LOMMA);
    a config field that is not None overrides them. With LOMMA the identity-loss fields
    are then set from the variant (`lomma.configure`), so the result drives the base
    module's `make_problem` directly.
    """
    spec = resolve(attack)
    cfg = dict(config_lib.ATTACK_DEFAULTS[spec.name])
    if spec.lomma:
        cfg.update(config_lib.LOMMA_DEFAULTS)
    for key, value in attack.items():
        if value is not None and not (key == 'lomma' and not value):
            cfg[key] = value
    cfg = ml_collections.ConfigDict(cfg)
    if not spec.lomma:
        return cfg
    cfg.variant = spec.lomma
    return lomma.configure(cfg)


def needs(spec: Spec) -> tuple[str, ...]:
    """Upstream artefacts of an attack: its prior kind, then 'students' for LOMMA's."""
    return (spec.module.PRIOR_KIND, *(('students',) if spec.needs_students else ()))
