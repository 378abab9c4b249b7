"""Builders and get_source on tiny generated copies of the real datasets' layouts."""

import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from tldmi_jax import data
from tldmi_jax.data import builders, celeba_mi, facescrub_mi, fashion_mnist_mi, testing

BOX = testing.CELEBA_BOX
_write_lines = testing.write_lines


def _write_celeba(root, names=('trainset.txt', 'testset.txt', 'ganset.txt'), split_dir=''):
    """12 images: 6 train (3 classes x 2), 3 test, 3 public (one greyscale)."""
    return testing.write_fake_celeba(root, names=names, split_dir=split_dir)


@pytest.fixture
def celeba_root(tmp_path):
    root = str(tmp_path / 'celeba')
    _write_celeba(root)
    return root


def _by_name(source):
    return dict(zip(source.filenames, source.labels.tolist(), strict=True))


def test_celeba_splits(celeba_root, tmp_path):
    data_dir = str(tmp_path / 'tfds')
    train = data.get_source('celeba_mi', 'private_train', root=celeba_root, data_dir=data_dir)
    test = data.get_source('celeba_mi', 'private_test', root=celeba_root, data_dir=data_dir)
    public = data.get_source('celeba_mi', 'public', root=celeba_root, data_dir=data_dir)
    assert (len(train), len(test), len(public)) == (6, 3, 3)
    assert train.num_classes == test.num_classes == public.num_classes == 3
    assert _by_name(train) == {f'{i:06d}.jpg': i % 3 for i in range(6)}
    assert _by_name(test) == {f'{i:06d}.jpg': i % 3 for i in range(6, 9)}
    assert _by_name(public) == {'000009.jpg': -1, '000010.jpg': -1, '000011.jpg': -1}
    for source in (train, test, public):
        for i in range(len(source)):
            example = source[i]
            assert example['image'].shape == (218, 178, 3)
            assert example['image'].dtype == np.uint8
            assert example['label'] == source.labels[i]
    # The record of an image holds that image (background value 10 * index).
    name = train.filenames[0]
    assert abs(int(train[0]['image'][0, 0, 0]) - 10 * int(name[:6])) <= 2


def test_celeba_crop_fills_output(celeba_root, tmp_path):
    train = data.get_source(
        'celeba_mi', 'private_train', root=celeba_root, data_dir=str(tmp_path / 'tfds')
    )
    batch = data.load_all(train, np.arange(len(train)), data.get_preprocess('celeba_mi', 64))
    assert batch['image'].shape == (6, 64, 64, 3)
    assert batch['image'].dtype == np.float32
    assert batch['image'].max() <= 1.0
    # The crop is exactly the bright square: a box off by one pixel would darken an edge.
    assert batch['image'].min() > 0.95


def test_celeba_toolbox_names(tmp_path):
    root = str(tmp_path / 'celeba')
    names = ('private_train.txt', 'private_test.txt', 'public.txt')
    _write_celeba(root, names=names, split_dir='split_files')
    source = data.get_source('celeba_mi', 'private_test', root=root, data_dir=str(tmp_path / 't'))
    assert len(source) == 3


def test_prepared_once(celeba_root, tmp_path, monkeypatch):
    calls = []
    original = celeba_mi.CelebaMi._generate_examples

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(celeba_mi.CelebaMi, '_generate_examples', counting)
    data_dir = str(tmp_path / 'tfds')
    first = data.get_source('celeba_mi', 'private_train', root=celeba_root, data_dir=data_dir)
    assert len(calls) == 3  # one per split
    again = data.get_source('celeba_mi', 'public', root=celeba_root, data_dir=data_dir)
    # Once prepared, the manual directory is no longer needed.
    without_root = data.get_source('celeba_mi', 'private_train', data_dir=data_dir)
    assert len(calls) == 3
    assert len(again) == 3
    # Labels and filenames are read once and then kept next to the prepared files.
    names = _by_name(first)
    assert os.path.isfile(os.path.join(first.builder.data_dir, 'index-private_train.npz'))
    assert _by_name(without_root) == names


def test_no_temp_dirs_left(celeba_root, tmp_path, monkeypatch):
    # TFDS makes an empty temp directory for every builder it opens unprepared and never
    # removes it; preparing must leave the system temp directory as it found it.
    scratch = tmp_path / 'system_tmp'
    scratch.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
    data_dir = str(tmp_path / 'tfds')
    source = data.get_source('celeba_mi', 'public', root=celeba_root, data_dir=data_dir)
    assert len(source) == 3
    assert os.listdir(scratch) == []
    assert tempfile.gettempdir() == str(scratch)


def _drop(name):
    return lambda root: os.remove(os.path.join(root, name))


def _append(name, line):
    def mutate(root):
        with open(os.path.join(root, name), 'a') as f:
            f.write(line + '\n')

    return mutate


