"""Tiny upstream artefacts for `:runlocal`, so that each launcher runs alone in seconds.

A stage function takes only finished inputs; under `config.runlocal` its launcher first calls

    config = runlocal.fill_in('attack', config, workdir)

which makes whatever input the config leaves unset, under the stage's workdir, from
generated data, and returns a copy of the config pointing at it:

* `attack`: a tiny target (`target/`), a tiny random prior of the attack's kind (`prior/`:
  the attack machinery, not image quality, is what runlocal exercises) and, for LOMMA, two
  tiny classifiers standing in for the distilled students (`augmented/`);
* `gan`: the tiny target that KEDMI's and PLG-MI's GANs are trained against (`target/`);
* `distill`: the tiny target the students are distilled from (`target/`);
* `evaluate` and `fisher`: a tiny target and evaluation model, and the reconstructions of a
  tiny real GMI attack on that target (`runlocal/{target,eval_model,attack}`);
* `userstudy`: for every arm left unset, a tiny GMI attack on one tiny target, the arms
  differing in the attack seed (`runlocal/{target,arms/<name>}`).

Everything is reused when it already exists, so a rerun does not retrain. Nothing here runs
without `config.runlocal`.
"""

import os

import ml_collections
from absl import logging

from tldmi_jax import attacks, classifiers, config_lib, priors, reconstructions
from tldmi_jax.attacks import runner
from tldmi_jax.train import classifier
from tldmi_jax.utils import distributed
from tldmi_jax.utils import workdir as workdir_lib

STAGES = ('attack', 'gan', 'distill', 'evaluate', 'fisher', 'userstudy')
SUBDIR = 'runlocal'  # evaluate/fisher: where their stand-ins live.
TARGET_ARCH, TARGET_SIZE = 'facenet64', 16  # evaluate/fisher's tiny target.
EVAL_ARCH, EVAL_SIZE = 'facenet', 32  # The tiny evaluation model (64 -> 112 in miniature).
TRAIN_STEPS = 30  # Steps of the evaluate/fisher stand-ins and the sweep's evaluation model.
USERSTUDY_ATTACK_STEPS = 4  # The user study's stand-in arms only need images to show.


def tiny_classifier(
    path: str,
    *,
    dataset: str = 'synthetic',
    data_kwargs: dict | None = None,
    root: str | None = None,
    data_dir: str | None = None,
    image_size: int = 32,
    arch: str = 'vgg16',
    seed: int = 0,
    steps: int | None = None,
) -> str:
    """Trains `{arch}_tiny` for a few steps in `path` (once; reused when finished).

    Returns:
      `path`, a trainer workdir that `classifiers.load` reads.
    """
    if os.path.exists(os.path.join(path, 'results.json')):
        return path
    tc = config_lib.runlocal_classifier(
        config_lib.classifier_config(
            dataset=dataset,
            arch=arch,
            num_classes=0,
            image_size=image_size,
            channels=3,
            lr=0.01,
            epochs=1,
            batch_size=8,
        )
    )
    tc.seed = seed
    if data_kwargs is not None:
        tc.data.kwargs = ml_collections.ConfigDict(dict(data_kwargs))
    tc.data.name = dataset
    tc.data.root, tc.data.data_dir = root, data_dir
    tc.data.image_size = image_size
    if steps:
        tc.total_steps = steps
        tc.eval_every_steps = tc.checkpoint_every_steps = tc.log_every_steps = steps
    logging.info('runlocal: training a tiny %s in %s', tc.model.arch, path)
    classifier.train_and_evaluate(tc, path)
    return path


def _data_args(dc: ml_collections.ConfigDict) -> dict:
    return dict(
        dataset=dc.name,
        data_kwargs=dict(dc.get('kwargs') or {}),
        root=dc.get('root'),
        data_dir=dc.get('data_dir'),
    )


