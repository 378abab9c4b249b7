"""Fashion-MNIST with GMI's MNIST model-inversion protocol, read from the idx files.

Splits (GMI, Zhang et al. 2020, section 4.1, applied to Fashion-MNIST):
  private_train: training-set images of classes 0-4, labels 0-4 (30,000 images).
  private_test: t10k images of classes 0-4 (5,000 images).
  public: training-set images of classes 5-9, keeping the original labels 5-9 (30,000).
  public_train / public_test: the public classes as a classification task of their own
    (training-set / t10k images of classes 5-9, labels 0-4), for pre-training on public data.

``num_classes`` is 5 for every split (the target classifier's output size); public labels are
the original classes 5-9, outside that range, for anyone who wants them.

This dataset does not go through TFDS: the four idx files already are uint8 arrays with
random access, the whole set is 47 MB in memory and parses in well under a second, whereas
a TFDS build would have to re-encode all 70,000 images (TFDS encodes arrays with TensorFlow,
so only through PIL) into a second on-disk copy. The source is built in memory from the idx
files and cached per directory for the life of the process.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from tldmi_jax.data import builders

# Where Debian/Ubuntu's ``dataset-fashion-mnist`` package installs the four .gz idx files.
DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
IDX_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
PRIVATE_CLASSES = (0, 1, 2, 3, 4)
PUBLIC_CLASSES = (5, 6, 7, 8, 9)
SPLITS = ('private_train', 'private_test', 'public', 'public_train', 'public_test')
_GZIP_MAGIC = b'\x1f\x8b'
_UBYTE = 0x08


def default_fashion_mnist_dir() -> str:
    """The directory of the idx files installed by ``apt-get install dataset-fashion-mnist``."""
    return DEFAULT_FASHION_MNIST_DIR


def find_idx_file(directory: str, stem: str) -> str:
    """Returns ``directory/stem`` or ``directory/stem.gz``; DataError names both if neither."""
    return builders.find_file([directory], [stem, stem + '.gz'], 'fashion_mnist_mi idx file')


def read_idx(path: str) -> np.ndarray:
    """Reads an idx file of unsigned bytes (raw or gzip, detected by content) as uint8.

    Raises:
      DataError: the file is not an idx ubyte file or its size disagrees with its header.
    """
    with open(path, 'rb') as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise builders.DataError(f'idx file {path} is not valid gzip: {e}') from e
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] != _UBYTE:
        raise builders.DataError(f'idx file {path} has no unsigned-byte idx header')
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise builders.DataError(f'idx file {path} is truncated in its header')
    shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise builders.DataError(
            f'idx file {path} holds {len(data)} bytes but its header {shape} needs {expected}'
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_arrays(directory: str) -> dict[str, np.ndarray]:
    """The four arrays, re-read only when a file's path, size or mtime changes."""
    paths = [find_idx_file(directory, stem) for stem in IDX_FILES.values()]
    stamps = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    return _read_arrays(stamps, directory)


@functools.lru_cache(maxsize=2)
def _read_arrays(stamps: tuple[tuple[str, int, int], ...], directory: str) -> dict:
    arrays = {key: read_idx(path) for key, (path, _, _) in zip(IDX_FILES, stamps, strict=True)}
    for part in ('train', 'test'):
        images, labels = arrays[f'{part}_images'], arrays[f'{part}_labels']
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise builders.DataError(
                f'fashion_mnist_mi: {part} images {images.shape} and labels {labels.shape} in '
                f'{directory} do not match'
            )
        arrays[f'{part}_images'] = images[..., None]
    return arrays


def load_fashion_mnist_mi(split: str, root: str | None = None) -> builders.ArraySource:
    """Returns one split as an in-memory source.

    Args:
      split: 'private_train', 'private_test', 'public', 'public_train' or 'public_test'.
      root: directory holding the four idx files (raw or .gz); None means
        ``default_fashion_mnist_dir()``.

    Returns:
      ArraySource with images uint8 [N, 28, 28, 1], labels int64 [N], num_classes 5.

    Raises:
      DataError: a missing directory or idx file, a malformed idx file, or a private class
        with no training images.
    """
    if split not in SPLITS:
        raise ValueError(f'fashion_mnist_mi has no split {split!r}; valid: {", ".join(SPLITS)}')
    directory = os.path.abspath(os.path.expanduser(root or default_fashion_mnist_dir()))
    builders.require_dir(directory, 'fashion_mnist_mi idx directory')
    arrays = _load_arrays(directory)
    part = 'test' if split.endswith('_test') else 'train'
    images, labels = arrays[f'{part}_images'], arrays[f'{part}_labels'].astype(np.int64)
    classes = PUBLIC_CLASSES if split.startswith('public') else PRIVATE_CLASSES
    keep = np.isin(labels, classes)
    images, labels = images[keep], labels[keep]
    if split in ('public_train', 'public_test'):
        labels = labels - PUBLIC_CLASSES[0]  # A 5-class task of its own.
    if split in ('private_train', 'public_train'):
        builders.check_classes(labels, len(PRIVATE_CLASSES), f'fashion_mnist_mi {split}')
    return builders.ArraySource(
        images, labels, num_classes=len(PRIVATE_CLASSES), name='fashion_mnist_mi'
    )


def main(argv: list[str]) -> int:
    """`python -m tldmi_jax.data.fashion_mnist_mi --check [DIR]`: exit 0 if the data loads."""
    if not argv or argv[0] != '--check':
        print('usage: python -m tldmi_jax.data.fashion_mnist_mi --check [DIR]')
        return 2
    root = argv[1] if len(argv) > 1 else None
    try:
        sizes = {s: len(load_fashion_mnist_mi(s, root)) for s in SPLITS}
    except builders.DataError as e:
        print(e)
        return 1
    print(f'fashion_mnist_mi OK: {sizes}')
    return 0


if __name__ == '__main__':
    import sys

    sys.exit(main(sys.argv[1:]))
