"""Defense hyperparameters: their only defaults are `config_lib.classifier_config`'s."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from tldmi_jax import config_lib, defenses, models
from tldmi_jax.defenses import transfer

_BUILD_KW = dict(num_classes=3, train_size=40, batch_size=4, steps_per_epoch=10, total_steps=20)


def _defense(name):
    return config_lib.classifier_config(
        dataset='synthetic',
        arch='small_tiny',
        num_classes=3,
        image_size=16,
        channels=3,
        lr=0.1,
        epochs=2,
        batch_size=4,
        defense=name,
    ).defense


def _build(spec):
    model = defenses.wrap_model(models.get_model('small_tiny', 3), spec)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x)
    plan = transfer.resolve(model, variables['params'], variables['batch_stats'], spec)
    return defenses.build(spec, model, variables['params'], plan, **_BUILD_KW)


@pytest.mark.parametrize('name', ['mid', 'bido', 'negls', 'dpsgd', 'tldmi+mid'])
def test_build_reads_the_config_values(name):
    spec = _defense(name)
    if name.startswith('tldmi'):
        spec.fine_tune_from = 'stage2'
    spec.mid_beta = 0.02  # Not the default: the value comes from the config.
    objective = _build(spec)
    assert objective.hp['mid_beta'] == 0.02
    assert objective.hp['dp_delta'] == spec.dp_delta and objective.hp['ls_alpha'] == spec.ls_alpha


@pytest.mark.parametrize('missing', ['mid_beta', 'bido_sigma', 'ls_end_epoch', 'dp_accountant'])
def test_missing_field_is_named(missing):
    spec = _defense('mid').to_dict()
    del spec[missing]
    with pytest.raises(ValueError, match=rf'config\.defense\.{missing}\b.*classifier_config'):
        _build(ml_collections.ConfigDict(spec))


def test_plain_defenses_need_no_hyperparameters():
    spec = ml_collections.ConfigDict(dict(name='tldmi', fine_tune_from='stage2'))
    objective = _build(spec)  # Plain cross-entropy: no defense hyperparameter is read.
    assert objective.parts == ('tldmi',) and objective.hp == {}