def _corrupt(root):
    with open(os.path.join(root, 'img_align_celeba', '000004.jpg'), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 this is not a jpeg')


def _empty_class(root):
    _write_lines(os.path.join(root, 'trainset.txt'), ['000000.jpg 0', '000001.jpg 2'])


def _remove_image_dir(root):
    for name in os.listdir(os.path.join(root, 'img_align_celeba')):
        os.remove(os.path.join(root, 'img_align_celeba', name))
    os.rmdir(os.path.join(root, 'img_align_celeba'))


@pytest.mark.parametrize(
    'mutate, pattern',
    [
        (_drop('trainset.txt'), r'trainset\.txt or private_train\.txt'),
        (_drop('ganset.txt'), r'ganset\.txt or public\.txt'),
        (_append('trainset.txt', '000007.jpg 1 extra'), r'trainset\.txt, line 7: .*extra'),
        (_append('testset.txt', '000007.jpg x'), r'testset\.txt, line 5'),
        (_append('trainset.txt', '000007.jpg -3'), r'trainset\.txt, line 7'),
        (_append('trainset.txt', '000000.jpg 0'), r'000000\.jpg repeats line 1'),
        (_append('trainset.txt', '099999.jpg 1'), r'099999\.jpg does not exist'),
        (_append('testset.txt', '000010.jpg 5'), r'label 5, but private_train has only 3'),
        (_corrupt, r'000004\.jpg does not decode'),
        (_empty_class, r'class 1 has no images'),
        (_remove_image_dir, r'img_align_celeba'),
    ],
)
def test_celeba_errors(celeba_root, tmp_path, mutate, pattern):
    mutate(celeba_root)
    with pytest.raises(data.DataError, match=pattern):
        data.get_source('celeba_mi', 'private_train', root=celeba_root, data_dir=str(tmp_path))


def test_missing_root(tmp_path):
    with pytest.raises(data.DataError, match=r'nowhere does not exist'):
        data.get_source(
            'celeba_mi', 'public', root=str(tmp_path / 'nowhere'), data_dir=str(tmp_path)
        )
    with pytest.raises(data.DataError, match=r'ffhq_mi is not prepared .* no manual directory'):
        data.get_source('ffhq_mi', 'public', data_dir=str(tmp_path))


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match=r'unknown dataset .*celeba_mi, ffhq_mi'):
        data.get_source('celeba', 'public')
    with pytest.raises(ValueError, match=r"no split 'train'; valid: private_train"):
        data.get_source('celeba_mi', 'train')
    with pytest.raises(TypeError, match='image_size'):
        data.get_source('celeba_mi', 'public', image_size=3)
    assert set(data.DATASETS) == {
        'celeba_mi',
        'ffhq_mi',
        'facescrub_mi',
        'stanford_dogs_mi',
        'fashion_mnist_mi',
        'synthetic',
    }


# ----------------------------------------------------------------------------- ffhq


def _write_ffhq(root, count=5):
    names = []
    for i in range(count):
        sub = os.path.join(root, 'thumbnails128x128', f'{(i // 3) * 1000:05d}')
        os.makedirs(sub, exist_ok=True)
        image = np.full((128, 128, 3), 20 * i, np.uint8)
        image[20:108, 20:108] = 250
        Image.fromarray(image).save(os.path.join(sub, f'{i:05d}.png'))
        names.append(f'{i:05d}.png')
    return names


def test_ffhq(tmp_path):
    root = str(tmp_path / 'ffhq')
    _write_ffhq(root)
    source = data.get_source('ffhq_mi', 'public', root=root, data_dir=str(tmp_path / 'a'))
    assert len(source) == 5 and source.num_classes == 0
    assert sorted(source.filenames)[-1] == os.path.join('01000', '00004.png')
    assert set(source.labels.tolist()) == {-1}
    image = data.get_preprocess('ffhq', 64)(source[0]['image'])
    assert image.shape == (64, 64, 3) and image.min() > 0.95

    # With a list file only the listed images are used (basenames or relative paths).
    _write_lines(os.path.join(root, 'ganset_ffhq.txt'), ['00001.png', '01000/00003.png'])
    listed = data.get_source('ffhq_mi', 'public', root=root, data_dir=str(tmp_path / 'b'))
    assert sorted(listed.filenames) == ['00000/00001.png', '01000/00003.png']

    _write_lines(os.path.join(root, 'ganset_ffhq.txt'), ['00001.png', '77777.png'])
    with pytest.raises(data.DataError, match=r'lists 77777\.png'):
        data.get_source('ffhq_mi', 'public', root=root, data_dir=str(tmp_path / 'c'))


# ----------------------------------------------------------------------------- facescrub


def _write_facescrub(root, layout):
    """2 actors + 2 actresses (or 4 flat identities), 4-6 faces each; one greyscale PNG."""
    identities = {
        'actors': ['Bob_B', 'Al_A'],
        'actresses': ['Cy_C', 'Ann_A'],
    }
    paths = []
    for group, names in identities.items():
        for n, name in enumerate(names):
            folder = (
                os.path.join(root, group, 'faces', name)
                if layout == 'grouped'
                else os.path.join(root, name)
            )
            os.makedirs(folder)
            for k in range(4 + n + (group == 'actresses')):
                path = os.path.join(folder, f'{name}_{k}.jpeg')
                Image.fromarray(np.full((64, 64, 3), 40 * k, np.uint8)).save(path)
                paths.append(path)
            Image.fromarray(np.full((50, 40), 99, np.uint8)).save(os.path.join(folder, 'g.png'))
            with open(os.path.join(folder, 'notes.txt'), 'w') as f:
                f.write('not an image')


