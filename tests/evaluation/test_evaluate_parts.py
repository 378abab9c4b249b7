"""Pieces of evaluate(): where Inception weights come from, when FID is skipped, and which
images PPA's FID compares."""

import logging

import flax.linen as nn
import numpy as np
import pytest
from flax import traverse_util

from configs import evaluate_celeba, evaluate_ppa
from tldmi_jax import data
from tldmi_jax.evaluation import evaluate, features, report
from tldmi_jax.models import inception
from tldmi_jax.reporting import files
from tldmi_jax.utils import checkpoint


def test_inception_from_checkpoint_random_or_skipped(tmp_path, caplog):
    config = evaluate_celeba.get_config('runlocal')
    tiny = inception.get_inception(config.fid.arch)
    saved = inception.random_variables(tiny, seed=3)
    path = str(tmp_path / 'fid_inception')
    checkpoint.save_model(path, saved['params'], saved['batch_stats'])

    config.fid.inception_checkpoint = path
    _, variables, origin = evaluate.load_inception(config)
    assert origin == path
    flat = traverse_util.flatten_dict(variables, sep='/')
    for k, v in traverse_util.flatten_dict(saved, sep='/').items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)

    config.fid.inception_checkpoint = None
    assert evaluate.load_inception(config)[2] == 'random weights'  # runlocal only.
    config.runlocal = False
    with caplog.at_level(logging.WARNING):
        assert evaluate.load_inception(config) is None
    assert 'config.fid.inception_checkpoint' in caplog.text

    config.fid.arch = 'fid_inception'  # The full network does not fit the tiny weights.
    config.fid.inception_checkpoint = path
    with pytest.raises(ValueError, match='shape mismatches'):
        evaluate.load_inception(config)


def test_report_table_and_json(tmp_path):
    metrics = {'attack/acc@1': 0.5, 'attack/acc@1_std': 0.1, 'attack/fid': float('nan')}
    table = report.format_table(metrics)
    assert '| 0.5 ± 0.1 |' in table and '`attack/fid` | n/a |' in table
    path = files.write_json(str(tmp_path / 'm.json'), metrics)
    assert '"attack/fid": null' in open(path).read()


class _Probe(nn.Module):
    """An 'Inception' whose features are its (resized, mapped) 2 x 2 input."""

    IMAGE_SIZE = 2

    @nn.compact
    def __call__(self, x, train=False):
        return x.reshape(len(x), -1), x[:, 0, 0, :]


def test_ppa_fid_images(tmp_path, monkeypatch):
    """PPA: every reconstruction against private images preprocessed straight to the
    Inception's side; TL-DMI: only successful ones, private images at their size."""
    config = evaluate_ppa.get_config('runlocal')
    monkeypatch.setattr(evaluate, 'load_inception', lambda c: (_Probe(), {}, 'probe'))
    sizes = []
    prep = evaluate._preprocess
    monkeypatch.setattr(evaluate, '_preprocess', lambda c, s: sizes.append(s) or prep(c, s))
    source = data.get_source('synthetic', 'private_train', **config.data.kwargs)
    indices = np.arange(len(source))
    recon = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype(np.float32)
    success = np.array([True, False, True, False, False, False])
    cache = features.FeatureCache(str(tmp_path))

    def run():
        return evaluate._distribution_metrics(
            config, cache, recon, success, source, indices, {'split': 'private_train'}
        )

    result, notes = run()
    assert sizes == [2] and np.isfinite(result['attack/fid'])
    assert f'6 reconstructions (all) vs {len(source)} private images' in notes[-1]
    config.fid.reconstructions, config.fid.real_size = 'successful', 'reconstructions'
    result, notes = run()
    assert sizes == [2, 8] and np.isfinite(result['attack/fid'])
    assert '2 successful reconstructions vs' in notes[-1]
