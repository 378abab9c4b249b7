"""PPA's 224 px training recipe: MultiStepLR, the on-device augmentation, the two configs."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import celeba, facescrub, stanford_dogs
from tldmi_jax import defenses, models
from tldmi_jax.defenses import transfer
from tldmi_jax.train import classifier, optim


def _optim(**fields):
    return ml_collections.ConfigDict({'name': 'adam', 'lr': 1e-3, 'weight_decay': 0.0, **fields})


def test_multistep_lr_around_milestones():
    lr = optim.learning_rate(_optim(milestones=(75, 90), gamma=0.1), steps_per_epoch=3)
    got = {s: optim.lr_at(lr, s) for s in (0, 224, 225, 226, 269, 270, 299)}
    want = {0: 1e-3, 224: 1e-3, 225: 1e-4, 226: 1e-4, 269: 1e-4, 270: 1e-5, 299: 1e-5}
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=1e-6), step
    # No milestones: the float itself (the optimizer state of a constant lr is unchanged).
    assert optim.learning_rate(_optim(milestones=()), 3) == 1e-3
    # Adam's first step moves each weight by lr; after the milestone by lr * gamma.
    tx = optim.make_base_optimizer(_optim(lr=optim.learning_rate(_optim(milestones=(1,)), 1)))

    @jax.jit  # One program for both steps (test time).
    def two_steps(params, grads):
        state = tx.init(params)
        steps = []
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
            steps.append(updates)
        return steps

    steps = [np.asarray(u) for u in two_steps(np.zeros(2, np.float32), np.array([1.0, -1.0]))]
    np.testing.assert_allclose(steps, [[-1e-3, 1e-3], [-1e-4, 1e-4]], rtol=1e-5)
    for bad in ((90, 75), (0,), (2.5,)):
        with pytest.raises(ValueError, match='strictly increasing epochs >= 1'):
            optim.learning_rate(_optim(milestones=bad), 3)
    with pytest.raises(ValueError, match='gamma must be > 0'):
        optim.learning_rate(_optim(milestones=(1,), gamma=0.0), 3)


def test_train_step_with_crop_and_jitter():
    model = models.get_model('small_tiny', 4)
    x = jnp.zeros((1, 16, 16, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    plan = transfer.resolve(
        model,
        shapes['params'],
        shapes['batch_stats'],
        ml_collections.ConfigDict(dict(name='none')),
    )
    tx = transfer.make_optimizer(optax.adam(1e-3), plan.labels)

    @jax.jit  # One program for the initial state (test time).
    def initial_state(key, x):
        variables = model.init(key, x)
        params, stats = variables['params'], variables['batch_stats']
        return classifier.TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            batch_stats=stats,
            opt_state=tx.init(params),
            best_val=jnp.asarray(-1.0),
            best_step=jnp.asarray(-1, jnp.int32),
        )

    state = initial_state(jax.random.key(0), x)
    batch = {
        'image': np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32),
        'label': np.array([0, 1, 2, 3], np.int32),
    }
    config = stanford_dogs.get_config('arch=resnet18,runlocal')
    options = classifier.augmentation(config.data)
    assert options == {
        'crop_scale': (0.85, 1.0),
        'crop_ratio': (1.0, 1.0),
        'color_jitter': (0.2, 0.2, 0.1, 0.1),
    }

    def loss(**kwargs):
        step = classifier.make_train_step(model, tx, plan, seed=0, flip=True, **kwargs)
        return jax.jit(step)(state, batch)[1]['train/loss']

    plain, augmented = loss(), loss(**options)
    assert np.isfinite(augmented) and augmented != plain

    off = classifier.augmentation(celeba.get_config('arch=vgg16').data)  # The defaults.
    assert off == {'crop_scale': None, 'crop_ratio': (1.0, 1.0), 'color_jitter': None}
    bad = ml_collections.ConfigDict(config.data.to_dict())
    bad.color_jitter = (0.2, 0.2, 0.1, 0.7)
    with pytest.raises(ValueError, match=r'color_jitter=.*hue must be in \[0, 0.5\]'):
        classifier.augmentation(bad)
    bad.color_jitter, bad.random_resized_crop.scale = (), (1.0, 0.5)
    with pytest.raises(ValueError, match=r'random_resized_crop.scale=\(1.0, 0.5\)'):
        classifier.augmentation(bad)


ARCHS = ('resnet18', 'resnet101', 'resnet152', 'densenet121', 'densenet169', 'inception_v3')
DEFENSES = ('none', 'tldmi', 'negls', 'bido', 'tldmi+negls', 'tldmi+bido')


@pytest.mark.parametrize('module', [facescrub, stanford_dogs], ids=['facescrub', 'dogs'])
def test_config_variants_build(module):
    for arch, defense, runlocal in itertools.product(ARCHS, DEFENSES, (False, True)):
        arg = f'arch={arch},defense={defense}' + (',runlocal' if runlocal else '')
        config = module.get_config(arg)
        assert config.model.arch in models.ARCHS, arg
        assert config.defense.name == defense and config.data.root is None
        defenses.parse(defense)
        tldmi = 'tldmi' in defense.split('+') and arch != 'inception_v3'
        assert config.defense.freeze_layers == ((6 if 'resnet' in arch else 9) if tldmi else -1)
        if runlocal:
            assert config.data.name == 'synthetic' and config.data.train_split == 'private_train'
            continue
        evaluation = arch == 'inception_v3'
        assert config.data.image_size == (299 if evaluation else 224)
        assert config.optim.milestones == ((80,) if evaluation else (75, 90))
        assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ('adam', 1e-3, 0)
        assert (config.epochs, config.batch_size, config.data.val_fraction) == (100, 128, 0.0)
        assert config.data.color_jitter == (0.2, 0.2, 0.1, 0.1)
        if module is stanford_dogs:
            assert config.data.kwargs.cropped == evaluation  # PPA's evaluation model: crops.
    with pytest.raises(ValueError, match='arch must be one of'):
        module.get_config('arch=vgg16')


def test_tldmi_fine_tunes_layer4_and_fc():
    config = facescrub.get_config('arch=resnet152,defense=tldmi')
    model = models.get_model(config.model.arch, config.model.num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    plan = transfer.resolve(model, shapes['params'], shapes['batch_stats'], config.defense)
    assert [r.group for r in plan.table if r.trainable] == ['layer4', 'head']
    # layer4 (14.96 M) + a 530-class fc (1.09 M): DaredEVAL's theta_C of about 16.0 M.
    assert plan.trainable_params == pytest.approx(16.0e6, rel=0.01)
