"""GAN priors: exact layers, original parameter counts, tiny forward passes, save/load."""

import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax import priors
from tldmi_jax.priors import layers, plgmi
from tldmi_jax.priors import stylegan2_ops as ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ('gmi', 'kedmi', 'plgmi')
NUM_CLASSES = 4

# Counted from the originals' layer shapes (TL-DMI models/generator.py, models/discri.py;
# PLG-MI models/generators/resnet64.py, models/discriminators/snresnet64.py).
FULL_COUNTS = {
    'gmi': (5_142_083, 4_316_545),
    'kedmi': (5_142_083, 18_888_936),
    'plgmi': (17_973_379, 11_165_441),
}


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope='module')
def tiny():
    """One tiny prior per kind at 32 px (initialised once for the module)."""
    return {
        k: priors.make_prior(k, num_classes=NUM_CLASSES, image_size=32, tiny=True) for k in KINDS
    }


@pytest.mark.parametrize(
    'k,s,p,op',
    [(5, 2, 2, 1), (4, 2, 1, 0), (3, 2, 1, 1), (5, 3, 1, 2), (4, 2, 3, 0), (2, 3, 0, 0)],
)
def test_subpixel_conv_transpose_equals_lax(k, s, p, op):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    ref = nn.ConvTranspose(4, (k, k), (s, s), ((k - 1 - p, k - 1 - p + op),) * 2,
                           transpose_kernel=True)  # fmt: skip
    variables = jax.jit(ref.init)(jax.random.key(1), x)
    ours = layers.ConvTranspose(4, (k, k), (s, s), (p, p), (op, op))

    def lax_ref(a, w):
        pads = ((k - 1 - p, k - 1 - p + op),) * 2
        dn = ('NHWC', 'HWIO', 'NHWC')
        return jax.lax.conv_transpose(a, w, (s, s), pads, dimension_numbers=dn,
                                      transpose_kernel=True)  # fmt: skip

    def phases_fn(a, w):
        return layers.conv_transpose_phases(a, w, (s, s), (p, p), (op, op))

    @jax.jit  # One program for every comparison below (test time).
    def outputs(variables, x):
        kernel = variables['params']['kernel']
        grads = [jax.grad(_sum_sin(f), argnums=(0, 1))(x, kernel) for f in (phases_fn, lax_ref)]
        params = [
            jax.grad(lambda w, m=m: jnp.sum(jnp.sin(m.apply({'params': w}, x))))(
                variables['params']
            )['kernel']
            for m in (ours, ref)
        ]
        return dict(
            ours=ours.apply(variables, x),
            ref=ref.apply(variables, x),
            lax=lax_ref(x, kernel),
            sub=layers.conv_transpose_subpixel(x, kernel, (s, s), (p, p), (op, op)),
            phases=phases_fn(x, kernel),
            grads=grads,
            params=params,
        )

    out = outputs(variables, x)
    np.testing.assert_allclose(out['ours'], out['ref'], atol=1e-5)
    np.testing.assert_allclose(out['sub'], out['lax'], atol=1e-5)
    np.testing.assert_allclose(out['phases'], out['lax'], atol=1e-5)
    for a, b in zip(*out['grads'], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # Gradients agree too (the reason for the rewrite is the slow kernel gradient).
    np.testing.assert_allclose(out['params'][0], out['params'][1], atol=1e-4)
    # The phase kernels are slices, not a gather: XLA:CPU runs a gather's gradient (a
    # scatter) slowly on the large kernels of a generator's first layers.
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(ours.apply({'params': w}, x))))(
        variables['params']
    ).jaxpr
    assert not {'gather', 'scatter-add', 'scatter_add'} & _primitives(jaxpr)


