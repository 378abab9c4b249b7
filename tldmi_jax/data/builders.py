"""Shared machinery of the model-inversion datasets: errors, sources and the TFDS base builder.

Every image dataset (``celeba_mi``, ``ffhq_mi``, ``facescrub_mi``) is a
``tfds.core.GeneratorBasedBuilder`` written to ``array_record`` files and read back with
``builder.as_data_source(split)``; this is the only TFDS path that works without TensorFlow.
Images are handed to ``tfds.features.Image`` as file paths (TFDS copies the encoded bytes),
or, for the rare file that is not plain RGB, as a PIL image that TFDS re-encodes with PIL.
Preparation reads only the local manual directory and never downloads.

Each builder checks its inputs before TFDS writes anything (``_split_generators`` runs
eagerly), so a bad input fails early with a one-line :class:`DataError`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from tldmi_jax.utils import atomic, npz

# Lower-cased suffixes accepted as images (torchvision's ImageFolder list).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
PUBLIC_LABEL = -1
_CHECK_THREADS = 8
_LABEL_CHUNK = 1024


class DataError(ValueError):
    """A dataset's local files are missing or malformed; the message names what and where."""


class Source(Protocol):
    """Random access to one split: ``source[i] -> {'image': uint8 [H, W, C], 'label': int}``."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @property
    def labels(self) -> np.ndarray: ...


class ArraySource:
    """A split held in memory as a uint8 ``[N, H, W, C]`` array and int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str = ''):
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f'need uint8 [N, H, W, C] images, got {images.dtype} {images.shape}')
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels')
        self._images = images
        self._labels = labels
        self.num_classes = int(num_classes)
        self.name = name

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self))
        return {'image': self._images[index], 'label': int(self._labels[index])}

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def images(self) -> np.ndarray:
        return self._images

    def __repr__(self) -> str:
        return f'ArraySource({self.name!r}, n={len(self)}, num_classes={self.num_classes})'


