"""Stanford Dogs (stanford_dogs_mi) on a tiny generated copy of the official layout."""

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tldmi_jax import data
from tldmi_jax.data import stanford_dogs_mi

BREEDS = ('n02085620-Chihuahua', 'n02085782-Japanese_spaniel', 'n02086240-Shih-Tzu')
PER_BREED = (7, 6, 7)  # 20 images: 18 train, 2 test.
SIZE = (24, 32)  # Image height, width.
FIRST = f'{BREEDS[0]}/n02085620_0'  # Image 0, whose box leaves the image.


def _annotation(boxes):
    objects = ''.join(
        '<object><name>dog</name><bndbox>'
        f'<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>'
        '</bndbox></object>'
        for x0, y0, x1, y1 in boxes
    )
    return f'<annotation><size><width>{SIZE[1]}</width></size>{objects}</annotation>'


def _write_mat(path, entries):
    names = np.empty((len(entries), 1), dtype=object)
    for i, (entry, _) in enumerate(entries):
        names[i, 0] = entry
    labels = np.array([[label + 1] for _, label in entries], np.float64)  # 1-based, as the files.
    scipy.io.savemat(path, {'annotation_list': names, 'labels': labels})


def _write_dogs(root):
    """The official layout; returns the merged list `[(entry, label), ...]` (train, then test).

    Each image is a distinct grey level with a bright block; image 0's first box reaches past
    the right and bottom edges, and image 1 has two objects (the first one counts).
    """
    entries = []
    for label, (breed, count) in enumerate(zip(BREEDS, PER_BREED, strict=True)):
        os.makedirs(os.path.join(root, 'Images', breed))
        os.makedirs(os.path.join(root, 'Annotation', breed))
        wnid = breed.split('-')[0]
        entries += [(f'{breed}/{wnid}_{k}', label) for k in range(count)]
    for i, (entry, _) in enumerate(entries):
        image = np.full((*SIZE, 3), 10 * i, np.uint8)
        image[4:12, 6:20] = 250
        Image.fromarray(image).save(os.path.join(root, 'Images', f'{entry}.jpg'), quality=100)
        boxes = [(20, 10, 40, 30)] if i == 0 else [(6, 4, 20, 12), (0, 0, 5, 5)]
        with open(os.path.join(root, 'Annotation', entry), 'w') as f:
            f.write(_annotation(boxes))
    # The official lists are not sorted the way ImageFolder walks the folders.
    order = np.random.default_rng(1).permutation(len(entries))
    merged = [entries[i] for i in order]
    _write_mat(os.path.join(root, 'train_list.mat'), merged[:12])
    _write_mat(os.path.join(root, 'test_list.mat'), merged[12:])
    return merged


@pytest.fixture(scope='module')
def dogs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dogs')
    root = str(tmp / 'stanford_dogs')
    merged = _write_dogs(root)
    data_dir = str(tmp / 'tfds')
    sources = {
        (split, cropped): data.get_source(
            'stanford_dogs_mi', split, root=root, data_dir=data_dir, cropped=cropped
        )
        for split in ('train', 'test')
        for cropped in (False, True)
    }
    return merged, sources


def test_order_labels_and_split_are_ppas(dogs):
    merged, sources = dogs
    train, test = sources['train', False], sources['test', False]
    assert (len(train), len(test)) == (18, 2)
    assert train.num_classes == test.num_classes == 3
    # PPA: train_list then test_list; np.random.seed(42); shuffle(range(N)); first 90%.
    indices = list(range(len(merged)))
    np.random.seed(42)
    np.random.shuffle(indices)
    for source, part in ((train, indices[:18]), (test, indices[18:])):
        assert source.filenames == [f'{merged[i][0]}.jpg' for i in part]
        assert source.labels.tolist() == [merged[i][1] for i in part]
        for filename, label in zip(source.filenames, source.labels, strict=True):
            assert BREEDS[label] == filename.split('/')[0]  # The folder's sorted rank.
    # The cropped sources are the same records in the same order.
    assert sources['train', True].labels.tolist() == train.labels.tolist()
    assert sources['test', True].filenames == test.filenames


