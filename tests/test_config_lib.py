"""Config argument parsing, protocol hashes, and that every config variant builds."""

import itertools

import pytest

from configs import celeba, fashion_mnist
from tldmi_jax import config_lib, models


def test_parse_arg_types_and_bare_keys():
    arg = config_lib.parse_arg(
        'arch=ir152,runlocal,steps=3,lr=0.5', arch='vgg16', runlocal=False, steps=1, lr=0.1
    )
    assert (arg.arch, arg.runlocal, arg.steps, arg.lr) == ('ir152', True, 3, 0.5)
    assert config_lib.parse_arg(None, arch='vgg16').arch == 'vgg16'
    assert config_lib.parse_arg('runlocal=false', runlocal=True).runlocal is False


@pytest.mark.parametrize(
    'text, message',
    [
        ('depth=3', 'Unknown config argument'),
        ('arch', 'needs a value'),
        ('runlocal=maybe', 'boolean'),
    ],
)
def test_parse_arg_errors(text, message):
    with pytest.raises(ValueError, match=message):
        config_lib.parse_arg(text, arch='vgg16', runlocal=False)


def test_protocol_hash_is_stable_and_order_free():
    a = config_lib.protocol_hash({'ids': [0, 1], 'seed': 0})
    assert a == config_lib.protocol_hash({'seed': 0, 'ids': [0, 1]})
    assert a != config_lib.protocol_hash({'seed': 1, 'ids': [0, 1]})
    assert len(a) == 16


@pytest.mark.parametrize(
    'arch, defense, runlocal',
    list(
        itertools.product(
            ['vgg16', 'ir152', 'facenet64', 'facenet'], ['none', 'tldmi'], [False, True]
        )
    ),
)
def test_celeba_variants(arch, defense, runlocal):
    config = celeba.get_config(f'arch={arch},defense={defense}' + (',runlocal' if runlocal else ''))
    assert config.model.arch in models.ARCHS
    assert config.defense.name == defense
    assert config.data.root is None  # No paths in defaults.
    if runlocal:
        assert config.data.name == 'synthetic' and config.total_steps > 0


def test_original_recipes():
    vgg, ir, fn = (celeba.get_config(f'arch={a}') for a in ('vgg16', 'ir152', 'facenet64'))
    assert (vgg.optim.lr, vgg.epochs, vgg.batch_size) == (0.08, 200, 64)
    assert (ir.optim.lr, ir.epochs, ir.batch_size) == (0.01, 100, 64)
    assert (fn.optim.lr, fn.epochs, fn.batch_size) == (0.008, 200, 8)
    assert celeba.get_config('arch=facenet').data.image_size == 112
    with pytest.raises(ValueError, match='arch must be one of'):
        celeba.get_config('arch=alexnet')


def test_fashion_config():
    config = fashion_mnist.get_config('defense=tldmi')
    assert config.data.name == 'fashion_mnist_mi' and config.defense.fine_tune_from == 'stage3'