def test_wide_conv_transpose_runs_per_phase_and_equals_lax():
    """From s * s * features >= PHASES_FROM_CHANNELS output channels of the sub-pixel
    convolution on, `ConvTranspose` runs one convolution per phase (4 here, not 1)."""
    features = layers.PHASES_FROM_CHANNELS // 4
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
    ours = layers.ConvTranspose(features, use_bias=False)
    variables = ours.init(jax.random.key(1), x)
    ref = nn.ConvTranspose(features, (5, 5), (2, 2), ((2, 3),) * 2, transpose_kernel=True,
                           use_bias=False)  # fmt: skip
    np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), atol=1e-5)
    convs = {
        width: sum(
            eqn.primitive.name == 'conv_general_dilated'
            for eqn in jax.make_jaxpr(layers.ConvTranspose(width, use_bias=False).apply)(
                jax.eval_shape(
                    layers.ConvTranspose(width, use_bias=False).init, jax.random.key(1), x
                ),
                x,
            ).jaxpr.eqns
        )
        for width in (features, features - 1)
    }
    assert convs == {features: 4, features - 1: 1}


def _sum_sin(f):
    return lambda *args: jnp.sum(jnp.sin(f(*args)))


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize('kind', KINDS)
def test_full_size_parameter_counts(kind):
    spec = priors.build_modules(kind, num_classes=1000)[2]
    shapes = priors.abstract_variables(spec)
    g_count, d_count = FULL_COUNTS[kind]
    assert _count(shapes['generator']['params']) == g_count
    assert _count(shapes['discriminator']['params']) == d_count
    assert spec['image_size'] == 64 and spec['z_dim'] == (128 if kind == 'plgmi' else 100)


def test_full_size_output_shapes():
    z = jax.ShapeDtypeStruct((2, 100), jnp.float32)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    g, d, _ = priors.build_modules('kedmi', num_classes=1000)
    g_vars = jax.eval_shape(lambda z: g.init(jax.random.key(0), z), z)
    assert jax.eval_shape(lambda v, z: g.apply(v, z), g_vars, z).shape == (2, 64, 64, 3)
    d_vars = jax.eval_shape(lambda x: d.init(jax.random.key(0), x), x)
    feat, logits = jax.eval_shape(lambda v, x: d.apply(v, x), d_vars, x)
    assert feat.shape == (2, 4096) and logits.shape == (2, 1000)
    assert d_vars['params']['mbd']['T'].shape == (4096, 64, 50)


