r"""The defense x attack matrix on CelebA (64 px): train, attack and evaluate every cell.

  python launch/sweep.py --config=configs/sweep_celeba.py --workdir=workdirs/sweep \
    --config.data.root=/data/celeba_mi --config.eval_model.checkpoint=workdirs/eval_facenet

Rows of the table are the defended targets below (no defense, TL-DMI at several fine-tuned
depths, TL-DMI + BiDO); columns are the attacks. Each stage reads its own config file
(`stages.*`, relative to `configs_dir`), so stage defaults live in one place.
`runlocal`: two tiny targets (none, tldmi) x GMI on generated data, about a minute on 2 cores.
Rerunning resumes: finished cells are skipped, a failing cell is reported and skipped.
"""

import ml_collections

from tldmi_jax import config_lib


def _target(train: str, label: str, overrides: dict | None = None) -> dict:
    """A row: its training config file, a label, nested overrides, or a trained checkpoint."""
    return dict(train=train, label=label, overrides=overrides or {}, checkpoint='')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the sweep config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='vgg16', runlocal=False)
    rl = ',runlocal' if arg.runlocal else ''
    config = ml_collections.ConfigDict()
    config.configs_dir = 'configs'  # Where the stage config files are (relative to the cwd).
    # --- stages: config files (':args' allowed) ---
    config.stages = ml_collections.ConfigDict()
    config.stages.gan = f'gan_celeba.py:runlocal={arg.runlocal}'  # ':prior=KIND' is appended.
    config.stages.distill = f'distill_celeba.py:runlocal={arg.runlocal}'
    config.stages.attack = f'attack_celeba.py:runlocal={arg.runlocal}'  # ':attack=' appended.
    config.stages.evaluate = f'evaluate_celeba.py:runlocal={arg.runlocal}'
    # Data paths given to every stage that reads data.
    config.data = ml_collections.ConfigDict()
    config.data.root = ml_collections.config_dict.placeholder(str)  # CelebA manual dir.
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # Prepared cache.
    # Nested overrides applied to every config of a stage, e.g. {'attack': {'steps': 2400}}.
    config.stage_overrides = ml_collections.ConfigDict(
        {'train': {}, 'gan': {}, 'distill': {}, 'attack': {}, 'evaluate': {}}
    )
    # --- rows: defended targets (train config + dotted overrides, or a trained checkpoint) ---
    a = arg.arch
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
    config.attacks = ['gmi'] if arg.runlocal else ['gmi', 'kedmi', 'lomma_kedmi', 'plgmi']
    # --- evaluation model (trainer workdir of configs/eval_celeba.py); runlocal trains one ---
    config.eval_model = ml_collections.ConfigDict()
    config.eval_model.checkpoint = ml_collections.config_dict.placeholder(str)
    config.runlocal = arg.runlocal
    return config
