"""Tiny upstream artefacts for `runlocal`: target, evaluation model and a real tiny attack.

`launch/evaluate.py` and `launch/fisher.py` with `:runlocal` run alone on a CPU in seconds:
whatever the config leaves unset (`target.checkpoint`, `eval_model.checkpoint`,
`attack_dir`) is made here, under `WORKDIR/runlocal/`, from generated data:

* a tiny target (`facenet64_tiny`, 16 px) and a tiny evaluation model (`facenet_tiny`,
  32 px, so reconstructions are upsampled as 64 -> 112 in the real protocol), each trained
  for a few steps with `classifier.runlocal_target` on the synthetic private split;
* reconstructions from a tiny GMI attack on that target (`attacks.runner.run` with the
  runlocal attack config, which makes its own tiny random prior).

Everything is reused when it already exists, so a rerun does not retrain.
"""

import os

import ml_collections

from tldmi_jax import config_lib
from tldmi_jax.attacks import outputs, runner
from tldmi_jax.train import classifier

SUBDIR = 'runlocal'
TARGET_ARCH, TARGET_SIZE = 'facenet64', 16
EVAL_ARCH, EVAL_SIZE = 'facenet', 32
TRAIN_STEPS = 30


def tiny_classifier(
    workdir: str, *, arch: str, data_config: ml_collections.ConfigDict, image_size: int, seed=0
) -> str:
    """Trains `{arch}_tiny` on the (synthetic) data of `data_config` in `workdir` (once)."""
    return classifier.runlocal_target(
        workdir,
        dataset=data_config.name,
        data_kwargs=dict(data_config.get('kwargs') or {}),
        root=data_config.get('root'),
        data_dir=data_config.get('data_dir'),
        image_size=image_size,
        arch=arch,
        seed=seed,
        steps=TRAIN_STEPS,
    )


def tiny_attack(workdir: str, *, target: str, data_config: ml_collections.ConfigDict, seed=0):
    """A tiny GMI attack (random tiny prior) on `target`, 4 identities in 2 batches (once)."""
    if os.path.exists(os.path.join(workdir, outputs.FILENAME)):
        return workdir
    config = config_lib.attack_config('gmi', runlocal=True)
    config.seed = seed
    config.target.checkpoint = target
    config.data.name = data_config.name
    config.data.kwargs = ml_collections.ConfigDict(dict(data_config.get('kwargs') or {}))
    config.data.root = data_config.get('root')
    config.data.data_dir = data_config.get('data_dir')
    runner.run(config, workdir)
    return workdir


def fill_in(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Makes every artefact the config leaves unset and returns a copy pointing to them.

    Sets `target.checkpoint`, `attack_dir` and, where the config has one,
    `eval_model.checkpoint`; fields that are already set are kept.
    """
    config = config.copy_and_resolve_references()
    base = os.path.join(workdir, SUBDIR)
    if not config.target.checkpoint:
        config.target.checkpoint = tiny_classifier(
            os.path.join(base, 'target'),
            arch=TARGET_ARCH,
            data_config=config.data,
            image_size=TARGET_SIZE,
            seed=config.seed,
        )
    if 'eval_model' in config and not config.eval_model.checkpoint:
        config.eval_model.checkpoint = tiny_classifier(
            os.path.join(base, 'eval_model'),
            arch=EVAL_ARCH,
            data_config=config.data,
            image_size=EVAL_SIZE,
            seed=config.seed + 1,
        )
    if not config.attack_dir:
        config.attack_dir = tiny_attack(
            os.path.join(base, 'attack'),
            target=config.target.checkpoint,
            data_config=config.data,
            seed=config.seed,
        )
    return config