@pytest.mark.parametrize('kind', KINDS)
def test_tiny_prior_outputs(tiny, kind):
    prior = tiny[kind]
    z = jax.random.normal(jax.random.key(2), (3, prior.z_dim))
    y = jnp.array([0, 1, 3])
    images = jax.jit(prior.generate)(prior.variables['generator'], z, y)
    assert images.shape == (3, 32, 32, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    out = jax.jit(prior.discriminate)(prior.variables['discriminator'], images, y)
    if kind == 'kedmi':
        feat, logits = out
        assert feat.shape == (3, 8 * 4 * 2 * 2) and logits.shape == (3, NUM_CLASSES)
    else:
        assert out.shape == (3,)
    assert prior.num_classes == (0 if kind == 'gmi' else NUM_CLASSES)
    assert json.loads(json.dumps(prior.spec)) == prior.spec


def test_plgmi_generator_is_conditional_and_needs_labels(tiny):
    prior = tiny['plgmi']
    z = jnp.tile(jax.random.normal(jax.random.key(3), (1, prior.z_dim)), (2, 1))
    g_vars = prior.variables['generator']
    # Class-conditional BN: change one class's scale and only that class's image changes.
    scale = g_vars['params']['block2']['b1']['scale']['embedding']
    edited = jax.tree.map(lambda a: a, g_vars)
    edited['params']['block2']['b1']['scale']['embedding'] = scale.at[1].multiply(3.0)
    generate = jax.jit(prior.generate)
    before = generate(g_vars, z, jnp.array([0, 1]))
    after = generate(edited, z, jnp.array([0, 1]))
    np.testing.assert_array_equal(before[0], after[0])
    assert not np.allclose(before[1], after[1])
    with pytest.raises(ValueError, match='labels'):
        prior.generate(g_vars, z)


def test_generator_train_mode_updates_batch_stats(tiny):
    prior = tiny['gmi']
    z = jax.random.normal(jax.random.key(4), (4, prior.z_dim))
    apply = jax.jit(lambda v, z: prior.generator.apply(v, z, train=True, mutable=['batch_stats']))
    _, new = apply(prior.variables['generator'], z)
    old = prior.variables['generator']['batch_stats']
    assert not np.allclose(new['batch_stats']['l1_bn']['mean'], old['l1_bn']['mean'])


def test_spectral_norm_power_iteration():
    x = np.ones((1, 9), np.float32)
    dense = layers.SNDense(6)

    @jax.jit  # One program for every value below (test time).
    def outputs(x):
        w = jax.random.normal(jax.random.key(5), (6, 9))
        variables = dense.init(jax.random.key(6), x, train=False)
        params = {'kernel': w.T, 'bias': jnp.zeros(6)}
        _, state = dense.apply(
            {'params': params, 'spectral': variables['spectral']},
            x,
            train=False,
            mutable=['spectral'],
        )

        def step(_, carry):
            return dense.apply({'params': params, **carry[1]}, x, train=True, mutable=['spectral'])

        out, _ = jax.lax.fori_loop(0, 50, step, (jnp.zeros((1, 6)), state))
        return w, variables['spectral'], state['spectral'], out

    w, spectral, no_iteration, out = jax.device_get(outputs(x))
    chex.assert_trees_all_equal(no_iteration, spectral)  # No iteration.
    sigma_true = np.linalg.svd(w, compute_uv=False)[0]
    np.testing.assert_allclose(out, x @ w.T / sigma_true, rtol=1e-4)


def test_small_layers_match_reference_formulas():
    norm = layers.InstanceNorm()
    mbd = layers.MinibatchDiscrimination(5, 3)

    @jax.jit  # One program for every value below (test time).
    def outputs(x, feats):
        y = norm.apply(norm.init(jax.random.key(0), x), x)
        params = mbd.init(jax.random.key(9), feats)
        return dict(
            up=layers.upsample2x_bilinear(x),
            resized=jax.image.resize(x, (2, 12, 8, 3), 'bilinear'),
            pool=layers.avg_pool2x(x),
            nn_pool=nn.avg_pool(x, (2, 2), strides=(2, 2)),
            mean=jnp.mean(y, axis=(1, 2)),
            var=jnp.var(y, axis=(1, 2)),
            flat=layers.flatten_nchw(x),
            params=params,
            mbd=mbd.apply(params, feats),
        )

    def inputs():
        x = jax.random.normal(jax.random.key(7), (2, 6, 4, 3))
        return x, jax.random.normal(jax.random.key(8), (4, 7))

    # The inputs come from a program of their own: one that also used them could compute them
    # twice, each copy rounded differently (`out[:, :7]` is compared exactly).
    x, feats = jax.device_get(jax.jit(inputs)())
    got = jax.device_get(outputs(x, feats))
    np.testing.assert_allclose(got['up'], got['resized'], atol=1e-6)
    np.testing.assert_allclose(got['pool'], got['nn_pool'], atol=1e-6)
    np.testing.assert_allclose(got['mean'], 0.0, atol=1e-5)
    np.testing.assert_allclose(got['var'], 1.0, atol=1e-3)
    assert got['flat'][0, 1] == x[0, 0, 1, 0]  # Channel-major, then rows.

    t = got['params']['params']['T']
    m = np.einsum('na,abc->nbc', feats, t)
    expected = np.array(
        [[sum(np.exp(-np.abs(m[i, b] - m[j, b]).sum()) for j in range(4) if j != i)
          for b in range(5)] for i in range(4)]
    )  # fmt: skip
    out = got['mbd']
    np.testing.assert_allclose(out[:, :7], feats)
    np.testing.assert_allclose(out[:, 7:], expected, rtol=1e-4, atol=1e-6)


def test_max_margin_loss_and_augment():
    logits = jnp.array([[1.0, 5.0, 2.0], [4.0, 0.0, 3.0]])
    labels = jnp.array([1, 2])

    @jax.jit  # One program for every value below (test time).
    def outputs(logits, labels):
        images = jax.random.uniform(jax.random.key(10), (3, 16, 16, 3))
        grad = jax.grad(lambda x: jnp.sum(plgmi.augment(jax.random.key(11), x)))(images)
        out = plgmi.augment(jax.random.key(11), images)
        return plgmi.max_margin_loss(logits, labels), images, out, grad

    loss, images, out, grad = jax.device_get(outputs(logits, labels))
    # (-5 + 2) / 2 + (-3 + 4) / 2.
    np.testing.assert_allclose(loss, -1.0)
    assert out.shape == images.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    assert float(np.abs(grad).sum()) > 0
    np.testing.assert_array_equal(out, outputs(logits, labels)[2])  # Same key, same output.


@pytest.mark.parametrize('kind', KINDS)
def test_save_load_round_trip(tiny, kind, tmp_path, monkeypatch):
    prior = tiny[kind]
    monkeypatch.chdir(tmp_path)  # Relative paths, as a launcher's relative --workdir gives.
    priors.save_prior('prior', prior)
    # A train_gan workdir (holding prior/) is accepted too.
    loaded = priors.load_prior('.')
    assert loaded.spec == prior.spec and loaded.kind == kind
    z = jax.random.normal(jax.random.key(12), (2, prior.z_dim))
    y = jnp.array([2, 3])
    generate, discriminate = jax.jit(prior.generate), jax.jit(prior.discriminate)
    np.testing.assert_array_equal(
        generate(loaded.variables['generator'], z, y),
        generate(prior.variables['generator'], z, y),
    )
    x = jax.random.uniform(jax.random.key(13), (2, 32, 32, 3))
    chex.assert_trees_all_equal(
        discriminate(loaded.variables['discriminator'], x, y),
        discriminate(prior.variables['discriminator'], x, y),
    )


@pytest.mark.parametrize('kind', KINDS)
def test_grayscale_priors(kind):
    """`channels=1` builds generator and discriminator for one-channel images (traced only:
    shapes, test time)."""
    options = dict(num_classes=NUM_CLASSES, image_size=32, tiny=True, channels=1)

    def build_and_run(key):
        prior = priors.make_prior(kind, **options)
        z = jax.random.normal(key, (2, prior.z_dim))
        y = jnp.array([0, 1])
        images = prior.generate(prior.variables['generator'], z, y)
        return images, prior.discriminate(prior.variables['discriminator'], images, y)

    images, out = jax.eval_shape(build_and_run, jax.random.key(3))
    assert images.shape == (2, 32, 32, 1) and images.dtype == jnp.float32
    assert priors.build_modules(kind, **options)[2]['channels'] == 1
    assert jax.tree.leaves(out)[0].shape[0] == 2


def test_load_prior_errors(tiny, tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        priors.load_prior(missing)
    with pytest.raises(ValueError, match=r'not a prior: no prior\.json'):
        priors.load_prior(str(tmp_path))
    path = str(tmp_path / 'p')
    priors.save_prior(path, tiny['gmi'])
    spec = dict(tiny['gmi'].spec, g_dim=16)
    with open(os.path.join(path, 'prior.json'), 'w') as f:
        json.dump(spec, f)
    with pytest.raises(ValueError, match='does not fit.*shape mismatches'):
        priors.load_prior(path)
    with open(os.path.join(path, 'prior.json'), 'w') as f:
        f.write('{"kind": "gmi"')
    with pytest.raises(ValueError, match='not a valid prior spec'):
        priors.load_prior(path)


def test_make_prior_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown prior kind 'stylegan'"):
        priors.make_prior('stylegan')
    with pytest.raises(ValueError, match='no option'):
        priors.build_modules('gmi', width=3)
    with pytest.raises(ValueError, match='num_classes'):
        priors.build_modules('kedmi', num_classes=0)
    with pytest.raises(ValueError, match='image_size'):
        priors.build_modules('gmi', image_size=48)


# Under JAX_ENABLE_X64=1: load each prior, generate from float32 and float64 latents, and
# compare with the float32 output the parent process computed (as load_classifier works).
_X64 = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from tldmi_jax import priors
assert jax.config.jax_enable_x64
out = {}
for kind, path in json.loads(sys.argv[1]).items():
    prior = priors.load_prior(path)
    assert {str(x.dtype) for x in jax.tree.leaves(prior.variables)} <= {'float32', 'uint32'}
    y = (jnp.arange(2) % prior.num_classes,) if kind == 'plgmi' else ()
    for dtype in (jnp.float32, jnp.float64):
        z = jnp.linspace(-1, 1, 2 * prior.z_dim, dtype=dtype).reshape(2, -1)
        images = prior.generate(prior.variables['generator'], z, *y)
        out[f'{kind}/{dtype.__name__}'] = np.asarray(images, np.float64).tolist()
    # A fresh prior's dtypes, traced (its initialisation compiles nothing: test time).
    fresh = jax.eval_shape(lambda: priors.make_prior(
        kind, num_classes=prior.num_classes, image_size=32, tiny=True).variables)
    assert {str(x.dtype) for x in jax.tree.leaves(fresh)} <= {'float32', 'uint32'}
print(json.dumps(out))
"""


def test_priors_load_and_generate_under_x64(tiny, tmp_path):
    paths = {}
    for kind in KINDS:
        paths[kind] = str(tmp_path / kind)
        priors.save_prior(paths[kind], tiny[kind])
    env = dict(os.environ, JAX_ENABLE_X64='1', PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, '-c', _X64, json.dumps(paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in KINDS:
        prior = tiny[kind]
        y = (jnp.arange(2) % prior.num_classes,) if kind == 'plgmi' else ()
        z = jnp.linspace(-1, 1, 2 * prior.z_dim, dtype=jnp.float32).reshape(2, -1)
        want = np.asarray(prior.generate(prior.variables['generator'], z, *y))
        for dtype in ('float32', 'float64'):
            np.testing.assert_allclose(got[f'{kind}/{dtype}'], want, atol=1e-5)


@pytest.mark.parametrize(
    'hw,cin,cout,k,s,p',
    # The last: s * s * cin = PHASES_FROM_CHANNELS, the input gradient runs per phase.
    [(8, 4, 6, 5, 2, 2), (9, 3, 5, 4, 2, 1), (7, 2, 3, 3, 3, 1), (6, 128, 3, 5, 2, 2)],
)
def test_strided_conv_equals_lax_with_first_and_second_derivatives(hw, cin, cout, k, s, p):
    """`layers.strided_conv` (sub-pixel input gradient) against plain `lax.conv_general_dilated`:
    values, both gradients, and the gradient of an input-gradient norm (WGAN-GP's penalty)."""
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, hw, hw, cin), jnp.float32)
    w = jnp.asarray(rng.randn(k, k, cin, cout), jnp.float32)
    pads = ((p, p), (p, p))

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=layers._DN)

    def ours(x, w):
        return layers.strided_conv(x, w, s, p)

    def penalty(f, x, w):
        def gp(w):
            g = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, w))))(x)
            return jnp.sum((jnp.sqrt(jnp.sum(g**2, axis=(1, 2, 3))) - 1.0) ** 2)

        return jax.grad(gp)(w)

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x, w):
        loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
        return [(f(x, w), jax.grad(loss(f), (0, 1))(x, w), penalty(f, x, w)) for f in (ours, plain)]

    (value, grads, gp), (value_ref, grads_ref, gp_ref) = outputs(x, w)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gp, gp_ref, rtol=1e-4, atol=1e-4)