def test_cropped_is_pils_crop_of_the_first_box(dogs):
    _, sources = dogs
    whole, cropped = sources['train', False], sources['train', True]
    for i in range(len(whole)):
        image, out = whole[i]['image'], cropped[i]['image']
        assert cropped[i]['label'] == whole[i]['label']
        first = whole.filenames[i] == f'{FIRST}.jpg'
        box = (20, 10, 40, 30) if first else (6, 4, 20, 12)
        want = np.asarray(Image.fromarray(image).crop(box))
        np.testing.assert_array_equal(out, want)
        if first:  # 20 x 20 box on a 32 x 24 image: zeros past the edges.
            assert out.shape == (20, 20, 3) and not out[14:].any() and not out[:, 12:].any()
        else:  # Exactly the bright block.
            assert out.shape == (8, 14, 3) and out.min() > 230


def test_preprocess_resizes_as_ppa(dogs):
    _, sources = dogs
    image = sources['test', False][0]['image']
    out = data.get_preprocess('stanford_dogs_mi', 16)(image)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32  # Aspect ratio not kept.
    want = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(out, want, atol=1e-6)
    # FaceScrub at 224 px (PPA): the shorter side to the size, then the centre square.
    face = np.zeros((40, 30, 3), np.uint8)
    face[5:35] = 200
    out = data.get_preprocess('facescrub_ppa', 30)(face)
    np.testing.assert_allclose(out, 200 / 255, rtol=1e-6)  # The middle 30 x 30 of 40 x 30.
    assert data.get_preprocess('facescrub_ppa', 15)(face).shape == (15, 15, 3)


def _remove(relpath):
    return lambda root: os.remove(os.path.join(root, relpath))


def _bad_box(root):
    entry = sorted(os.listdir(os.path.join(root, 'Annotation', BREEDS[1])))[0]
    with open(os.path.join(root, 'Annotation', BREEDS[1], entry), 'w') as f:
        f.write(_annotation([(5, 5, 5, 9)]))


@pytest.mark.parametrize(
    'mutate, pattern',
    [
        (_remove('train_list.mat'), r'list file: no file named train_list\.mat in '),
        (_remove('test_list.mat'), r'no file named test_list\.mat'),
        (_remove(f'Annotation/{BREEDS[2]}/n02086240_3'), r'annotation file .*n02086240_3 does'),
        (_remove(f'Images/{BREEDS[0]}/n02085620_4.jpg'), r'n02085620_4\.jpg does not exist'),
        (_bad_box, r'empty box \(5, 5, 5, 9\)'),
    ],
    ids=['train_list', 'test_list', 'annotation', 'image', 'empty_box'],
)
def test_bad_files_fail_with_one_line(tmp_path, mutate, pattern):
    root = str(tmp_path / 'dogs')
    _write_dogs(root)
    mutate(root)
    with pytest.raises(data.DataError, match=pattern):
        data.get_source('stanford_dogs_mi', 'train', root=root, data_dir=str(tmp_path / 'tfds'))


def test_missing_root_and_unknown_option(tmp_path):
    with pytest.raises(data.DataError, match=r'nowhere does not exist'):
        data.get_source(
            'stanford_dogs_mi', 'test', root=str(tmp_path / 'nowhere'), data_dir=str(tmp_path)
        )
    with pytest.raises(data.DataError, match=r'image folder Images/'):
        os.makedirs(tmp_path / 'empty' / 'Annotation')
        data.get_source(
            'stanford_dogs_mi', 'test', root=str(tmp_path / 'empty'), data_dir=str(tmp_path)
        )
    with pytest.raises(TypeError, match='stanford_dogs_mi takes only cropped, got crop'):
        data.get_source('stanford_dogs_mi', 'test', crop=True)
    assert stanford_dogs_mi.crop(np.ones((2, 3, 1), np.uint8), (-1, 0, 2, 1)).tolist() == [
        [[0], [1], [1]]
    ]