def fill_in(
    stage: str, config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
    """Makes every input `config` leaves unset for `stage` (only under `config.runlocal`).

    Args:
      stage: one of `STAGES`.
      config: the stage's config.
      workdir: the stage's workdir; the artefacts go under it.

    Returns:
      `config` itself when it is not a runlocal config or nothing is missing, else a copy
      whose input fields point at the tiny artefacts.

    Raises:
      ValueError: an unknown stage, or (checked before anything is trained) an input the
        stage cannot use, such as an unknown attack.
      WorkdirError: the workdir holds a run with another config (nothing is written).
    """
    if stage not in STAGES:
        raise ValueError(f'Unknown stage {stage!r}; use one of {", ".join(STAGES)}.')
    if not config.get('runlocal', False):
        return config
    if stage == 'attack':
        attacks.resolve(config.attack)  # An unknown attack fails before anything trains.
        missing = not (config.target.checkpoint and config.prior.checkpoint)
    elif stage == 'gan':
        priors.check_trainable(config.prior.kind)  # Fails before a target is trained.
        missing = config.prior.kind != 'gmi' and not config.target.get('checkpoint')
    elif stage == 'distill':
        missing = not config.target.checkpoint
    elif stage == 'userstudy':
        missing = not all(config.arms.values())
    else:
        missing = not (
            config.target.checkpoint
            and config.attack_dir
            and ('eval_model' not in config or config.eval_model.checkpoint)
        )
    if not missing:
        return config
    workdir_lib.prepare(config, workdir)  # Refuse another run's workdir before writing.
    config = ml_collections.ConfigDict(config.to_dict())
    return {
        'attack': _attack,
        'gan': _gan,
        'distill': _distill,
        'evaluate': _evaluation,
        'fisher': _evaluation,
        'userstudy': _userstudy,
    }[stage](config, workdir)


def _attack(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A tiny target, a tiny random prior of the attack's kind, LOMMA's stand-in students."""
    dc = config.data
    if not config.target.checkpoint:
        config.target.checkpoint = tiny_classifier(
            os.path.join(workdir, 'target'),
            **_data_args(dc),
            image_size=dc.image_size,
            seed=config.seed,
        )
    model, _ = classifiers.load(config.target.checkpoint)
    size = classifiers.input_size(config.target.checkpoint, config.data.image_size)
    spec = attacks.resolve(config.attack)
    if not config.prior.checkpoint:
        kind = attacks.get(spec.name).PRIOR_KIND
        path = os.path.join(workdir, 'prior')
        # Process 0 writes it; the others of a multi-process run wait, then read it.
        if distributed.is_main() and not os.path.isdir(path):
            logging.info('runlocal: writing a tiny random %s prior to %s', kind, path)
            classes = 0 if kind == 'stylegan2' else model.num_classes  # Unconditional.
            prior = priors.make_prior(kind, num_classes=classes, image_size=size, tiny=True)
            priors.save_prior(path, prior)
        distributed.barrier(f'runlocal prior:{path}')
        config.prior.checkpoint = path
    if spec.lomma and not config.augmented.checkpoints:
        # The real students come from `launch/distill.py`; runlocal only needs models of the
        # target's classes to exercise LOMMA's averaged loss, and these train in seconds.
        config.augmented.checkpoints = ','.join(
            tiny_classifier(
                os.path.join(workdir, 'augmented', f'student_{i}_{arch}'),
                **_data_args(dc),
                image_size=size,
                arch=arch,
                seed=config.seed + 1 + i,
                steps=20,
            )
            for i, arch in enumerate(('small', 'small'))
        )
    return config


def _gan(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The tiny target KEDMI's and PLG-MI's GANs train against."""
    config.target.checkpoint = tiny_classifier(
        os.path.join(workdir, 'target'),
        **_data_args(config.data),
        image_size=config.data.image_size,
        arch=config.target.arch,
        seed=config.seed,
        steps=config.target.runlocal_steps,
    )
    return config


def _distill(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The tiny target the students are distilled from."""
    config.target.checkpoint = tiny_classifier(
        os.path.join(workdir, 'target'),
        **_data_args(config.data),
        image_size=config.data.image_size,
        seed=config.seed,
    )
    return config


def tiny_attack(
    workdir: str,
    *,
    target: str,
    data_config: ml_collections.ConfigDict,
    seed: int = 0,
    steps: int | None = None,
) -> str:
    """A tiny GMI attack (random tiny prior) on `target`, 4 identities in 2 batches (once).

    `steps`: iterations per batch (default: the runlocal attack config's).
    """
    if os.path.exists(os.path.join(workdir, reconstructions.FILENAME)):
        return workdir
    config = config_lib.attack_config('gmi', runlocal=True)
    config.seed = seed
    if steps:
        config.attack.steps = steps
    config.target.checkpoint = target
    config.data.name = data_config.name
    config.data.kwargs = ml_collections.ConfigDict(dict(data_config.get('kwargs') or {}))
    config.data.root = data_config.get('root')
    config.data.data_dir = data_config.get('data_dir')
    runner.run(fill_in('attack', config, workdir), workdir)
    return workdir


def _evaluation(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """evaluate/fisher: a tiny target and evaluation model, and a tiny attack's output."""
    base = os.path.join(workdir, SUBDIR)
    args = _data_args(config.data)
    if not config.target.checkpoint:
        config.target.checkpoint = tiny_classifier(
            os.path.join(base, 'target'),
            **args,
            image_size=TARGET_SIZE,
            arch=TARGET_ARCH,
            seed=config.seed,
            steps=TRAIN_STEPS,
        )
    if 'eval_model' in config and not config.eval_model.checkpoint:
        config.eval_model.checkpoint = tiny_classifier(
            os.path.join(base, 'eval_model'),
            **args,
            image_size=EVAL_SIZE,
            arch=EVAL_ARCH,
            seed=config.seed + 1,
            steps=TRAIN_STEPS,
        )
    if not config.attack_dir:
        config.attack_dir = tiny_attack(
            os.path.join(base, 'attack'),
            target=config.target.checkpoint,
            data_config=config.data,
            seed=config.seed,
        )
    return config


def _userstudy(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The user study's unset arms: tiny GMI attacks (seeds 0, 1, ...) on one tiny target."""
    base = os.path.join(workdir, SUBDIR)
    target = tiny_classifier(
        os.path.join(base, 'target'),
        **_data_args(config.data),
        image_size=int(dict(config.data.get('kwargs') or {}).get('image_size', 32)),
        seed=config.seed,
        steps=USERSTUDY_ATTACK_STEPS,  # Any target will do: the arms only need images.
    )
    for i, (name, path) in enumerate(sorted(config.arms.items())):
        if not path:
            config.arms[name] = tiny_attack(
                os.path.join(base, 'arms', name),
                target=target,
                data_config=config.data,
                seed=config.seed + i,
                steps=USERSTUDY_ATTACK_STEPS,
            )
    return config


def eval_model(workdir: str) -> str:
    """The sweep's tiny evaluation model (one for all cells), trained once in `workdir`."""
    return tiny_classifier(workdir, arch=EVAL_ARCH, image_size=EVAL_SIZE, seed=1, steps=TRAIN_STEPS)
