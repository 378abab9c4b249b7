"""The classifier trainer: pretrained init + TL-DMI, real builders, model selection."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import celeba, fashion_mnist
from tldmi_jax import classifiers
from tldmi_jax.data import testing
from tldmi_jax.train import classifier
from tldmi_jax.utils import checkpoint, metrics


def _quick(config, steps=4, eval_every=None):
    config.total_steps = steps
    config.eval_every_steps = eval_every or steps
    config.checkpoint_every_steps = steps
    config.log_every_steps = 2
    return config


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep='/')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('pretrained'))
    classifier.train_and_evaluate(_pretrain_config(), workdir)
    return workdir


def _pretrain_config():
    # Selection after step 2 of 4: a new best replaces part of the state mid-run.
    return _quick(celeba.get_config('arch=vgg16,runlocal'), eval_every=2)


def test_same_config_and_seed_train_identically(pretrained, tmp_path, monkeypatch):
    """Determinism: the `pretrained` run again (same config and seed), bit for bit. Killed and
    resumed: tests/launch/test_train_launcher.py; 1 vs 4 devices: tests/utils/test_sharding.py.

    The train step and the evaluation compile once each: a best model found mid-run and the
    best model loaded for the final evaluation keep the state's placement.
    """
    jitted, jit = [], jax.jit

    def spy(fun, **kwargs):
        jitted.append((getattr(fun, '__name__', ''), jit(fun, **kwargs)))
        return jitted[-1][1]

    monkeypatch.setattr(jax, 'jit', spy)
    workdir = str(tmp_path / 'again')
    classifier.train_and_evaluate(_pretrain_config(), workdir)
    sizes = {name: f._cache_size() for name, f in jitted if name in ('step_fn', 'apply')}
    assert sizes == {'step_fn': 1, 'apply': 1}, sizes
    for name in ('model_final', 'model_best'):
        a = _flat(checkpoint.load_model(os.path.join(pretrained, name)))
        b = _flat(checkpoint.load_model(os.path.join(workdir, name)))
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f'{name}/{k}')
    untimed = [
        [{k: v for k, v in r.items() if k != 'train/images_per_sec'} for r in records]
        for records in (metrics.read_metrics(pretrained), metrics.read_metrics(workdir))
    ]
    assert untimed[0] == untimed[1]
    results = [json.load(open(os.path.join(w, 'results.json'))) for w in (pretrained, workdir)]
    assert results[0] == results[1]


def test_pretrained_init_then_tldmi_keeps_frozen_layers(pretrained, tmp_path):
    config = _quick(celeba.get_config('arch=vgg16,defense=tldmi,runlocal'))
    config.init.checkpoint = pretrained
    config.init.dont_load = ()
    final = classifier.train_and_evaluate(config, str(tmp_path))
    assert final['params/trainable'] < final['params/total']
    # A trainer workdir initialises from its model_best (here step 2 or 4 of the pre-training).
    before = _flat(checkpoint.load_model(os.path.join(pretrained, 'model_best'))['params'])
    after = _flat(checkpoint.load_model(os.path.join(str(tmp_path), 'model_final'))['params'])
    frozen = [k for k in before if k.split('/')[0] < 'conv4_2']  # conv1_1 .. conv4_1
    trained = [k for k in before if k not in frozen]
    assert len(frozen) == 8 * 4 and trained
    for k in frozen:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert any(not np.array_equal(before[k], after[k]) for k in trained)


def test_pretrained_mismatch_lists_names(pretrained, tmp_path):
    config = _quick(celeba.get_config('arch=vgg16,runlocal'))
    config.init.checkpoint = pretrained
    config.init.dont_load = ()
    config.data.kwargs.num_classes = 5
    with pytest.raises(ValueError, match=r'fc/bias: checkpoint \(4,\) vs model \(5,\)'):
        classifier.train_and_evaluate(config, str(tmp_path))


def test_trains_on_celeba_builder_with_selection_on_test(tmp_path):
    root = str(tmp_path / 'celeba')
    testing.write_fake_celeba(
        root, num_classes=3, train_per_class=6, test_per_class=2, class_colours=True
    )
    config = _quick(celeba.get_config('arch=vgg16,runlocal'), steps=6)
    config.data.name = 'celeba_mi'
    config.data.kwargs = {}
    config.data.root = root
    config.data.data_dir = str(tmp_path / 'tfds')
    config.select_on = 'test'
    final = classifier.train_and_evaluate(config, str(tmp_path / 'run'))
    assert 0.0 <= final['target/natural_acc'] <= 1.0
    records = metrics.read_metrics(str(tmp_path / 'run'))
    assert any('test/acc@1' in r for r in records)
    assert json.load(open(tmp_path / 'run' / 'config.json'))['select_on'] == 'test'


def test_fashion_demo_config_on_fake_idx_files(tmp_path):
    root = str(tmp_path / 'fashion')
    testing.write_fake_fashion_mnist(root, train_per_class=8, test_per_class=2)
    config = _quick(fashion_mnist.get_config('defense=tldmi,runlocal'))
    config.data.root = root
    config.batch_size = 8
    final = classifier.train_and_evaluate(config, str(tmp_path / 'run'))
    assert 0.0 <= final['target/natural_acc'] <= 1.0
    assert final['params/trainable'] < final['params/total']


def test_bad_selection_split(tmp_path):
    config = _quick(celeba.get_config('arch=vgg16,runlocal'))
    config.select_on = 'train'
    with pytest.raises(ValueError, match="select_on must be 'val' or 'test'"):
        classifier.train_and_evaluate(config, str(tmp_path))


def test_load_classifier_from_workdir(pretrained):
    model, variables = classifiers.load(pretrained)
    features, logits = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32))
    assert logits.shape == (2, 4)
    with pytest.raises(ValueError, match='is not a ir152_tiny checkpoint'):
        classifiers.load(pretrained, arch='ir152_tiny')