def _lhs_dilated_convs(jaxpr) -> int:
    """Convolutions with an input (lhs) dilation, nested jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'conv_general_dilated':
            count += any(d > 1 for d in eqn.params['lhs_dilation'])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _lhs_dilated_convs(sub)
    return count


def test_strided_conv_penalty_through_two_layers_has_no_lhs_dilated_conv():
    """The gradient penalty of two stacked strided convolutions, differentiated with respect
    to both kernels: equal to plain `lax`, and without the lhs-dilated convolution (XLA:CPU's
    slow path) that differentiating the first layer's forward would otherwise bring back."""
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(2, 16, 16, 3), jnp.float32)
    # float32 products on the host, as jnp's (no eager op to compile).
    w1 = jnp.asarray(np.float32(rng.randn(5, 5, 3, 4)) * np.float32(0.2))
    w2 = jnp.asarray(np.float32(rng.randn(5, 5, 4, 6)) * np.float32(0.2))

    def plain(x, w):
        pads = ((2, 2), (2, 2))
        return jax.lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=layers._DN)

    def ours(x, w):
        return layers.strided_conv(x, w, 2, 2)

    def penalty(conv):
        def gp(ws):
            critic = lambda a: jnp.sum(jnp.tanh(conv(jnp.tanh(conv(a, ws[0])), ws[1])))  # noqa: E731
            g = jax.grad(critic)(x)
            return jnp.sum((jnp.sqrt(jnp.sum(g**2, axis=(1, 2, 3))) - 1.0) ** 2)

        return jax.grad(gp)

    @jax.jit  # One program for both penalties (test time).
    def outputs(ws):
        return penalty(ours)(ws), penalty(plain)(ws)

    got, want = outputs((w1, w2))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert _lhs_dilated_convs(jax.make_jaxpr(penalty(plain))((w1, w2)).jaxpr) > 0
    assert _lhs_dilated_convs(jax.make_jaxpr(penalty(ours))((w1, w2)).jaxpr) == 0


