"""Tiny upstream artefacts for `attack.py ...:runlocal` when none are given.

A tiny target trained for a few steps on synthetic data, a tiny prior of the attack's kind
(randomly initialised: the attack machinery, not the image quality, is what runlocal
exercises) and, for LOMMA, two tiny classifiers standing in for the augmented models.
"""

import os

import ml_collections
from absl import logging

from tldmi_jax import priors
from tldmi_jax.train import classifier


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Returns a copy of `config` whose missing inputs point at tiny artefacts in workdir."""
    config = ml_collections.ConfigDict(config.to_dict())
    dc = config.data
    if not config.target.checkpoint:
        config.target.checkpoint = classifier.runlocal_target(
            os.path.join(workdir, 'target'),
            dataset=dc.name,
            data_kwargs=dict(dc.kwargs or {}),
            image_size=dc.image_size,
            seed=config.seed,
        )
    model, _ = classifier.load_classifier(config.target.checkpoint)
    size = runner_input_size(config)
    if not config.prior.checkpoint:
        kind = {'plgmi': 'plgmi'}.get(config.attack.name, config.attack.name.split('_')[-1])
        path = os.path.join(workdir, 'prior')
        if not os.path.isdir(path):
            logging.info('runlocal: writing a tiny random %s prior to %s', kind, path)
            prior = priors.make_prior(
                kind, num_classes=model.num_classes, image_size=size, tiny=True
            )
            priors.save_prior(path, prior)
        config.prior.checkpoint = path
    if config.attack.name.startswith('lomma_') and not config.augmented.checkpoints:
        config.augmented.checkpoints = ','.join(_augmented(config, workdir))
    return config


def runner_input_size(config: ml_collections.ConfigDict) -> int:
    """The target's input size (from its config.json), the size of the tiny prior."""
    from tldmi_jax.attacks import runner

    return runner.input_size(config.target.checkpoint, config)


def _augmented(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Two tiny classifiers on the target's data, standing in for distilled students.

    The real students come from `launch/distill.py`; runlocal only needs models of the
    target's classes to exercise LOMMA's averaged loss, and these train in seconds.
    """
    dc = config.data
    return [
        classifier.runlocal_target(
            os.path.join(workdir, 'augmented', f'student_{i}_{arch}'),
            dataset=dc.name,
            data_kwargs=dict(dc.kwargs or {}),
            image_size=runner_input_size(config),
            arch=arch,
            seed=config.seed + 1 + i,
            steps=20,
        )
        for i, arch in enumerate(('small', 'small'))
    ]
