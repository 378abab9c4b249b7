"""The evaluation, Fisher and evaluation-model configs, and the runlocal stand-in attack."""

import pytest

from configs import eval_celeba, evaluate_celeba, fisher_celeba
from tldmi_jax import models
from tldmi_jax.models import inception


@pytest.mark.parametrize('runlocal_arg', ['', 'runlocal'])
def test_configs_build_without_paths(runlocal_arg):
    ev = evaluate_celeba.get_config(runlocal_arg)
    fi = fisher_celeba.get_config(runlocal_arg)
    train = eval_celeba.get_config(runlocal_arg)
    for config in (ev, fi):
        assert config.attack_dir is None and config.target.checkpoint is None
        assert config.data.root is None and config.runlocal == bool(runlocal_arg)
    assert ev.eval_model.checkpoint is None and ev.fid.inception_checkpoint is None
    assert ev.fid.arch in inception.INCEPTIONS and ev.fid.prdc_k == 3
    assert not ev.reproduce_top5_bug and not ev.fid.original_range_mapping
    assert train.model.arch in models.ARCHS and train.init.checkpoint is None
    if runlocal_arg:
        assert ev.data.name == fi.data.name == train.data.name == 'synthetic'
        assert ev.fid.arch == 'fid_inception_tiny'
    else:
        assert (train.model.arch, train.data.image_size, train.optim.lr) == ('facenet', 112, 0.01)
        assert (train.epochs, train.batch_size, train.model.num_classes) == (30, 64, 1000)
        assert train.init.dont_load == ('fc/.*',)  # As the original: MS1M embedding head.
        fresh = eval_celeba.get_config('fresh_head').init.dont_load
        assert fresh == ('output_layer/.*', 'fc/.*')