class TfdsSource:
    """One split of a prepared array_record dataset, decoded to numpy on access.

    ``labels`` and ``filenames`` are read once, lazily, without decoding any image.
    Reads are thread-safe, so the input pipeline may call ``__getitem__`` from a thread pool.
    """

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        self.builder = builder
        self.split = split
        self.name = builder.name
        self.num_classes = int(builder.info.metadata.get('num_classes', 0))
        self._data = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._data[_check_index(index, len(self))]
        return {'image': record['image'], 'label': int(record['label'])}

    @functools.cached_property
    def _index(self) -> tuple[np.ndarray, list[str]]:
        # Reading every record costs seconds for the real splits (the image bytes are read,
        # though not decoded), so the result is kept next to the prepared files. Those files
        # never change once written; TFDS re-prepares into a fresh directory.
        cache = os.path.join(os.fspath(self.builder.data_dir), f'index-{self.split}.npz')
        stored = npz.load_cache(cache, 'dataset index') or {}  # A damaged one is rebuilt.
        if 'filenames' in stored and len(stored.get('labels', ())) == len(self):
            return stored['labels'].astype(np.int64), stored['filenames'].tolist()
        raw = self.builder.as_data_source(
            split=self.split, decoders={'image': tfds.decode.SkipDecoding()}
        )
        labels, names = [], []
        for start in range(0, len(raw), _LABEL_CHUNK):
            for record in raw.__getitems__(range(start, min(start + _LABEL_CHUNK, len(raw)))):
                labels.append(int(record['label']))
                name = record['filename']
                names.append(name.decode() if isinstance(name, bytes) else str(name))
        labels = np.asarray(labels, dtype=np.int64)
        try:
            atomic.savez(cache, labels=labels, filenames=np.asarray(names, dtype=str))
        except OSError as e:  # a read-only data_dir: keep the index in memory only
            logging.info('Not caching the %s index in %s: %s', self.name, cache, e)
        return labels, names

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]: the label of every record, in record order."""
        return self._index[0]

    @property
    def filenames(self) -> list[str]:
        """The source file name (relative to its image folder) of every record."""
        return self._index[1]

    def __repr__(self) -> str:
        return f'TfdsSource({self.name!r}, {self.split!r}, n={len(self)})'


def _check_index(index: int, size: int) -> int:
    index = int(index)
    if index < 0:
        index += size
    if not 0 <= index < size:
        raise IndexError(f'index {index} out of range for {size} records')
    return index


# ----------------------------------------------------------------------------- file checks


def require_dir(path: str, what: str) -> str:
    """Returns ``path`` if it is a directory, else raises DataError naming ``what``."""
    if not os.path.isdir(path):
        raise DataError(f'{what}: directory {path} does not exist')
    return path


def find_file(directories: Sequence[str], names: Sequence[str], what: str) -> str:
    """Returns the first existing ``directory/name``; DataError lists every name tried."""
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    raise DataError(f'{what}: no file named {" or ".join(names)} in {" or ".join(directories)}')


def read_list_file(path: str, *, need_label: bool) -> list[tuple[str, int]]:
    """Parses a split file of ``filename [label]`` lines; blank lines are skipped.

    Args:
      path: the split file.
      need_label: if True every line must be ``filename label`` with an int label >= 0;
        otherwise the label column is optional and returned as PUBLIC_LABEL when absent.

    Returns:
      ``[(filename, label), ...]`` in file order.

    Raises:
      DataError: a malformed line (file, line number, content) or a repeated filename.
    """
    entries: list[tuple[str, int]] = []
    first_seen: dict[str, int] = {}
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            label = PUBLIC_LABEL
            ok = len(fields) == 2 or (len(fields) == 1 and not need_label)
            if ok and len(fields) == 2:
                try:
                    label = int(fields[1])
                except ValueError:
                    ok = False
                ok = ok and label >= 0
            if not ok:
                expected = 'filename label' if need_label else 'filename [label]'
                raise DataError(
                    f'malformed line in {path}, line {number}: {line.rstrip()!r} '
                    f'(expected "{expected}" with an integer label >= 0)'
                )
            if fields[0] in first_seen:
                raise DataError(
                    f'{path}, line {number}: {fields[0]} repeats line {first_seen[fields[0]]}'
                )
            first_seen[fields[0]] = number
            entries.append((fields[0], label))
    return entries


def list_images(directory: str) -> list[str]:
    """All image files under ``directory``, recursively, relative to it.

    The order is torchvision ImageFolder's: ``sorted(os.walk(...))`` and sorted names.
    """
    found = []
    for dirpath, _, filenames in sorted(os.walk(directory, followlinks=True)):
        for filename in sorted(filenames):
            if filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, filename), directory))
    return found


def _inspect_image(path: str) -> str | None:
    """Fully decodes one image; returns its PIL mode, or None when it does not decode."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def check_images(paths: Sequence[str], what: str) -> list[bool]:
    """Decodes every image (in threads) and says which ones are not RGB.

    Returns:
      ``needs_rgb[i]``: True when ``paths[i]`` decodes to a mode other than RGB
      (grey, palette, CMYK, RGBA) and must be converted before it is stored.

    Raises:
      DataError: for the first file (in order) that is missing or does not decode.
    """
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f'{what}: image file {path} does not exist')
    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
        modes = list(pool.map(_inspect_image, paths, chunksize=64))
    for path, mode in zip(paths, modes, strict=True):
        if mode is None:
            raise DataError(f'{what}: image file {path} does not decode (corrupt or not an image)')
    return [mode != 'RGB' for mode in modes]


def check_classes(labels: Iterable[int], num_classes: int, what: str) -> None:
    """Raises DataError naming the first class in ``0..num_classes-1`` with no images."""
    counts = np.bincount(np.fromiter(labels, dtype=np.int64), minlength=num_classes)
    empty = np.flatnonzero(counts[:num_classes] == 0)
    if empty.size:
        raise DataError(
            f'{what}: class {int(empty[0])} has no images '
            f'({empty.size} of {num_classes} classes are empty)'
        )


