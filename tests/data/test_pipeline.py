"""Preprocessing, the resumable input pipeline and the synthetic dataset."""

import jax
import numpy as np
import pytest

from tldmi_jax import data
from tldmi_jax.data import pipeline, preprocess


def _index_source(n=23):
    """Record i is a 2x2x1 image filled with i and label i % 3."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1))
    return data.ArraySource(np.ascontiguousarray(images), np.arange(n) % 3, num_classes=3)


def _as_float(image):
    return image.astype(np.float32)


def _ids(batch):
    return batch['image'][:, 0, 0, 0].astype(int).tolist()


def _run(source, indices=None, **kwargs):
    indices = np.arange(len(source)) if indices is None else indices
    options = dict(preprocess=_as_float, seed=0, epoch=0, shuffle=True, drop_remainder=False)
    options.update(kwargs)
    batch_size = options.pop('batch_size', 5)
    return list(data.epoch_batches(source, indices, batch_size, **options))


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    'name, shape, box',
    [
        ('celeba', (218, 178), (55, 35, 108, 108)),
        ('ffhq_mi', (128, 128), (20, 20, 88, 88)),
        ('facescrub', (64, 64), (5, 5, 54, 54)),
    ],
)
@pytest.mark.parametrize('size', [64, 112])
def test_crop_box(name, shape, box, size):
    top, left, height, width = box
    image = np.zeros(shape + (3,), np.uint8)
    image[top : top + height, left : left + width] = 255
    out = data.get_preprocess(name, size)(image)
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, 1.0)
    # One more row of the box's surroundings would show up in the output.
    image[top + height - 1] = 0
    assert data.get_preprocess(name, size)(image).min() < 0.9


def test_preprocess_matches_pil_bilinear():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    crop = Image.fromarray(image).crop((35, 55, 143, 163)).resize((64, 64), Image.BILINEAR)
    expected = np.asarray(crop, np.float32) / 255.0
    np.testing.assert_allclose(data.get_preprocess('celeba', 64)(image), expected, atol=1e-6)


def test_preprocess_resizes_other_sizes():
    # A facescrub face that is not 64x64 is resized to 64 first, then cropped.
    out = data.get_preprocess('facescrub', 32)(np.full((100, 80, 3), 128, np.uint8))
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)
    same = data.get_preprocess('synthetic', 16)(np.full((16, 16, 3), 7, np.uint8))
    np.testing.assert_allclose(same, 7 / 255, atol=1e-7)
    with pytest.raises(ValueError, match='valid: celeba'):
        data.get_preprocess('cifar10', 32)


def test_random_flip():
    images = jax.random.uniform(jax.random.key(0), (64, 4, 5, 3))
    flipped = preprocess.random_flip(jax.random.key(1), images)
    same = np.all(np.asarray(flipped == images), axis=(1, 2, 3))
    mirrored = np.all(np.asarray(flipped == images[:, :, ::-1]), axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 16 < mirrored.sum() < 48
    again = preprocess.random_flip(jax.random.key(1), images)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(flipped))


# ----------------------------------------------------------------------------- pipeline


def test_epoch_order_is_a_function_of_seed_and_epoch():
    source = _index_source()
    first = [_ids(b) for b in _run(source)]
    assert [_ids(b) for b in _run(source, num_threads=0)] == first
    assert [_ids(b) for b in _run(source, num_threads=3, prefetch=1)] == first
    assert sorted(sum(first, [])) == list(range(23))
    assert [len(b) for b in first] == [5, 5, 5, 5, 3]
    assert [_ids(b) for b in _run(source, epoch=1)] != first
    assert [_ids(b) for b in _run(source, seed=1)] != first
    expected = np.arange(23)[np.random.default_rng([0, 0]).permutation(23)]
    assert sum(first, []) == expected.tolist()


def test_resume_reproduces_the_tail():
    source = _index_source()
    full = [_ids(b) for b in _run(source, epoch=3)]
    for start in (0, 2, 4, 5):
        assert [_ids(b) for b in _run(source, epoch=3, start_batch=start)] == full[start:]
    with pytest.raises(ValueError, match='start_batch'):
        _run(source, start_batch=6)


def test_batches_drop_remainder_and_dtypes():
    source = _index_source()
    indices = np.arange(3, 20)
    batches = _run(source, indices, shuffle=False, drop_remainder=True, batch_size=4)
    assert [_ids(b) for b in batches] == [list(range(s, s + 4)) for s in (3, 7, 11, 15)]
    assert data.num_batches(17, 4, True) == 4 and data.num_batches(17, 4, False) == 5
    batch = batches[1]
    assert batch['image'].dtype == np.float32 and batch['image'].shape == (4, 2, 2, 1)
    assert batch['label'].dtype == np.int32
    assert batch['label'].tolist() == [i % 3 for i in range(7, 11)]


def test_loader_errors_propagate():
    class Broken:
        num_classes = 1
        labels = np.zeros(4, np.int64)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise data.DataError(f'record {i} is broken')

    with pytest.raises(data.DataError, match='is broken'):
        _run(Broken())


def test_load_all():
    source = _index_source()
    out = data.load_all(source, np.array([4, 1, 9]), _as_float)
    assert _ids(out) == [4, 1, 9] and out['label'].tolist() == [1, 1, 0]


def test_split_validation():
    train, val = data.split_validation(100, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
    again = data.split_validation(100, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert data.split_validation(100, 0.2, seed=4)[1].tolist() != val.tolist()

    labels = np.repeat(np.arange(4), [10, 20, 30, 1])
    train, val = data.split_validation(len(labels), 0.1, seed=0, labels=labels)
    assert np.bincount(labels[val], minlength=4).tolist() == [1, 2, 3, 0]
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    with pytest.raises(ValueError, match='fraction'):
        data.split_validation(10, 1.0, seed=0)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_shaped():
    train = data.get_source('synthetic', 'private_train', num_classes=5, image_size=24)
    again = data.make_synthetic('private_train', num_classes=5, image_size=24)
    np.testing.assert_array_equal(train.images, again.images)
    assert train.images.shape == (5 * 32, 24, 24, 3) and train.num_classes == 5
    assert np.bincount(train.labels).tolist() == [32] * 5
    other = data.make_synthetic('private_train', num_classes=5, image_size=24, seed=1)
    assert not np.array_equal(train.images, other.images)
    public = data.get_source('synthetic', 'public', num_public=20, image_size=16)
    assert len(public) == 20 and set(public.labels.tolist()) == {-1}
    assert public[0]['image'].shape == (16, 16, 3)
    with pytest.raises(ValueError, match='valid: private_train'):
        data.make_synthetic('train')


def test_synthetic_is_learnable():
    options = dict(num_classes=10, image_size=32)
    train = data.make_synthetic('private_train', **options)
    test = data.make_synthetic('private_test', **options)
    x_train = train.images.reshape(len(train), -1).astype(np.float32) / 255
    x_test = test.images.reshape(len(test), -1).astype(np.float32) / 255
    means = np.stack([x_train[train.labels == c].mean(0) for c in range(10)])
    dist = ((x_test[:, None] - means[None]) ** 2).sum(-1)
    accuracy = np.mean(dist.argmin(1) == test.labels)
    assert accuracy > 0.8  # chance is 0.1
    # Not trivially separable either: images of a class differ from each other.
    assert x_train[train.labels == 0].std(0).mean() > 0.03


def test_pad_batch_appends_zero_rows_only_to_a_short_batch():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pipeline.pad_batch(x, 5)
    assert padded.shape == (5, 2) and padded.dtype == x.dtype
    np.testing.assert_array_equal(padded[:3], x)
    np.testing.assert_array_equal(padded[3:], 0)
    assert pipeline.pad_batch(x, 3) is x
