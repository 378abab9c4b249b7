"""StyleGAN2 generator: shapes, the released models' parameter counts, truncation, noise,
w broadcasting, the PPA post-processing and the `stylegan2` prior family.

Outputs against PyTorch (a reference written from the original's math, and the persistence
pickle format) are tested in `tests/interop/test_convert_stylegan2.py`.
"""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax import priors
from tldmi_jax.priors import stylegan2

RES, Z, W, BATCH = 16, 16, 16, 2
TINY = dict(
    z_dim=Z, w_dim=W, img_resolution=RES, mapping_layers=2, channel_base=128, channel_max=16
)
CUTOFF = 2

# The official FFHQ generator (`ffhq.pkl`, 1024 px): z = w = 512, 8 mapping layers,
# channel_base 32768, channel_max 512 (legacy.py's conversion of the TF config, and train.py's
# 'paper1024'). At 256 px the same options.
FFHQ = dict(z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512)
# Parameters of G_ema, counted by `_original_count` below from the layer shapes of
# `training/networks.py`; the 1024 px one is the 30,370,060 of the released FFHQ G_ema (the
# same number `misc.print_module_summary` prints for it). Checked once against the original
# code: `sum(p.numel() for p in Generator(512, 0, 512, res, 3, mapping_kwargs=
# dict(num_layers=8)).parameters())` gave 30,370,060 at 1024 px and 30,034,338 at 256 px.
OFFICIAL_COUNTS = {1024: 30_370_060, 256: 30_034_338}


def _original_count(res: int, z: int, w: int, layers: int, base: int, cmax: int) -> int:
    """G_ema's parameter count from the original's layer shapes (independent of our model)."""
    fc = lambda i, o: i * o + o  # noqa: E731  FullyConnectedLayer: weight [o, i] + bias [o].
    count = fc(z, w) + (layers - 1) * fc(w, w)  # MappingNetwork (layer_features = w_dim).
    width = lambda r: min(base // r, cmax)  # noqa: E731
    layer = lambda i, o: fc(w, i) + o * i * 9 + o + 1  # noqa: E731  affine, weight, bias, noise.
    torgb = lambda i: fc(w, i) + 3 * i + 3  # noqa: E731
    r = 4
    count += width(4) * 16 + layer(width(4), width(4)) + torgb(width(4))  # const, conv1, torgb
    while r < res:
        r *= 2
        count += layer(width(r // 2), width(r)) + layer(width(r), width(r)) + torgb(width(r))
    return count


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope='module')
def tiny():
    """A 16 px generator with random variables (biases, noise strengths, w_avg non-zero)."""
    g = stylegan2.Generator(**TINY)
    shapes = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((1, Z)))
    rng = np.random.RandomState(1)
    variables = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), shapes)
    return g, variables, rng.randn(BATCH, Z).astype(np.float32)


@functools.cache
def _jitted(g, method, **static):
    return jax.jit(lambda v, x, *args, **kw: g.apply(v, x, *args, method=method, **static, **kw))


def test_shapes_and_w_layout(tiny):
    g, v, z = tiny
    assert g.num_ws == 6 == stylegan2.num_ws(RES)  # 1 + 2 + 2 convolutions + the last toRGB.
    ws = _jitted(g, 'map')(v, z)
    assert ws.shape == (BATCH, 6, W)
    np.testing.assert_array_equal(ws[:, 0], ws[:, 5])  # One w, broadcast to every layer.
    images = _jitted(g, 'synthesize')(v, ws)
    assert images.shape == (BATCH, RES, RES, 3) and images.dtype == jnp.float32
    assert np.isfinite(images).all()
    # [B, w_dim] is broadcast to [B, num_ws, w_dim].
    np.testing.assert_array_equal(_jitted(g, 'synthesize')(v, ws[:, 0]), images)
    assert v['params']['synthesis']['b16']['conv0']['kernel'].shape == (3, 3, 16, 8)
    assert v['buffers']['synthesis']['b8']['conv1']['noise_const'].shape == (8, 8)
    with pytest.raises(ValueError, match=r'\[B, 6, w_dim\]'):
        g.apply(v, jnp.zeros((BATCH, 5, W)), method='synthesize')
    with pytest.raises(ValueError, match='z must be'):
        g.apply(v, jnp.zeros((BATCH, Z + 1)), method='map')


def test_vmap_over_latents_equals_the_batch(tiny):
    g, v, z = tiny
    each = jax.jit(jax.vmap(lambda v, zi: g.apply(v, zi[None], 0.7, CUTOFF)[0], (None, 0)))
    batch = _jitted(g, '__call__', psi=0.7, cutoff=CUTOFF)
    np.testing.assert_allclose(each(v, z), batch(v, z), atol=1e-5)