@pytest.mark.parametrize('layout', ['grouped', 'flat'])
def test_facescrub(tmp_path, layout):
    root = str(tmp_path / 'facescrub')
    _write_facescrub(root, layout)
    data_dir = str(tmp_path / 'tfds')
    train = data.get_source('facescrub_mi', 'train', root=root, data_dir=data_dir)
    test = data.get_source('facescrub_mi', 'test', root=root, data_dir=data_dir)
    assert train.num_classes == 4
    total = 5 + 6 + 6 + 7
    assert (len(train), len(test)) == (int(0.9 * total), total - int(0.9 * total))
    if layout == 'grouped':  # PPA: sorted actors, then sorted actresses
        order = ['Al_A', 'Bob_B', 'Ann_A', 'Cy_C']
    else:  # one sorted list
        order = ['Al_A', 'Ann_A', 'Bob_B', 'Cy_C']
    labels = {**_by_name(train), **_by_name(test)}
    assert len(labels) == total
    for filename, label in labels.items():
        assert order[label] == os.path.basename(os.path.dirname(filename))

    # The split is PPA's: np.random.seed(42); np.random.shuffle(list(range(N))); 90/10.
    folders = facescrub_mi.identity_folders(root)
    ordered = [
        os.path.relpath(os.path.join(folder, f), root)
        for _, folder in folders
        for f in builders.list_images(folder)
    ]
    indices = list(range(total))
    np.random.seed(42)
    np.random.shuffle(indices)
    assert set(train.filenames) == {ordered[i] for i in indices[: int(0.9 * total)]}
    for i in range(len(test)):
        assert test[i]['image'].shape[-1] == 3


def test_facescrub_empty_identity(tmp_path):
    root = str(tmp_path / 'facescrub')
    _write_facescrub(root, 'grouped')
    os.makedirs(os.path.join(root, 'actresses', 'faces', 'Zed_Z'))
    with pytest.raises(data.DataError, match=r'class 4 \(Zed_Z\) has no images'):
        data.get_source('facescrub_mi', 'train', root=root, data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- fashion-mnist


_idx_bytes = testing.idx_bytes
_write_fashion = testing.write_fake_fashion_mnist


def test_fashion_mnist(tmp_path):
    root = str(tmp_path / 'fm')
    arrays = _write_fashion(root)
    sources = {
        s: data.get_source('fashion_mnist_mi', s, root=root)
        for s in data.DATASETS['fashion_mnist_mi']
    }
    train, test, public = sources['private_train'], sources['private_test'], sources['public']
    assert (len(train), len(test), len(public)) == (15, 5, 15)
    assert train.num_classes == 5
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(public.labels.tolist()) == {5, 6, 7, 8, 9}
    images, labels = arrays['train']
    np.testing.assert_array_equal(train.images[..., 0], images[labels < 5])
    np.testing.assert_array_equal(public.images[..., 0], images[labels >= 5])
    np.testing.assert_array_equal(test.images[..., 0], arrays['t10k'][0][arrays['t10k'][1] < 5])
    example = train[3]
    assert example['image'].shape == (28, 28, 1) and example['image'].dtype == np.uint8
    assert example['label'] == labels[labels < 5][3]
    out = data.get_preprocess('fashion_mnist', 32)(example['image'])
    assert out.shape == (32, 32, 1) and 0.0 <= out.min() and out.max() <= 1.0


def test_fashion_mnist_errors(tmp_path):
    root = str(tmp_path / 'fm')
    _write_fashion(root)
    os.remove(os.path.join(root, 't10k-labels-idx1-ubyte'))
    with pytest.raises(
        data.DataError, match=r't10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz'
    ):
        data.get_source('fashion_mnist_mi', 'private_test', root=root)
    with open(os.path.join(root, 't10k-labels-idx1-ubyte'), 'wb') as f:
        f.write(b'\0\0\x0d\x01\0\0\0\x05')
    with pytest.raises(data.DataError, match=r't10k-labels-idx1-ubyte has no unsigned-byte'):
        data.get_source('fashion_mnist_mi', 'public', root=root)
    with pytest.raises(data.DataError, match=r'does not exist'):
        data.get_source('fashion_mnist_mi', 'public', root=str(tmp_path / 'none'))


def test_fashion_mnist_default_dir():
    assert data.default_fashion_mnist_dir() == fashion_mnist_mi.DEFAULT_FASHION_MNIST_DIR
    if not os.path.isdir(data.DEFAULT_FASHION_MNIST_DIR):
        pytest.skip('dataset-fashion-mnist is not installed')
    public = data.get_source('fashion_mnist_mi', 'public')
    assert len(public) == 30000 and public[0]['image'].shape == (28, 28, 1)
    assert len(data.get_source('fashion_mnist_mi', 'private_test')) == 5000