# ----------------------------------------------------------------------------- base builder


class Record(NamedTuple):
    """One example to be written: its unique key, image path, label and stored filename."""

    key: str
    path: str
    label: int
    filename: str


class ManualImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the manual-directory image builders.

    Subclasses set ``IMAGE_ENCODING`` and implement ``_split_records(manual_dir)``
    returning ``({split: [Record, ...]}, num_classes)``; this class checks every image,
    records ``num_classes`` in the dataset metadata and writes the examples.
    """

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    IMAGE_ENCODING = 'jpeg'

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(
                    shape=(None, None, 3), encoding_format=self.IMAGE_ENCODING
                ),
                'label': tfds.features.Scalar(
                    dtype=np.int64, doc='class index; -1 for public (unlabelled) images'
                ),
                'filename': tfds.features.Text(doc='path relative to the image folder'),
            }
        )
        return self.dataset_info_from_configs(
            features=features,
            supervised_keys=('image', 'label'),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_records(self, manual_dir: str) -> tuple[dict[str, list[Record]], int]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits, num_classes = self._split_records(manual_dir)
        self.info.metadata['num_classes'] = int(num_classes)
        generators = {}
        for split, records in splits.items():
            if not records:
                raise DataError(f'{self.name}: split {split} has no images in {manual_dir}')
            needs_rgb = check_images([r[1] for r in records], f'{self.name} {split}')
            logging.info('%s: %d images in split %s', self.name, len(records), split)
            generators[split] = self._generate_examples(list(zip(records, needs_rgb, strict=True)))
        return generators

    def _generate_examples(self, items: list[tuple[Record, bool]]) -> Iterator[tuple[str, dict]]:
        for (key, path, label, filename), needs_rgb in items:
            image: Any = path
            if needs_rgb:
                with Image.open(path) as pil_image:
                    image = pil_image.convert('RGB')
            yield key, {'image': image, 'label': int(label), 'filename': filename}


def load_builder(
    builder_cls: Callable[..., tfds.core.DatasetBuilder],
    *,
    root: str | None,
    data_dir: str | None,
) -> tfds.core.DatasetBuilder:
    """Returns a prepared builder, preparing it from ``root`` only if it is not prepared yet.

    Args:
      builder_cls: a ManualImageBuilder subclass.
      root: the manual directory with the original files; not needed once prepared.
      data_dir: where the array_record files live; None means the TFDS default.

    Raises:
      DataError: the dataset is not prepared and ``root`` is missing or not a directory.
    """
    with _scratch_tempdir():
        builder = builder_cls(data_dir=data_dir, file_format='array_record')
    if builder.is_prepared():
        return builder
    name = builder.name
    if root is None:
        raise DataError(
            f'{name} is not prepared in {builder.data_dir} and no manual directory (root) was given'
        )
    root = os.path.abspath(os.path.expanduser(root))
    require_dir(root, f'{name} manual directory')
    if not os.listdir(root):
        raise DataError(f'{name} manual directory {root} is empty (see the README, Data)')
    logging.info('Preparing %s from %s into %s', name, root, builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=root),
        file_format='array_record',
    )
    return builder_cls(data_dir=data_dir, file_format='array_record')


@contextlib.contextmanager
def _scratch_tempdir() -> Iterator[None]:
    """Points ``tempfile`` at a private directory that is removed on exit.

    Constructing a TFDS builder whose dataset is not prepared yet calls
    ``DatasetInfo.initialize_from_bucket``, which makes an empty ``/tmp/tmp*tfds`` directory
    and never removes it (even with GCS disabled): one leaked directory per run. Only that
    construction (no threads of its own, nothing it keeps on disk) runs inside this block.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix='tldmi_tfds_') as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous
