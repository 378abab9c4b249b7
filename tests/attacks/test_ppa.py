"""PPA: the Poincare loss, candidate and final selection, bad settings, end to end."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import attack_ppa
from tldmi_jax import attacks, classifiers, config_lib, models, priors, reconstructions
from tldmi_jax.attacks import common, ppa, runner
from tldmi_jax.pipelines import runlocal


def _poincare_by_hand(logits, label, xi=1e-4):
    """The formula of PPA's `poincare_loss`, term by term in float64."""
    logits = np.asarray(logits, np.float64)
    u = logits / np.abs(logits).sum()
    v = np.zeros_like(u)
    v[label] = 1.0 - xi
    num = 2.0 * ((u - v) ** 2).sum()
    return math.acosh(1.0 + num / ((1.0 - (u**2).sum()) * (1.0 - (v**2).sum())))


def test_poincare_loss_by_hand():
    # u = (0.5, 0.25, 0.25), v = (0.9999, 0, 0): |u - v|^2 = 0.3749, |u|^2 = 0.375.
    expected = math.acosh(1.0 + 2.0 * 0.37490001 / (0.625 * (1.0 - 0.9999**2)))
    got = float(ppa.poincare_loss(jnp.array([2.0, 1.0, 1.0]), 0))
    assert got == pytest.approx(expected, rel=1e-4)  # float32: 1 - |v|^2 cancels
    for logits, label in (([-1.0, 3.0, 0.5, 2.0], 1), ([0.2, -0.4, 0.1], 2)):
        got = float(ppa.poincare_loss(jnp.array(logits), label))
        assert got == pytest.approx(_poincare_by_hand(logits, label), rel=1e-4)
    # The loss falls as the target logit's share grows.
    shares = [float(ppa.poincare_loss(jnp.array([t, 1.0, 1.0]), 0)) for t in (1.0, 4.0, 16.0)]
    assert shares[0] > shares[1] > shares[2]


def test_candidate_ranking_and_final_selection_on_fixed_scores():
    scores = jnp.array([[0.1, 0.9], [0.7, 0.2], [0.7, 0.5], [0.3, 0.8]])
    np.testing.assert_array_equal(ppa.top_candidates(scores, 0, jnp.arange(3)), [1, 2, 3])
    np.testing.assert_array_equal(ppa.top_candidates(scores, 1, jnp.array([1, 3])), [3, 1])
    np.testing.assert_array_equal(ppa.select_best(jnp.array([0.2, 0.9, 0.9, 0.5]), 3), [1, 2, 3])


@pytest.fixture(scope='module')
def tiny_prior():
    return priors.make_prior('stylegan2', image_size=16, tiny=True, seed=3)


def _brightness_target(x):
    """A stand-in target: class 0's logit is 8 x the mean brightness, class 1's is 4."""
    m = jnp.mean(x, axis=(1, 2, 3))
    return m[:, None], jnp.stack([8.0 * m, jnp.full_like(m, 4.0)], axis=-1)


def _cfg(**changes):
    cfg = dict(config_lib.ATTACK_DEFAULTS['ppa'])
    cfg.update(reference_batch=25, candidates=12, num_seeds=4, final=2, crop=12)
    cfg.update(candidate_batch=5, select_views=3, select_batch=4)
    cfg.update(changes)
    return ml_collections.ConfigDict(cfg)


def _ctx(prior):
    return common.AttackContext(prior=prior, target=_brightness_target, num_classes=2, image_size=8)


def test_candidate_scores_are_the_target_softmax_averaged_with_the_flip(tiny_prior):
    problem = ppa.make_problem(_ctx(tiny_prior), _cfg())
    key = jax.random.key(5)
    data = jax.jit(problem.prepare)(key)
    assert data['ws'].shape == (12, tiny_prior.spec['w_dim'])  # single_w: one w each
    g = tiny_prior.generator

    @jax.jit  # One program for the reference and the start below (test time).
    def outputs(g_vars, key, data):
        # Recompute three candidates directly: map, synthesise, crop 12 of 16, resize to 8.
        z = jax.random.normal(key, (12, tiny_prior.z_dim))
        ws = g.apply(g_vars, z, 0.5, 8, method='map')
        raw = g.apply(g_vars, ws[:3], 'const', method='synthesize')
        x = priors.stylegan2.to_images(raw, crop=12, size=8)
        p = jax.nn.softmax(_brightness_target(x)[1])
        p_flip = jax.nn.softmax(_brightness_target(x[:, :, ::-1])[1])
        # Identity 0 starts from the brightest candidates, best first.
        start = problem.start(jnp.asarray(0), jnp.arange(4), data)
        return ws[:, 0], 0.5 * (p + p_flip), start

    ws, scores, start = outputs(tiny_prior.variables['generator'], key, data)
    data = jax.device_get(data)
    np.testing.assert_allclose(data['ws'], ws, atol=1e-6)
    np.testing.assert_allclose(data['scores'][:3], scores, atol=1e-5)
    order = np.argsort(-data['scores'][:, 0], kind='stable')[:4]
    np.testing.assert_array_equal(start, data['ws'][order])


def test_final_selection_keeps_the_most_robustly_classified(tiny_prior):
    problem = ppa.make_problem(_ctx(tiny_prior), _cfg())
    levels = jnp.array([0.1, 0.9, 0.5, 0.3])  # Uniform images: every crop and flip keeps them.
    images = jnp.ones((4, 1, 8, 8, 3)) * levels[:, None, None, None, None]
    kept = problem.select(images, jnp.asarray(0), jax.random.key(0))
    np.testing.assert_allclose(kept[:, 0, 0, 0, 0], [0.9, 0.5])
    # For class 1 (whose confidence falls with brightness) the darkest two.
    kept = problem.select(images, jnp.asarray(1), jax.random.key(0))
    np.testing.assert_allclose(kept[:, 0, 0, 0, 0], [0.1, 0.3])


@pytest.mark.parametrize(
    'changes, message',
    [
        (dict(num_seeds=20), 'raise attack.candidates'),
        (dict(final=5), 'lower attack.final'),
        (dict(crop=32), 'exceeds the 16 px'),
    ],
)
def test_inconsistent_settings_are_refused(changes, message, tiny_prior):
    with pytest.raises(ValueError, match=message):
        ppa.make_problem(_ctx(tiny_prior), _cfg(**changes))


def test_configs_facescrub_and_dogs():
    face = attack_ppa.get_config('dataset=facescrub')
    dogs = attack_ppa.get_config('dataset=dogs')
    hp_face, hp_dogs = attacks.hyperparameters(face.attack), attacks.hyperparameters(dogs.attack)
    assert (hp_face.steps, hp_face.lr, hp_face.crop, tuple(hp_face.crop_scale)) == (
        50,
        0.005,
        800,
        (0.9, 1.0),
    )
    assert (hp_dogs.steps, hp_dogs.lr, hp_dogs.crop, tuple(hp_dogs.crop_scale)) == (
        100,
        0.01,
        0,
        (0.75, 1.0),
    )
    assert (hp_face.num_seeds, hp_face.final, hp_face.candidates, hp_face.b1) == (
        200,
        50,
        2000,
        0.1,
    )
    assert (face.identities.count, dogs.identities.count) == (530, 120)
    with pytest.raises(ValueError, match='Unknown dataset'):
        attack_ppa.get_config('dataset=cars')


def test_ppa_end_to_end_on_runlocal(tmp_path):
    config = attack_ppa.get_config('runlocal')
    config.target.checkpoint = runlocal.tiny_classifier(
        str(tmp_path / 'target'), arch='small', steps=10
    )
    workdir = str(tmp_path / 'ppa')
    summary = runner.run(runlocal.fill_in('attack', config, workdir), workdir)
    arrays, meta = reconstructions.load(workdir)
    assert meta['attack'] == 'ppa' and summary['protocol_hash'] == meta['protocol_hash']
    assert meta['num_seeds'] == 2  # final: the reconstructions kept per identity
    assert arrays['images'].shape == (4 * 2, 32, 32, 3)
    assert 0.0 <= arrays['images'].min() and arrays['images'].max() <= 1.0
    np.testing.assert_array_equal(arrays['identity'], [0, 0, 1, 1, 2, 2, 3, 3])
    records = [json.loads(line) for line in open(tmp_path / 'ppa' / 'metrics.jsonl')]
    assert all(np.isfinite(r['attack/final_iden']) for r in records)
    assert all(0.0 <= r['attack/final_conf'] <= 1.0 for r in records)


def test_memory_settings_are_not_part_of_the_protocol():
    cfg = attacks.hyperparameters(attack_ppa.get_config('runlocal').attack)
    spec = attacks.resolve(attack_ppa.get_config('runlocal').attack)
    kept = runner.protocol_hyperparameters(spec, cfg)
    assert 'seed_chunk' in cfg and not {'seed_chunk', *ppa.EXECUTION_ONLY} & set(kept)
    assert kept['steps'] == cfg.steps and kept['final'] == cfg.final
    # seed_chunk is every attack's: GMI's protocol leaves it out too.
    gmi_attack = config_lib.attack_config('gmi').attack
    gmi_cfg = attacks.hyperparameters(gmi_attack)
    gmi_kept = runner.protocol_hyperparameters(attacks.resolve(gmi_attack), gmi_cfg)
    assert 'seed_chunk' in gmi_cfg and 'seed_chunk' not in gmi_kept and 'lam' in gmi_kept


def test_full_size_ppa_step_shapes_without_compute():
    """FFHQ's 1024 px StyleGAN2 against a 530-class ResNet-152 at 224 px, traced only
    (`jax.eval_shape`): the candidate pool, a start, a gradient step's loss, the render and
    the final selection have the shapes of PPA's FaceScrub attack."""
    g, _, spec = priors.build_modules('stylegan2', image_size=1024)
    g_shapes = priors.abstract_variables(spec)['generator']
    model = models.get_model('resnet152', 530)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    t_shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    cfg = _cfg(candidates=4, num_seeds=2, final=1, crop=800, select_views=2, select_batch=2)
    cfg.candidate_batch = 2

    def attack_step(g_vars, t_vars, key):
        prior = priors.from_modules(g, None, spec, {'generator': g_vars})
        ctx = common.AttackContext(
            prior=prior, target=classifiers.bind(model, t_vars), num_classes=530, image_size=224
        )
        problem = ppa.make_problem(ctx, cfg)
        data = problem.prepare(key)
        w = problem.start(jnp.asarray(7), jnp.arange(2), data)
        grad = jax.grad(lambda w: problem.loss(w, jnp.asarray(7), key)[0])(w[0])
        images = jax.vmap(problem.render, in_axes=(0, None, None))(w, jnp.asarray(7), key)
        return data, grad, images, problem.select(images, jnp.asarray(7), key)

    data, grad, images, kept = jax.eval_shape(attack_step, g_shapes, t_shapes, jax.random.key(0))
    assert data['ws'].shape == (4, 512) and data['scores'].shape == (4, 530)
    assert grad.shape == (512,)
    assert images.shape == (2, 1, 224, 224, 3) and kept.shape == (1, 1, 224, 224, 3)
