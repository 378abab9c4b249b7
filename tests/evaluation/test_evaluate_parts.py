"""Pieces of evaluate(): where Inception weights come from, and when FID is skipped."""

import logging

import numpy as np
import pytest
from flax import traverse_util

from configs import evaluate_celeba
from tldmi_jax.evaluation import evaluate, report
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
