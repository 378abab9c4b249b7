"""Fake copies of the real datasets' on-disk layouts, for tests and dry runs.

`write_fake_celeba` writes aligned-CelebA-sized JPEGs and the MI split files;
`write_fake_fashion_mnist` writes the four idx files. Both are small and deterministic.
"""

import gzip
import os

import numpy as np
from PIL import Image

# The original's CelebA crop box: top 55, left 35, 108x108 of the 218x178 aligned image.
CELEBA_BOX = (slice(55, 163), slice(35, 143))


def celeba_image(value: int, box_value: int = 255) -> np.ndarray:
    """A 218x178 RGB image of `value` with `box_value` exactly on the crop box."""
    image = np.full((218, 178, 3), value, dtype=np.uint8)
    image[CELEBA_BOX] = box_value
    return image


def write_lines(path: str, lines: list[str]) -> None:
    """Writes `lines`, each ending in a newline."""
    with open(path, 'w') as f:
        f.write(''.join(line + '\n' for line in lines))


def write_fake_celeba(
    root: str,
    *,
    num_classes: int = 3,
    train_per_class: int = 2,
    test_per_class: int = 1,
    num_public: int = 3,
    names: tuple[str, str, str] = ('trainset.txt', 'testset.txt', 'ganset.txt'),
    split_dir: str = '',
    class_colours: bool = False,
) -> tuple[dict[str, int], dict[str, int]]:
    """Writes `img_align_celeba/` and the three split files under `root`.

    Images are numbered train first (class i % num_classes), then test, then public. The
    last public image is greyscale, and public lines alternate with and without a label.
    With `class_colours`, the crop box of a class-k image has a class-specific colour (so a
    classifier can learn the classes); otherwise image i is uniformly 10 * i with a white box.

    Returns:
      `(train, test)`: filename -> label.
    """
    image_dir = os.path.join(root, 'img_align_celeba')
    os.makedirs(image_dir)
    n_train, n_test = num_classes * train_per_class, num_classes * test_per_class
    total = n_train + n_test + num_public
    for i in range(total):
        label = i % num_classes
        box = int(255 * (label + 1) / num_classes) if class_colours else 255
        image = celeba_image((10 * i) % 256, box)
        if class_colours:
            image[CELEBA_BOX[0], CELEBA_BOX[1], label % 3] = 0
        Image.fromarray(image).save(os.path.join(image_dir, f'{i:06d}.jpg'), quality=100)
    if num_public:
        grey = np.full((218, 178), 30, np.uint8)
        Image.fromarray(grey).save(os.path.join(image_dir, f'{total - 1:06d}.jpg'))
    os.makedirs(os.path.join(root, split_dir), exist_ok=True)
    train = {f'{i:06d}.jpg': i % num_classes for i in range(n_train)}
    test = {f'{i:06d}.jpg': i % num_classes for i in range(n_train, n_train + n_test)}
    public = [
        f'{i:06d}.jpg' + (' 0' if k % 2 else '')
        for k, i in enumerate(range(n_train + n_test, total))
    ]
    paths = [os.path.join(root, split_dir, n) for n in names]
    write_lines(paths[0], [f'{k} {v}' for k, v in train.items()])
    write_lines(paths[1], [f'{k} {v}' for k, v in test.items()] + [''])
    write_lines(paths[2], public)
    return train, test


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array in the idx format of (Fashion-)MNIST."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(
    root: str, *, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes train idx files gzipped and t10k idx files raw; classes are learnable.

    Returns:
      `{'train': (images, labels), 't10k': (images, labels)}` as written.
    """
    os.makedirs(root)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28))
    arrays = {}
    for part, per_class, compress in (
        ('train', train_per_class, True),
        ('t10k', test_per_class, False),
    ):
        labels = np.tile(np.arange(10), per_class).astype(np.uint8)
        noise = rng.integers(-20, 21, size=(len(labels), 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        arrays[part] = (images, labels)
        for kind, array, dims in (('images', images, 3), ('labels', labels, 1)):
            name = f'{part}-{kind}-idx{dims}-ubyte'
            payload = idx_bytes(array)
            if compress:
                with gzip.open(os.path.join(root, name + '.gz'), 'wb') as f:
                    f.write(payload)
            else:
                with open(os.path.join(root, name), 'wb') as f:
                    f.write(payload)
    return arrays
