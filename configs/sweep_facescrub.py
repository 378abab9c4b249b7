r"""The paper's high-resolution table: FaceScrub (224 px) targets x PPA with the FFHQ StyleGAN2.

  python launch/convert.py --kind=stylegan2_ada --src=/path/to/ffhq.pkl --dst=converted/ffhq
  python launch/sweep.py --config=configs/sweep_facescrub.py --workdir=workdirs/sweep_facescrub \
    --config.data.root=/data/facescrub --config.data.data_dir=/data/tfds \
    --config.priors.stylegan2=converted/ffhq \
    --config.eval_model.checkpoint=workdirs/facescrub/inception_v3 \
    --config.stage_overrides.train.init.checkpoint=converted/resnet152_in1k

Rows (ResNet-152 targets, `configs/facescrub.py`): no defense, TL-DMI (layer4 + fc
fine-tuned), PPA's negative label smoothing and BiDO-HSIC; the column: PPA
(`configs/attack_ppa.py`), evaluated with PPA's protocol (`configs/evaluate_ppa.py`:
Inception-v3 attack accuracy, delta_eval, delta_face with
`--config.stage_overrides.evaluate.face_model.checkpoint=...`, FID). The same results table
and utility-vs-privacy plot as the CelebA sweep. Variants: `arch=resnet18|resnet101|
resnet152|densenet121|densenet169`, `dataset=facescrub|dogs` (Stanford Dogs with the AFHQ-Dog
StyleGAN2: rows none, TL-DMI and NegLS), `runlocal` (tiny targets, a tiny random StyleGAN2
and a tiny evaluation model on generated data). `--config.cells=plan` splits it into pieces
for a cluster, as the CelebA sweep (docs/scaling.md).
"""

import ml_collections

from tldmi_jax import config_lib

BIDO = {'bido_measure': 'hsic', 'bido_lambda_x': 0.05, 'bido_lambda_y': 0.5}
_TRAIN = {'facescrub': 'facescrub.py', 'dogs': 'stanford_dogs.py'}


def _target(train: str, label: str, overrides: dict | None = None) -> dict:
    return dict(train=train, label=label, overrides=overrides or {}, checkpoint='')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the sweep config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, arch='resnet152', dataset='facescrub', runlocal=False)
    if arg.dataset not in _TRAIN:
        raise ValueError(f'dataset must be one of {sorted(_TRAIN)}, got {arg.dataset!r}.')
    rl = ',runlocal' if arg.runlocal else ''
    train = f'{_TRAIN[arg.dataset]}:arch={arg.arch}'
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.configs_dir = ''  # Stage config files: relative to this file's directory.
    config.overwrite = False
    config.cells = ''  # 'plan': plan.json + plan_slurm.sh.
    config.only = ''  # One piece of the plan.
    config.distributed = False
    config.stages = ml_collections.ConfigDict()
    config.stages.gan = f'gan_celeba.py:runlocal={arg.runlocal}'  # Unused: PPA trains no GAN.
    config.stages.distill = f'distill_celeba.py:runlocal={arg.runlocal}'  # Unused.
    config.stages.attack = f'attack_ppa.py:dataset={arg.dataset},runlocal={arg.runlocal}'
    config.stages.evaluate = f'evaluate_ppa.py:dataset={arg.dataset},runlocal={arg.runlocal}'
    config.data = ml_collections.ConfigDict()
    config.data.root = placeholder(str)  # The private data's manual dir.
    config.data.data_dir = placeholder(str)
    # Converted priors (PPA's StyleGAN2 is converted, never trained): FFHQ for faces,
    # AFHQ-Dog for dogs. Unset under runlocal: a tiny random one.
    config.priors = ml_collections.ConfigDict({'stylegan2': placeholder(str)})
    config.stage_overrides = ml_collections.ConfigDict(
        {
            'train': {'init': {'checkpoint': placeholder(str)}},  # Converted ImageNet weights.
            'gan': {},
            'distill': {},
            'attack': {},
            'evaluate': {'fid': {'inception_checkpoint': placeholder(str)}},
        }
    )
    targets = {
        'none': _target(f'{train},defense=none{rl}', 'no defense'),
        'tldmi': _target(f'{train},defense=tldmi{rl}', 'TL-DMI (layer4 + fc)'),
        'negls': _target(f'{train},defense=negls{rl}', 'NegLS (PPA)'),
    }
    if arg.dataset == 'facescrub':
        targets['bido'] = _target(
            f'{train},defense=bido{rl}', 'BiDO-HSIC (0.05, 0.5)', {'defense': BIDO}
        )
    if arg.runlocal:
        targets = {k: targets[k] for k in ('none', 'tldmi')}
    config.targets = ml_collections.ConfigDict(targets)
    config.attacks = ['ppa']
    config.eval_model = ml_collections.ConfigDict()
    config.eval_model.checkpoint = placeholder(str)  # configs/facescrub.py:arch=inception_v3.
    config.runlocal = arg.runlocal
    return config
