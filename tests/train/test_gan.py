"""GAN training of the priors: losses, pseudo-labels, a few steps per kind, exact resume."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gan_celeba
from tldmi_jax import priors
from tldmi_jax.pipelines import runlocal
from tldmi_jax.train import gan, gan_losses
from tldmi_jax.utils import checkpoint, metrics

KINDS = ('gmi', 'kedmi', 'plgmi')


def _config(kind, target=None, steps=6):
    config = gan_celeba.get_config(f'prior={kind},runlocal')
    config.total_steps = steps
    config.checkpoint_every_steps = 3
    config.sample_every_steps = 3
    config.log_every_steps = 3
    config.n_critic = 2
    if target is not None:
        config.target.checkpoint = target
    return config


@pytest.fixture(scope='module')
def target(tmp_path_factory):
    """The tiny runlocal target, trained once (as train_gan does when none is given)."""
    workdir = str(tmp_path_factory.mktemp('gan_target'))
    config = _config('kedmi')
    config.target.runlocal_steps = 8
    return runlocal.fill_in('gan', config, workdir).target.checkpoint


def test_losses_match_closed_forms():
    w = jnp.array([[0.3, -0.4], [0.0, 1.2]])
    logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])

    @jax.jit  # One program for every value below (test time).
    def outputs(w, logits):
        real = jax.random.uniform(jax.random.key(0), (4, 2, 2))
        fake = jax.random.uniform(jax.random.key(1), (4, 2, 2))
        gp = gan_losses.gradient_penalty(
            lambda x: jnp.sum(x * w, axis=(1, 2)), real, fake, jax.random.key(2)
        )
        probs = jax.nn.softmax(logits)
        zeros = jnp.zeros((3, 2))
        return dict(
            gp=gp,
            same=gan_losses.soft_cross_entropy(logits, logits),
            entropy=gan_losses.entropy(logits),
            probs_entropy=-jnp.sum(probs * jnp.log(probs)),
            kedmi=gan_losses.kedmi_unlabeled_loss(zeros, zeros),
            hinge=gan_losses.hinge_d_loss(jnp.array([0.5, -2.0]), jnp.array([2.0, 0.0])),
        )

    out = jax.device_get(outputs(w, logits))
    np.testing.assert_allclose(out['gp'], (np.linalg.norm(w) - 1.0) ** 2, rtol=1e-5)
    np.testing.assert_allclose(out['same'], out['probs_entropy'] / 2, rtol=1e-6)
    np.testing.assert_allclose(out['entropy'], out['probs_entropy'], 1e-6)
    # lse = log 2 for zero logits: softplus(log 2) - log 2 + softplus(log 2) = 2 log 3 - log 2.
    np.testing.assert_allclose(out['kedmi'], 2 * np.log(3) - np.log(2), rtol=1e-6)
    np.testing.assert_allclose(out['hinge'], 0.75 + 0.5)


def test_top_n_selection():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    indices, labels = gan.top_n_selection(probs, 2)
    np.testing.assert_array_equal(indices, [0, 3, 2, 1])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    with pytest.raises(ValueError, match='top_n'):
        gan.top_n_selection(probs, 5)


@pytest.fixture(scope='module')
def trained(target, tmp_path_factory):
    """`trained(kind)`: the workdir of a 6-step run of that prior (each run once)."""
    runs = {}

    def run(kind):
        if kind not in runs:
            workdir = str(tmp_path_factory.mktemp(f'gan_{kind}'))
            config = _config(kind, None if kind == 'gmi' else target)
            runs[kind] = (workdir, gan.train_and_evaluate(config, workdir))
        return runs[kind]

    return run


@pytest.mark.parametrize('kind', KINDS)
def test_prior_trains_with_finite_losses(kind, trained):
    workdir, summary = trained(kind)
    assert summary['steps'] == 6 and summary['g_steps'] == 3
    records = metrics.read_metrics(workdir)
    d_losses = [r['d/loss'] for r in records if 'd/loss' in r]
    g_losses = [r['g/loss'] for r in records if 'g/loss' in r]
    assert len(d_losses) == 2 and len(g_losses) == 2
    assert np.all(np.isfinite(d_losses + g_losses))
    assert os.path.isfile(os.path.join(workdir, 'samples', 'step_6.png'))
    prior = priors.load_prior(workdir)
    assert prior.kind == kind and prior.image_size == 32
    z = jax.random.normal(jax.random.key(0), (2, prior.z_dim))
    images = jax.jit(prior.generate)(prior.variables['generator'], z, jnp.array([0, 3]))
    assert images.shape == (2, 32, 32, 3) and bool(jnp.all(jnp.isfinite(images)))
    if kind == 'plgmi':
        cached = np.load(os.path.join(workdir, 'pseudo_labels.npz'))
        assert len(cached['indices']) == 4 * 16
        np.testing.assert_array_equal(cached['labels'], np.repeat(np.arange(4), 16))
        assert 'g/inv' in records[-1]
        # The spectral-norm vectors moved with the D calls.
        fresh = priors.make_prior('plgmi', num_classes=4, image_size=32, **gan.prior_options(
            _config(kind)))  # fmt: skip
        u_new = prior.variables['discriminator']['spectral']['block1']['c1']['u']
        u_old = fresh.variables['discriminator']['spectral']['block1']['c1']['u']
        assert u_new.shape == u_old.shape and not np.allclose(u_new, u_old)


class _Stop(Exception):
    pass


@pytest.mark.parametrize('kind', ('gmi', 'plgmi'))
def test_resumed_run_equals_uninterrupted(kind, target, trained, tmp_path, monkeypatch):
    """Stop after 3 of 6 steps (a checkpoint), rerun: the same prior as 6 steps at once."""
    tgt = None if kind == 'gmi' else target
    clean, resumed = trained(kind)[0], str(tmp_path / 'resumed')
    save_state = checkpoint.save_state

    def stopping_save(mngr, step, state):
        save_state(mngr, step, state)
        mngr.wait_until_finished()
        raise _Stop

    monkeypatch.setattr(checkpoint, 'save_state', stopping_save)
    with pytest.raises(_Stop):
        gan.train_and_evaluate(_config(kind, tgt, steps=6), resumed)
    monkeypatch.setattr(checkpoint, 'save_state', save_state)
    assert sorted(os.listdir(os.path.join(resumed, 'checkpoints'))) == ['3']
    summary = gan.train_and_evaluate(_config(kind, tgt, steps=6), resumed)
    assert summary['steps'] == 6 and summary['g_steps'] == 3
    a, b = priors.load_prior(clean), priors.load_prior(resumed)
    chex.assert_trees_all_equal(a.variables, b.variables)
    steps = [r['step'] for r in metrics.read_metrics(resumed) if 'd/loss' in r]
    assert steps == [3, 6]


def test_bad_inputs_raise_value_errors(target, tmp_path):
    config = _config('kedmi')
    config.runlocal = False
    with pytest.raises(ValueError, match='target.checkpoint'):
        gan.train_and_evaluate(config, str(tmp_path / 'a'))
    config = _config('gmi')
    config.prior.kind = 'vqgan'
    with pytest.raises(ValueError, match="Unknown prior kind 'vqgan'"):
        gan.train_and_evaluate(config, str(tmp_path / 'b'))
    config = _config('plgmi', target)
    config.prior.num_classes = 7
    with pytest.raises(ValueError, match='has 4 classes but config.prior.num_classes is 7'):
        gan.train_and_evaluate(config, str(tmp_path / 'c'))
    with pytest.raises(ValueError, match='prior must be one of'):
        gan_celeba.get_config('prior=vqgan')
