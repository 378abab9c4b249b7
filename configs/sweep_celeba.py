r"""The defense x attack matrix on CelebA (64 px): train, attack and evaluate every cell.

  python launch/sweep.py --config=configs/sweep_celeba.py --workdir=workdirs/sweep \
    --config.data.root=/data/celeba_mi --config.eval_model.checkpoint=workdirs/eval_facenet \
    --config.stage_overrides.train.init.checkpoint=converted/vgg16_bn_in1k

Variants (`:key=value,...`): arch=vgg16|ir152|facenet64 (the targets' architecture),
table=depth|paper, runlocal.
* `table=depth` (default): no defense and TL-DMI at the official fine-tuned depth, plus, for
  VGG16, TL-DMI at k = 33, 36, 39; attacked with GMI, KEDMI, LOMMA+KEDMI and PLG-MI.
* `table=paper`: the paper's comparison, no defense, MID, BiDO-HSIC and TL-DMI (official k),
  attacked with GMI, KEDMI, LOMMA+GMI, LOMMA+KEDMI and PLG-MI.
* `runlocal`: tiny targets on generated data (with `table=depth`: none and TL-DMI x GMI,
  about a minute on 2 cores).
Each stage reads its own config file (`stages.*`, in this file's directory), so stage
defaults live in one place; `stage_overrides` set fields of every config of a stage (the
pretrained backbone of every target, the FID Inception weights). Rerunning resumes:
finished cells are skipped, a failing cell is reported and skipped.

On a cluster (a workdir on a shared filesystem): `--config.cells=plan` writes plan.json
(every piece as a command, with its dependencies) and plan_slurm.sh (Slurm job arrays, one
per dependency level); `--config.only=PIECE` runs one piece (docs/scaling.md).
"""

import os

import ml_collections

from tldmi_jax import config_lib

TABLES = ('depth', 'paper')
PAPER_ATTACKS = ('gmi', 'kedmi', 'gmi+lomma', 'kedmi+lomma', 'plgmi')
# The paper's baseline defenses. MID: mi-defense's beta (its CelebA sweep is 0.003, 0.01,
# 0.02; which one the paper used is unverified). BiDO-HSIC: Defend_MI's released CelebA
# weights (lambda_x, lambda_y) = (0.05, 0.5).
MID_BETA = 0.003
BIDO = {'bido_measure': 'hsic', 'bido_lambda_x': 0.05, 'bido_lambda_y': 0.5}
_VIB = 'vib/.*'  # MID's bottleneck layer: in no pretrained checkpoint, kept fresh.


def _target(train: str, label: str, overrides: dict | None = None) -> dict:
    """A row: its training config file, a label, nested overrides, or a trained checkpoint."""
    return dict(train=train, label=label, overrides=overrides or {}, checkpoint='')


def _mid_dont_load(train: str) -> tuple[str, ...]:
    """`init.dont_load` of the MID row: the train config's (the new head) plus `vib`."""
    here = os.path.dirname(os.path.abspath(__file__))
    dont_load = tuple(config_lib.load_config_file(train, here).init.dont_load)
    return dont_load if _VIB in dont_load else (*dont_load, _VIB)


def _paper_targets(a: str, rl: str) -> dict:
    """No defense, MID, BiDO-HSIC and TL-DMI (the architecture's official k) for arch `a`."""
    mid = f'celeba.py:arch={a},defense=mid{rl}'
    return {
        'none': _target(f'celeba.py:arch={a}{rl}', 'no defense'),
        'mid': _target(
            mid,
            f'MID (beta={MID_BETA})',
            {'defense': {'mid_beta': MID_BETA}, 'init': {'dont_load': _mid_dont_load(mid)}},
        ),
        'bido': _target(
            f'celeba.py:arch={a},defense=bido{rl}', 'BiDO-HSIC (0.05, 0.5)', {'defense': BIDO}
        ),
        'tldmi': _target(f'celeba.py:arch={a},defense=tldmi{rl}', 'TL-DMI (official k)'),
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the sweep config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='vgg16', table='depth', runlocal=False)
    if arg.table not in TABLES:
        raise ValueError(f'table must be one of {", ".join(TABLES)}, got {arg.table!r}.')
    rl = ',runlocal' if arg.runlocal else ''
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.configs_dir = ''  # Stage config files: relative to this file's directory ('': it).
    config.overwrite = False  # True: replace a sweep with another config in --workdir.
    config.cells = ''  # 'plan': write plan.json + plan_slurm.sh (every piece as a command).
    config.only = ''  # One piece of the plan (e.g. 'target:none', 'cell:none__gmi', 'results').
    # True: every process of a multi-process job runs the same piece(s) together (JAX's
    # multi-controller runtime; docs/scaling.md); process 0 writes.
    config.distributed = False
    # --- stages: config files (':args' allowed) ---
    config.stages = ml_collections.ConfigDict()
    config.stages.gan = f'gan_celeba.py:runlocal={arg.runlocal}'  # ':prior=KIND' is appended.
    config.stages.distill = f'distill_celeba.py:runlocal={arg.runlocal}'
    config.stages.attack = f'attack_celeba.py:runlocal={arg.runlocal}'  # ':attack=' appended.
    config.stages.evaluate = f'evaluate_celeba.py:runlocal={arg.runlocal}'
    # Data paths given to every stage that reads data.
    config.data = ml_collections.ConfigDict()
    config.data.root = placeholder(str)  # CelebA manual dir.
    config.data.data_dir = placeholder(str)  # Prepared cache.
    # Nested overrides applied to every config of a stage, e.g. {'attack': {'steps': 2400}}.
    # An unset placeholder sets None, which is also the stage configs' default there.
    config.stage_overrides = ml_collections.ConfigDict(
        {
            # Pretrained backbone of every target (converted vgg16_bn / evolve_ir152 /
            # evolve_ir50, matching `arch`); unset: targets train from random init.
            'train': {'init': {'checkpoint': placeholder(str)}},
            'gan': {},
            'distill': {},
            'attack': {},
            # Converted FID Inception; unset: FID, KID and PRDC are skipped.
            'evaluate': {'fid': {'inception_checkpoint': placeholder(str)}},
        }
    )
    # --- rows: defended targets (train config + dotted overrides, or a trained checkpoint) ---
    a = arg.arch
    if arg.table == 'paper':
        targets = _paper_targets(a, rl)
    else:
        targets = {
            'none': _target(f'celeba.py:arch={a}{rl}', 'no defense'),
            'tldmi': _target(f'celeba.py:arch={a},defense=tldmi{rl}', 'TL-DMI (official k)'),
        }
        if not arg.runlocal and a == 'vgg16':
            # TL-DMI's fine-tuned depth sweep (VGG16 freeze_layers k; 26 is the released value).
            for k in (33, 36, 39):
                targets[f'tldmi_k{k}'] = _target(
                    f'celeba.py:arch={a},defense=tldmi',
                    f'TL-DMI k={k}',
                    {'defense': {'freeze_layers': k}},
                )
    config.targets = ml_collections.ConfigDict(targets)
    # --- columns: attacks ---
    if arg.table == 'paper':
        config.attacks = list(PAPER_ATTACKS)
    else:
        config.attacks = ['gmi'] if arg.runlocal else ['gmi', 'kedmi', 'kedmi+lomma', 'plgmi']
    # --- evaluation model (trainer workdir of configs/eval_celeba.py); runlocal trains one ---
    config.eval_model = ml_collections.ConfigDict()
    config.eval_model.checkpoint = placeholder(str)
    config.runlocal = arg.runlocal
    return config
