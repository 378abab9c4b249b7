"""The evaluation, Fisher and evaluation-model configs, and the runlocal stand-in attack."""

import pytest

from configs import eval_celeba, evaluate_celeba, evaluate_ppa, fisher_celeba
from tldmi_jax import models
from tldmi_jax.models import inception, inception_resnet_v1


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


@pytest.mark.parametrize('arg', ['', 'dataset=facescrub', 'dataset=dogs', 'runlocal'])
def test_ppa_config(arg):
    ppa, base = (
        evaluate_ppa.get_config(arg),
        evaluate_celeba.get_config(arg if arg == 'runlocal' else ''),
    )
    assert base.distance == 'knn_squared_min' and base.fid.reconstructions == 'successful'
    assert base.fid.real_size == 'reconstructions' and base.data.preprocess == ''
    assert ppa.distance == 'ppa' and ppa.fid.reconstructions == 'all'
    assert ppa.fid.real_size == 'inception' and ppa.face_model.checkpoint is None
    assert ppa.face_model.arch in inception_resnet_v1.FACE_MODELS
    assert ppa.face_model.input_mapping == 'ppa'
    assert ppa.face_model.enabled == (arg != 'dataset=dogs')  # FaceNet for faces only.
    if arg == 'runlocal':
        assert ppa.data.name == 'synthetic' and ppa.face_model.arch.endswith('_tiny')
    elif arg == 'dataset=dogs':
        assert ppa.data.name == 'stanford_dogs_mi' and ppa.data.kwargs.cropped
    else:
        assert (ppa.data.name, ppa.data.preprocess) == ('facescrub_mi', 'facescrub_ppa')
        assert (ppa.data.train_split, ppa.data.test_split) == ('train', 'test')
    with pytest.raises(ValueError, match='Unknown dataset'):
        evaluate_ppa.get_config('dataset=celeba')
