r"""The whole TL-DMI story on real data (Fashion-MNIST), on 2 CPU cores: `make demo`.

  python launch/demo.py --config=configs/demo.py --workdir=workdirs/demo

Stages (each in its own sub-workdir, each resumed or skipped when the command is rerun):
  1. pre-train the demo CNN on the public classes 5-9 (`pretrain/`);
  2. train the evaluation model, a ResNet-18 of another architecture, on the private
     classes 0-4 (`eval_model/`);
  3. the defense x attack matrix (`sweep/`, `tldmi_jax.reporting.sweep`): the target with no
     defense (from scratch, all layers) and TL-DMI (from the public pre-training, only the
     last layers fine-tuned) at several fine-tuned depths; the GMI prior trained on the
     public classes; every target attacked with GMI and evaluated (natural accuracy, attack
     top-1/top-5 with std over seeds, KNN distance);
  4. Fisher information per layer group of the no-defense target (`fisher/`);
  5. `report.md` and `report.html`: the results table, the utility-vs-privacy plot, the
     Fisher plot and reconstruction grids of each target next to real private images.

Data: Debian's `dataset-fashion-mnist` package (`make demo` installs it) or
`--config.data.root=DIR` holding the four idx files. Variant `:runlocal` runs the same
pipeline in about a minute with tiny models on generated idx files (tests, notebooks).
"""

import os

import ml_collections

from tldmi_jax import config_lib

# TL-DMI depth sweep: the cut point where fine-tuning starts (stage1..stage4, head: the demo
# CNN's four conv blocks, 1-based, and its classifier; see tldmi_jax/models). Everything before
# it is frozen at its public pre-training; `stage4` is the headline TL-DMI.
TLDMI_DEPTHS = ('stage4', 'head')
HEADLINE = 'stage4'
# Seeds per private class: 5 x 20 = 100 paired (class, seed) instances per target, for 95 %
# intervals of about +-0.08 on top-1 and narrower on a paired change.
SEEDS = 20


def _classifier(arg, epochs: int) -> ml_collections.ConfigDict:
    """The demo CNN on Fashion-MNIST at 32 px, grayscale (target and pre-training)."""
    config = _load('fashion_mnist.py')  # The single-target config: recipe and data.
    config.epochs = epochs
    config.data.flip = False  # No augmentation: the demo keeps training minimal.
    config.model.kwargs = ml_collections.ConfigDict(dict(widths=(16, 32, 64, 128)))
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    if arg.runlocal:
        _tiny_classifier(config)
    return config


def _tiny_classifier(config: ml_collections.ConfigDict) -> None:
    config.data.max_train = 400
    config.data.max_test = 100
    config.batch_size = 16
    config.total_steps = 20
    config.checkpoint_every_steps = 10
    config.log_every_steps = 5
    config.model.kwargs = ml_collections.ConfigDict(dict(widths=(8, 8, 16, 16)))


def _load(name: str) -> ml_collections.ConfigDict:
    """Another config file of this directory (config files import only config_lib)."""
    return config_lib.load_config_file(name, os.path.dirname(os.path.abspath(__file__)))


def _fashion(config: ml_collections.ConfigDict, split: str | None = None) -> None:
    """Points a stage config's data block at Fashion-MNIST (32 px, grayscale)."""
    config.data.name = 'fashion_mnist_mi'
    config.data.kwargs = ml_collections.ConfigDict()
    if 'image_size' in config.data:
        config.data.image_size = 32
    if split:
        config.data.split = split


def _gan(prior: str, arg) -> ml_collections.ConfigDict:
    """A prior on the public classes (GMI) or on public data against a target (KEDMI)."""
    config = _load(f'gan_celeba.py:prior={prior}')
    _fashion(config)
    config.prior.channels = 1
    config.prior.g_dim = 32  # The original's 64 is too slow on 2 CPU cores.
    config.prior.d_dim = 16  # The critic dominates the cost (double backprop of the GP).
    if prior == 'kedmi':
        config.prior.num_classes = 5
        config.prior.mbd_features = 32
        config.prior.mbd_kernel_dims = 16
    config.batch_size = 64
    config.n_critic = 5
    config.epochs = 0
    # Critic steps: 800 generator steps, about 9 epochs of the public classes. 300
    # generator steps (the demo before) gave blobs; 800-1000 give recognisable garments.
    config.total_steps = 4000
    config.log_every_steps = 100
    config.sample_every_steps = 1000
    config.checkpoint_every_steps = 1000
    if arg.runlocal:
        config.prior.g_dim = config.prior.d_dim = 8
        if prior == 'kedmi':
            config.prior.mbd_features, config.prior.mbd_kernel_dims = 8, 4
        config.batch_size = 16
        config.total_steps = 20
        config.log_every_steps = 5
        config.sample_every_steps = 10
        config.checkpoint_every_steps = 10
    return config


