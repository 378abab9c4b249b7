"""The latent-search loop on toy problems: update rule, descent, resume, independence."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tldmi_jax.attacks import latent_search

W = jax.random.normal(jax.random.key(42), (6, 5))  # A fixed linear "target" on z in R^6.


def _toy_problem(tx, clip=1.0):
    def init(key):
        return jax.random.normal(key, (6,))

    def loss(z, label, key):
        noise = 0.01 * jax.random.normal(key, ())  # Exercises the per-step key.
        logits = z @ W
        ce = -jax.nn.log_softmax(logits)[label]
        return ce + noise, {'iden': ce}

    def render(z, label, key):
        del label, key
        return jnp.tile(z[None, None, :, None], (1, 2, 1, 1))  # [1, 2, 6, 1] "image"

    return latent_search.Problem(
        init=init, loss=loss, tx=tx, project=lambda z: jnp.clip(z, -clip, clip), render=render
    )


def test_optax_nesterov_is_the_original_gmi_update():
    grad_fn = jax.grad(lambda z: jnp.sum(jnp.sin(z) * z**2))
    lr, m = 0.02, 0.9
    z0 = jnp.linspace(-0.8, 0.7, 6)
    # The original (attack.py:inversion): v <- m v - lr g; z <- z - m v_prev + (1 + m) v
    z, v = z0, jnp.zeros(6)
    for _ in range(10):
        g = grad_fn(z)
        v_prev = v
        v = m * v - lr * g
        z = jnp.clip(z - m * v_prev + (1 + m) * v, -1, 1)
    tx = optax.sgd(lr, momentum=m, nesterov=True)
    zz, state = z0, tx.init(z0)
    for _ in range(10):
        updates, state = tx.update(grad_fn(zz), state, zz)
        zz = jnp.clip(optax.apply_updates(zz, updates), -1, 1)
    np.testing.assert_allclose(zz, z, atol=1e-6)


def _search(steps_per_chunk=4):
    return latent_search.LatentSearch(
        _toy_problem(optax.adam(0.05)),
        num_seeds=3,
        key=jax.random.key(0),
        checkpoint_every=steps_per_chunk,
    )


def test_loop_lowers_identity_loss():
    ids = np.array([0, 1, 2, 3], np.int32)
    search = _search()
    _, _, first = search.run_batch(ids, 1)
    latents, images, last = search.run_batch(ids, 40)
    assert last['iden'] < 0.5 * first['iden']
    assert np.abs(latents).max() <= 1.0  # projected
    assert images.shape == (4, 3, 1, 2, 6, 1)
    preds = np.argmax(np.asarray(latents) @ np.asarray(W), -1)
    assert (preds == ids[:, None]).mean() > 0.9


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    ids = np.array([1, 3], np.int32)
    full, _, _ = _search().run_batch(ids, 12)
    ckpt = str(tmp_path / 'ckpt')
    _search().run_batch(ids, 8, ckpt_dir=ckpt)  # leaves a checkpoint at step 4 ("killed")
    resumed, _, _ = _search().run_batch(ids, 12, ckpt_dir=ckpt)
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(full))


def test_identity_result_independent_of_batch_composition():
    a, _, _ = _search().run_batch(np.array([0, 1, 2, 3], np.int32), 10)
    b, _, _ = _search().run_batch(np.array([2, 0], np.int32), 10)
    np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a)[2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(b)[1], np.asarray(a)[0], atol=1e-6)


def test_instance_keys_differ_across_identities_and_seeds():
    k = jax.random.key(0)
    draws = {
        (i, s): float(jax.random.normal(latent_search.instance_key(k, i, s)))
        for i in range(3)
        for s in range(3)
    }
    assert len(set(draws.values())) == 9


@pytest.mark.parametrize('loop', ['scan', 'python'])
def test_one_compilation_per_batch_shape(loop):
    """A weakly typed latent leaf (as KEDMI's log-variance once was) and the small leaves XLA
    may place otherwise (the optimizer's step count) must not compile the chunk again."""
    base = _toy_problem(optax.adam(0.05))

    def init(key):
        return {'z': base.init(key), 'log_var': jax.lax.full((6,), 0.0)}  # weak_type=True

    def loss(latent, label, key):
        value, aux = base.loss(latent['z'] * jnp.exp(0.5 * latent['log_var']), label, key)
        return value, aux

    def render(latent, label, key):
        return base.render(latent['z'], label, key)

    problem = latent_search.Problem(init=init, loss=loss, tx=optax.adam(0.05), render=render)
    search = latent_search.LatentSearch(
        problem, 2, jax.random.key(0), checkpoint_every=2, loop=loop
    )
    search.run_batch(np.array([0, 1]), num_steps=7)  # Chunks of 2, 2, 2 and 1 steps.
    search.run_batch(np.array([2, 3]), num_steps=7)
    if loop == 'scan':
        assert search._run_chunk._cache_size() == 2  # One per chunk length (2 and 1).
    else:
        assert search._step._cache_size() == 1  # One step, whatever the step number.
        assert search._run_chunk._cache_size() == 0


def test_python_loop_and_scan_give_the_same_latents(tmp_path):
    """The CPU default (a Python loop over one jitted step) and the scan of a chunk (the
    default elsewhere) run the same steps; a resume across the two agrees too."""
    ids = np.array([0, 3], np.int32)

    def search(loop):
        return latent_search.LatentSearch(
            _toy_problem(optax.adam(0.05)), 3, jax.random.key(0), checkpoint_every=4, loop=loop
        )

    assert search('auto').loop == ('python' if jax.default_backend() == 'cpu' else 'scan')
    scan, _, aux_scan = search('scan').run_batch(ids, 10)
    loop, _, aux_loop = search('python').run_batch(ids, 10)
    np.testing.assert_allclose(np.asarray(loop), np.asarray(scan), atol=1e-6)
    assert aux_loop['iden'] == pytest.approx(aux_scan['iden'], rel=1e-5)
    ckpt = str(tmp_path / 'ckpt')
    search('scan').run_batch(ids, 8, ckpt_dir=ckpt)  # Leaves the checkpoint of step 4.
    assert sorted(os.listdir(ckpt)) == ['4']
    resumed, _, _ = search('python').run_batch(ids, 10, ckpt_dir=ckpt)
    np.testing.assert_allclose(np.asarray(resumed), np.asarray(scan), atol=1e-6)
    with pytest.raises(ValueError, match="loop must be 'auto', 'scan' or 'python'"):
        search('unrolled')


def _pool_problem(select_count=2):
    """`prepare` draws a pool of 8 latents, `start` gives identity i the pool rows ranked by
    their logit for i (best first), `select` keeps the `select_count` instances whose render
    has the largest first pixel."""
    base = _toy_problem(optax.adam(0.05))

    def prepare(key):
        pool = jax.random.normal(key, (8, 6))
        return {'pool': pool, 'scores': pool @ W}

    def start(identity, seeds, data):
        order = jnp.argsort(-data['scores'][:, identity])
        return data['pool'][order[seeds]]

    def select(images, identity, key):
        del identity, key
        return images[jnp.argsort(-images[:, 0, 0, 0, 0])[:select_count]]

    return latent_search.Problem(
        init=None,
        loss=base.loss,
        tx=base.tx,
        render=base.render,
        prepare=prepare,
        start=start,
        select=select,
    )


def test_start_places_instances_from_the_prepared_pool_and_select_keeps_the_best():
    search = latent_search.LatentSearch(_pool_problem(), 4, jax.random.key(1), checkpoint_every=5)
    data = search.prepared()
    assert search.prepared() is data  # Computed once.
    ids = np.array([0, 3], np.int32)
    latents, images, _ = search.run_batch(ids, 0)  # No step: the start itself.
    for row, identity in enumerate(ids):
        order = np.argsort(-np.asarray(data['scores'])[:, identity], kind='stable')
        np.testing.assert_array_equal(latents[row], np.asarray(data['pool'])[order[:4]])
        # Rendered pixel [0, 0] is z[0]: the two largest of the four starts, largest first.
        np.testing.assert_array_equal(
            images[row, :, 0, 0, 0, 0], np.sort(latents[row, :, 0])[::-1][:2]
        )
    assert images.shape == (2, 2, 1, 2, 6, 1)


def test_seed_chunks_give_the_unchunked_result_and_resume(tmp_path):
    ids = np.array([1, 2], np.int32)

    def search(chunk):
        return latent_search.LatentSearch(
            _pool_problem(3), 5, jax.random.key(2), checkpoint_every=3, seed_chunk=chunk
        )

    whole_lat, whole_img, whole_aux = search(5).run_batch(ids, 9)
    ckpt = str(tmp_path / 'ckpt')
    chunked_lat, chunked_img, chunked_aux = search(2).run_batch(ids, 9, ckpt_dir=ckpt)
    np.testing.assert_allclose(chunked_lat, whole_lat, atol=1e-6)
    np.testing.assert_allclose(chunked_img, whole_img, atol=1e-6)
    # The losses of the last step: the mean over every instance, as without chunks.
    for name in ('loss', 'iden'):
        np.testing.assert_allclose(chunked_aux[name], whole_aux[name], rtol=1e-5)
    # Every chunk of seeds (0-1, 2-3, 4) kept its finished state: a rerun steps no more,
    # and returns the losses those chunks had logged.
    names = ['seeds_00000-00001', 'seeds_00002-00003', 'seeds_00004-00004']
    assert sorted(os.listdir(ckpt)) == names
    again_lat, again_img, aux = search(2).run_batch(ids, 9, ckpt_dir=ckpt)
    np.testing.assert_array_equal(again_lat, chunked_lat)
    np.testing.assert_array_equal(again_img, chunked_img)
    assert {k: aux[k] for k in ('loss', 'iden')} == {k: chunked_aux[k] for k in ('loss', 'iden')}


@pytest.mark.parametrize(
    'identities,seeds,backend,want',
    [
        (60, 5, 'cpu', 1),  # 300 instances: five calls of 60.
        (8, 5, 'cpu', 5),  # 40 instances: one call.
        (5, 20, 'cpu', 10),  # The demo: 100 instances in two equal calls of 50.
        (30, 5, 'cpu', 2),  # 150: three calls (2 + 2 + 1 seeds) of at most 60.
        (10, 7, 'cpu', 4),  # 70: two chunks (4 + 3) of at most 60.
        (100, 3, 'cpu', 1),  # More identities than the bound: one seed per call.
        (60, 5, 'gpu', 5),  # Elsewhere: all seeds at once.
    ],
)
def test_auto_seed_chunk(identities, seeds, backend, want):
    chunk = latent_search.auto_seed_chunk(identities, seeds, backend)
    assert chunk == want
    if backend == 'cpu' and chunk > 1:
        assert identities * chunk <= latent_search.CPU_INSTANCES_PER_CALL


def test_chunk_size_is_automatic_per_device_unless_set():
    search = latent_search.LatentSearch(_pool_problem(3), 20, jax.random.key(0), 3)
    backend = jax.default_backend()
    assert search.chunk_size(5) == latent_search.auto_seed_chunk(5, 20, backend)
    # Identities are split over the devices: the bound is per device.
    assert search.chunk_size(120, devices=2) == latent_search.auto_seed_chunk(60, 20, backend)
    explicit = latent_search.LatentSearch(_pool_problem(3), 20, jax.random.key(0), 3, seed_chunk=7)
    assert explicit.chunk_size(5) == 7