@pytest.mark.parametrize(
    'shape,taps,up,padding,gain',
    [
        ((2, 9, 9, 4), (1, 3, 3, 1), 1, (1, 1), 4.0),  # After an up-sampling convolution.
        ((2, 8, 8, 3), (1, 3, 3, 1), 2, (2, 1), 4.0),  # upsample2d of the ToRGB skip.
        ((1, 7, 6, 2), (1, 2, 5), 2, (0, 3), 1.5),  # Asymmetric taps, non-square input.
    ],
)
def test_upfirdn2d_equals_the_grouped_convolution_to_second_order(shape, taps, up, padding, gain):
    """The separable `upfirdn2d` (two 1-D passes, custom gradient) against the per-channel
    2-D convolution it replaced: values, gradients and the gradient of a gradient norm."""

    def grouped(x):
        p0, p1 = padding
        f = ops.fir_filter(taps, gain)[::-1, ::-1]
        kernel = jnp.asarray(np.tile(f[:, :, None, None], (1, 1, 1, x.shape[-1])), x.dtype)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            ((p0, p1 + up - 1), (p0, p1 + up - 1)),
            lhs_dilation=(up, up),
            dimension_numbers=layers._DN,
            feature_group_count=x.shape[-1],
        )

    def separable(x):
        return ops.upfirdn2d(x, taps, up, padding, gain)

    def grad(f):
        return jax.grad(lambda a: jnp.sum(jnp.sin(f(a))))

    def penalty(f):
        return jax.grad(lambda a: jnp.sum(grad(f)(a) ** 2))

    @jax.jit  # One program for every comparison below (test time).
    def outputs(x):
        return [(f(x), grad(f)(x), penalty(f)(x)) for f in (separable, grouped)]

    x = jnp.asarray(np.random.RandomState(0).randn(*shape), jnp.float32)
    (value, g, gp), (value_ref, g_ref, gp_ref) = outputs(x)
    assert value.shape == value_ref.shape
    np.testing.assert_allclose(value, value_ref, atol=1e-5)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)
    np.testing.assert_allclose(gp, gp_ref, atol=1e-4)