@pytest.mark.parametrize('res', sorted(OFFICIAL_COUNTS))
def test_official_ffhq_parameter_count_without_compute(res):
    _, _, spec = priors.build_modules('stylegan2', image_size=res, **FFHQ)
    shapes = priors.abstract_variables(spec)['generator']
    expected = _original_count(res, 512, 512, 8, 32768, 512)
    assert _count(shapes['params']) == expected == OFFICIAL_COUNTS[res]
    # Buffers: w_avg and one noise map per convolution (the original also counts its FIR
    # filter buffers, which are constants here).
    noise = 16 + sum(2 * r * r for r in stylegan2.block_resolutions(res)[1:])
    assert _count(shapes['buffers']) == 512 + noise
    g = priors.build_modules('stylegan2', image_size=res, **FFHQ)[0]
    z = jax.ShapeDtypeStruct((2, 512), jnp.float32)
    out = jax.eval_shape(lambda v, z: g.apply(v, z, 0.5, 8), shapes, z)
    assert out.shape == (2, res, res, 3) and g.num_ws == {256: 14, 1024: 18}[res]


def test_truncation(tiny):
    g, v, z = tiny
    w_avg = v['buffers']['mapping']['w_avg']
    np.testing.assert_array_equal(g.apply(v, method='w_avg'), w_avg)
    plain = _jitted(g, 'map')(v, z)
    np.testing.assert_array_equal(_jitted(g, 'map', psi=1, cutoff=CUTOFF)(v, z), plain)
    to_avg = _jitted(g, 'map', psi=0.0, cutoff=CUTOFF)(v, z)
    np.testing.assert_allclose(to_avg[:, :CUTOFF], np.broadcast_to(w_avg, (BATCH, CUTOFF, W)))
    np.testing.assert_array_equal(to_avg[:, CUTOFF:], plain[:, CUTOFF:])
    half = jax.jit(lambda v, z, psi: g.apply(v, z, psi, method='map'))(v, z, 0.5)  # traced psi
    np.testing.assert_allclose(half, (plain + w_avg) / 2, rtol=1e-6, atol=1e-6)
    assert not np.allclose(w_avg, plain[0, 0], atol=1e-2)  # Else the checks above prove nothing.


def test_noise_modes(tiny):
    g, v, z = tiny
    ws = _jitted(g, 'map')(v, z)
    const = _jitted(g, 'synthesize', noise_mode='const')(v, ws)
    np.testing.assert_array_equal(_jitted(g, 'synthesize', noise_mode='const')(v, ws), const)
    none = _jitted(g, 'synthesize', noise_mode='none')(v, ws)
    assert np.abs(none - const).max() > 1e-2
    random = _jitted(g, 'synthesize', noise_mode='random')
    a = random(v, ws, rngs={'noise': jax.random.key(7)})
    b = random(v, ws, rngs={'noise': jax.random.key(8)})
    np.testing.assert_array_equal(random(v, ws, rngs={'noise': jax.random.key(7)}), a)
    assert np.abs(a - b).max() > 1e-2 and np.abs(a - const).max() > 1e-2
    # The stored noise times zero strength is no noise.
    silent = jax.tree.map(lambda x: x, v)
    for block in silent['params']['synthesis'].values():
        for layer in ('conv0', 'conv1'):
            if layer in block:
                block[layer]['noise_strength'] = jnp.zeros((1,))
    np.testing.assert_allclose(
        _jitted(g, 'synthesize', noise_mode='const')(silent, ws),
        _jitted(g, 'synthesize', noise_mode='none')(silent, ws),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match='noise_mode'):
        g.apply(v, ws, 'fixed', method='synthesize')


def test_to_images_maps_crops_and_resizes():
    raw = jnp.linspace(-1.5, 1.5, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    unit = stylegan2.to_images(raw)
    assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0
    np.testing.assert_allclose(stylegan2.to_images(raw, clip=False), (raw + 1) / 2, atol=1e-7)
    crop = stylegan2.to_images(raw, crop=4, clip=False)
    np.testing.assert_allclose(crop, (raw[:, 2:6, 2:6] + 1) / 2, atol=1e-7)
    assert stylegan2.to_images(raw, crop=6, size=3).shape == (2, 3, 3, 3)
    flat = stylegan2.to_images(jnp.full((1, 8, 8, 3), 0.2), size=5)
    np.testing.assert_allclose(flat, 0.6, atol=1e-6)  # A resize keeps a constant image.
    with pytest.raises(ValueError, match='crop=9'):
        stylegan2.to_images(raw, crop=9)


def test_prior_family_save_load_generate(tmp_path):
    prior = priors.make_prior('stylegan2', image_size=RES, tiny=True)
    assert prior.discriminator is None and prior.num_classes == 0
    assert 'stylegan2' not in priors.TRAINABLE
    path = os.path.join(tmp_path, 'sg2')
    priors.save_prior(path, prior)
    loaded = priors.load_prior(path)
    assert loaded.spec == {**prior.spec, 'resample_filter': [1, 3, 3, 1]}
    z = jax.random.normal(jax.random.key(3), (BATCH, prior.z_dim))
    images = loaded.generate(loaded.variables['generator'], z)
    assert images.shape == (BATCH, RES, RES, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.std()) > 1e-3
    chex.assert_trees_all_equal(loaded.variables, prior.variables)
    with pytest.raises(ValueError, match='no discriminator'):
        loaded.discriminate(None, images)
    with pytest.raises(ValueError, match='unconditional'):
        priors.build_modules('stylegan2', num_classes=3)
    with pytest.raises(ValueError, match='power of two'):
        priors.build_modules('stylegan2', image_size=48)
