"""Feature extraction: PIL-equal resizing, padded batches, streaming, cache, range mapping."""

import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tldmi_jax import classifiers, data
from tldmi_jax.evaluation import features


@pytest.mark.parametrize('src, dst', [(16, 28), (28, 16)])
def test_resize_equals_pil_bilinear(src, dst):
    image = np.random.default_rng(0).uniform(size=(src, src)).astype(np.float32)
    pil = np.asarray(Image.fromarray(image, mode='F').resize((dst, dst), Image.BILINEAR))
    ours = np.asarray(classifiers.resize(jnp.asarray(image)[None, :, :, None], dst))[0, :, :, 0]
    np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_run_batched_pads_to_one_shape():
    seen = []

    def fn(x):
        seen.append(x.shape)
        return x.sum(axis=(1, 2, 3)), x[:, 0, 0, :]

    images = np.random.default_rng(0).uniform(size=(7, 2, 2, 3)).astype(np.float32)
    sums, corner = classifiers.run_batched(fn, images, 3)
    assert seen == [(3, 2, 2, 3)] * 3
    np.testing.assert_allclose(sums, images.sum(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(corner, images[:, 0, 0, :])


def test_run_on_source_streams_in_order():
    source = data.get_source(
        'synthetic', 'private_train', num_classes=3, image_size=8, train_per_class=3
    )
    prep = data.get_preprocess('synthetic', 8)
    indices = np.array([7, 1, 4, 0, 8])
    (means,), labels = features.run_on_source(
        lambda x: (x.mean(axis=(1, 2, 3)),), source, indices, prep, batch_size=2
    )
    direct = data.load_all(source, indices, prep)
    np.testing.assert_allclose(means, direct['image'].mean(axis=(1, 2, 3)), rtol=1e-6)
    assert labels.tolist() == direct['label'].tolist()


def test_cache_and_hashes(tmp_path):
    cache = features.FeatureCache(str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {'features': np.arange(3.0)}

    key = {'model': 'a', 'data': {'split': 'x'}}
    first = cache.get_or_compute('eval', key, compute)
    second = cache.get_or_compute('eval', dict(key), compute)
    np.testing.assert_array_equal(first['features'], second['features'])
    assert len(calls) == 1
    cache.get_or_compute('eval', {**key, 'model': 'b'}, compute)
    assert len(calls) == 2
    params = {'params': {'w': np.ones(3, np.float32)}}
    changed = {'params': {'w': np.array([1, 1, 2], np.float32)}}
    assert classifiers.variables_hash(params) == classifiers.variables_hash(params)
    assert classifiers.variables_hash(params) != classifiers.variables_hash(changed)


def test_cache_after_a_kill_mid_write(tmp_path):
    """A killed write leaves only a temporary file, never read; a damaged file is recomputed."""
    cache = features.FeatureCache(str(tmp_path))
    key = {'model': 'a'}
    path = cache.path('eval', key)
    # What a kill inside `np.savez` leaves: a partial temporary file beside the cache entry.
    with open(os.path.join(tmp_path, f'.{os.path.basename(path)}.x1.tmp.npz'), 'wb') as f:
        f.write(b'PK\x03\x04 partial')
    assert cache.load('eval', key) is None
    cache.save('eval', key, {'features': np.arange(4.0)})
    with open(path, 'r+b') as f:  # Damaged outside the library (e.g. a full disk).
        f.truncate(20)
    calls = []
    out = cache.get_or_compute('eval', key, lambda: calls.append(1) or {'features': np.ones(2)})
    assert calls == [1] and out['features'].tolist() == [1.0, 1.0]
    assert cache.load('eval', key)['features'].tolist() == [1.0, 1.0]


class _Probe(nn.Module):
    """Returns its (already resized and mapped) input as the features."""

    IMAGE_SIZE = 2

    @nn.compact
    def __call__(self, x, train=False):
        return x.reshape(len(x), -1), x[:, 0, 0, :]


@pytest.mark.parametrize('original', [False, True])
def test_inception_input_mapping(original):
    x = np.full((1, 2, 2, 3), 0.2, np.float32)
    (out,) = features.inception_fn(_Probe(), {}, original_range_mapping=original)(x)
    # Standard: 2x - 1. Original: uint8((x * .5 + .5) * 255) / 255 first (x -> [0.5, 1]).
    expected = 2 * (np.floor((0.2 * 0.5 + 0.5) * 255) / 255) - 1 if original else 2 * 0.2 - 1
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    (grey,) = features.inception_fn(_Probe(), {}, original_range_mapping=original)(x[..., :1])
    np.testing.assert_allclose(np.asarray(grey), np.asarray(out), atol=1e-6)


class _FaceProbe(nn.Module):
    """Returns its (already resized and mapped) input as the embedding."""

    IMAGE_SIZE = 2

    @nn.compact
    def __call__(self, x, train=False):
        return x.reshape(len(x), -1)


@pytest.mark.parametrize(
    'mapping, expected',
    [('ppa', 2 * 0.2 - 1), ('fixed_standardization', (0.2 * 255 - 127.5) / 128)],
)
def test_face_input_mapping_and_resize(mapping, expected):
    x = np.full((1, 4, 4, 3), 0.2, np.float32)  # Resized 4 -> 2 (a constant stays constant).
    (out,) = features.face_fn(_FaceProbe(), {}, input_mapping=mapping)(x)
    assert out.shape == (1, 2 * 2 * 3)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    with pytest.raises(ValueError, match='config.face_model.input_mapping'):
        features.face_fn(_FaceProbe(), {}, input_mapping='prewhiten')