def _attack(attack: str, arg) -> ml_collections.ConfigDict:
    """GMI/KEDMI on the 5 private classes, `SEEDS` seeds each (GMI)."""
    config = config_lib.attack_config(attack)
    _fashion(config)
    # Latent updates (the original: 3000 on CelebA). Measured on the none target with 20
    # seeds: top-1 0.66 after 150, 0.73 after 300, 0.75 after 600 updates.
    config.attack.steps = 300
    if attack == 'gmi':
        config.attack.num_seeds = SEEDS
    config.identities.count = 5
    config.identities.batch_size = 5
    config.checkpoint_every_steps = 150
    if arg.runlocal:
        config.attack.steps = 12
        config.attack.num_seeds = 2 if attack == 'gmi' else None
        config.attack.samples = 2 if attack == 'kedmi' else None
        config.checkpoint_every_steps = 6
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the demo config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False, kedmi=False)
    config = ml_collections.ConfigDict()
    config.seed = 0  # Copied into every stage: all randomness derives from it.
    config.runlocal = arg.runlocal  # Tiny models; generated idx files when no data.root.
    config.data = ml_collections.ConfigDict()
    config.data.root = ml_collections.config_dict.placeholder(str)  # idx dir (None: Debian's).
    config.stages = ml_collections.ConfigDict()
    st = config.stages

    # --- 1. public pre-training: classes 5-9 as a 5-class task ---
    st.pretrain = _classifier(arg, epochs=2)
    st.pretrain.data.train_split = 'public_train'
    st.pretrain.data.test_split = 'public_test'

    # --- targets: no defense (scratch) and TL-DMI from every depth of `tldmi_depths` ---
    st.target = _classifier(arg, epochs=2)  # The recipe of every target.
    config.tldmi_depths = list(TLDMI_DEPTHS)  # Cut point (fine_tune_from) per TL-DMI row.
    config.headline_depth = HEADLINE  # The TL-DMI row the summary sentence is about.

    # --- 2. the evaluation model: another architecture, trained on the private classes ---
    st.eval_model = _classifier(arg, epochs=2)
    st.eval_model.model.arch = 'resnet18'
    st.eval_model.model.kwargs = ml_collections.ConfigDict(
        dict(widths=(16, 32, 64, 128), stem_width=16)
    )
    if arg.runlocal:
        st.eval_model.model.kwargs = ml_collections.ConfigDict(
            dict(widths=(8, 8, 16, 16), stem_width=8, stage_blocks=(1, 1, 1, 1))
        )

    # --- 3. priors, attacks and their evaluation ---
    config.attacks = ['gmi', 'kedmi'] if arg.kedmi else ['gmi']
    st.gan = ml_collections.ConfigDict({a: _gan(a, arg) for a in config.attacks})
    st.attack = ml_collections.ConfigDict({a: _attack(a, arg) for a in config.attacks})
    st.evaluate = _load('evaluate_celeba.py')
    _fashion(st.evaluate)
    st.evaluate.fid.enabled = False  # No Inception weights offline; KNN and accuracy only.
    st.evaluate.batch_size = 128
    st.evaluate.report.max_pairs = 10

    # --- 4. Fisher information of the no-defense target ---
    st.fisher = _load('fisher_celeba.py')
    _fashion(st.fisher, split='private_train')
    st.fisher.fisher.max_examples = 32 if arg.runlocal else 1000

    # --- 5. report ---
    config.report = ml_collections.ConfigDict()
    config.report.real_per_class = 2 if arg.runlocal else 5  # Real images beside each grid.
    config.overwrite = False  # True: replace a previous run with another config in workdir.
    return config
