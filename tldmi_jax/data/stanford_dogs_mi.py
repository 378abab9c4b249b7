"""Stanford Dogs (120 breeds, 20,580 images) with PPA's 90/10 train/test split.

Order, labels and split follow Plug & Play Attacks (``datasets/stanford_dogs.py``) exactly,
so the same image lands in the same split with the same label:

* Order: the entries of the official ``train_list.mat`` (12,000) followed by those of
  ``test_list.mat`` (8,580), each read with ``scipy.io.loadmat`` as PPA does. An entry of
  ``annotation_list`` (``n02085620-Chihuahua/n02085620_5927``) names the image
  ``Images/<entry>.jpg`` and the annotation ``Annotation/<entry>``.
* Labels: the lists' ``labels`` (1-based) minus 1, so 0..119. In the official lists a
  breed's label is the rank of its ``Images/<wnid>-<breed>`` folder among the sorted folder
  names, which is torchvision ``ImageFolder``'s class index (PPA's ``classes``).
* Split: ``indices = list(range(N))``, ``np.random.seed(42)``, ``np.random.shuffle(indices)``
  (numpy's legacy MT19937, reproduced with ``np.random.RandomState(42)``), then
  ``train = indices[:int(0.9 * N)]``, ``test = indices[int(0.9 * N):]`` over the merged
  list. PPA takes N from ``ImageFolder(Images)``, which is the list's length (20,580) for
  the official ``images.tar``; here N is the number of listed entries, and image files
  that no list names are ignored (PPA would fail on them).
* Crops: PPA's ``stanford_dogs_cropped`` cuts every image to the ``<bndbox>`` of the first
  ``<object>`` in its annotation with PIL's ``Image.crop((xmin, ymin, xmax, ymax))`` (pixels
  ``[ymin:ymax, xmin:xmax]``, zeros where the box leaves the image). PPA trains its targets
  on the uncropped images and its evaluation model, and the attacks' evaluation, on the
  cropped ones.

The prepared dataset stores each original image with that box; ``get_source('stanford_dogs_mi',
split, cropped=True)`` (``config.data.kwargs.cropped``) crops on read, so one prepared copy
serves both. The resize to 224 or 299 px is ``tldmi_jax.data.preprocess``'s
``stanford_dogs``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from tldmi_jax.data import builders

IMAGE_DIR = 'Images'
ANNOTATION_DIR = 'Annotation'
LIST_FILES = ('train_list.mat', 'test_list.mat')  # Merged in this order.
SPLIT_SEED = 42
TRAIN_FRACTION = 0.9
SPLITS = ('train', 'test')


def read_list(path: str) -> list[tuple[str, int]]:
    """``[(entry, label), ...]`` of an official ``*_list.mat``: ``annotation_list`` entries
    and 0-based labels (the file's ``labels`` minus 1), in file order.

    Raises:
      DataError: the file does not read as a MATLAB file or lacks either field.
    """
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise builders.DataError(f'{path} does not read as a MATLAB .mat file: {e}') from e
    for key in ('annotation_list', 'labels'):
        if key not in mat:
            raise builders.DataError(f'{path} has no {key!r} (the official list files do)')
    # PPA: `item[0][0]` of each row of the N x 1 cell array, `item[0] - 1` of each label.
    entries = [str(row[0][0]) for row in mat['annotation_list']]
    labels = [int(row[0]) - 1 for row in mat['labels']]
    if len(entries) != len(labels):
        raise builders.DataError(
            f'{path}: {len(entries)} annotation_list entries but {len(labels)} labels'
        )
    return list(zip(entries, labels, strict=True))


def first_box(path: str) -> tuple[int, int, int, int]:
    """``(xmin, ymin, xmax, ymax)`` of the first ``<object>`` of a VOC-style annotation.

    Raises:
      DataError: the file is missing or malformed, has no object, or an empty box.
    """
    if not os.path.isfile(path):
        raise builders.DataError(f'stanford_dogs_mi: annotation file {path} does not exist')
    try:
        obj = ET.parse(path).getroot().find('object')
        box = None if obj is None else obj.find('bndbox')
        if box is None:
            raise builders.DataError(f'{path} has no <object> with a <bndbox>')
        xmin, ymin, xmax, ymax = (int(box.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise builders.DataError(f'{path} is not a readable annotation: {e}') from e
    if xmax <= xmin or ymax <= ymin:
        raise builders.DataError(f'{path}: empty box {(xmin, ymin, xmax, ymax)}')
    return xmin, ymin, xmax, ymax


def crop(image: np.ndarray, box: Any) -> np.ndarray:
    """PIL's ``Image.crop((xmin, ymin, xmax, ymax))`` of a [H, W, C] array: rows
    ``ymin:ymax`` and columns ``xmin:xmax``, zero-filled where the box leaves the image."""
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    h, w = image.shape[:2]
    out = np.zeros((ymax - ymin, xmax - xmin, image.shape[2]), image.dtype)
    top, left = max(ymin, 0), max(xmin, 0)
    bottom, right = min(ymax, h), min(xmax, w)
    if bottom > top and right > left:
        out[top - ymin : bottom - ymin, left - xmin : right - xmin] = image[top:bottom, left:right]
    return out


def split_indices(num_images: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """PPA's split: legacy-numpy shuffle of ``range(num_images)``, first 90% for training."""
    indices = list(range(num_images))
    np.random.RandomState(seed).shuffle(indices)
    num_train = int(TRAIN_FRACTION * num_images)
    return np.asarray(indices[:num_train]), np.asarray(indices[num_train:])


class StanfordDogsMi(builders.ManualImageBuilder):
    """Stanford Dogs images with their first bounding box; label = breed, splits as in PPA."""

    IMAGE_ENCODING = 'jpeg'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Extract the three archives of the Stanford Dogs dataset (images.tar, annotation.tar,
    lists.tar) into the manual directory (``root``):
      Images/<wnid>-<breed>/<wnid>_<n>.jpg    the 20,580 images
      Annotation/<wnid>-<breed>/<wnid>_<n>    one VOC-style XML file per image (no suffix)
      train_list.mat, test_list.mat           the official lists (file_list.mat is unused)
    """

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(
                    shape=(None, None, 3), encoding_format=self.IMAGE_ENCODING
                ),
                'label': tfds.features.Scalar(dtype=np.int64, doc='breed index 0..119'),
                'filename': tfds.features.Text(doc='path relative to Images/'),
                'bbox': tfds.features.Tensor(
                    shape=(4,),
                    dtype=np.int64,
                    doc='xmin, ymin, xmax, ymax of the first annotated object (PIL crop box)',
                ),
            }
        )
        return self.dataset_info_from_configs(
            features=features,
            supervised_keys=('image', 'label'),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # Records in PPA's order (keys: positions in the split).
        )

    def _split_records(self, manual_dir):
        image_dir = builders.require_dir(
            os.path.join(manual_dir, IMAGE_DIR), f'{self.name} image folder {IMAGE_DIR}/'
        )
        annotation_dir = builders.require_dir(
            os.path.join(manual_dir, ANNOTATION_DIR),
            f'{self.name} annotation folder {ANNOTATION_DIR}/',
        )
        entries = []
        for name in LIST_FILES:
            path = builders.find_file((manual_dir,), (name,), f'{self.name} list file')
            entries.extend(read_list(path))
        if not entries:
            raise builders.DataError(f'{self.name}: {" and ".join(LIST_FILES)} list no images')
        if min(label for _, label in entries) < 0:
            raise builders.DataError(f'{self.name}: a list file has a label below 1')
        num_classes = max(label for _, label in entries) + 1
        builders.check_classes((label for _, label in entries), num_classes, self.name)
        self._boxes: dict[str, tuple[int, int, int, int]] = {}
        for entry, _ in entries:
            if f'{entry}.jpg' in self._boxes:
                raise builders.DataError(f'{self.name}: {entry} is listed twice')
            self._boxes[f'{entry}.jpg'] = first_box(os.path.join(annotation_dir, entry))
        splits = {}
        for split, indices in zip(SPLITS, split_indices(len(entries)), strict=True):
            splits[split] = [
                builders.Record(
                    key=position,  # An int key: TFDS keeps the records in this order.
                    path=os.path.join(image_dir, f'{entries[i][0]}.jpg'),
                    label=entries[i][1],
                    filename=f'{entries[i][0]}.jpg',
                )
                for position, i in enumerate(indices)
            ]
        return splits, num_classes

    def _generate_examples(self, items):
        for key, example in super()._generate_examples(items):
            yield key, {**example, 'bbox': np.asarray(self._boxes[example['filename']], np.int64)}


class CroppedSource(builders.TfdsSource):
    """A split of the prepared Stanford Dogs, each image cut to its bounding box on read."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._data[builders._check_index(index, len(self))]
        return {'image': crop(record['image'], record['bbox']), 'label': int(record['label'])}

    def __repr__(self) -> str:
        return f'CroppedSource({self.name!r}, {self.split!r}, n={len(self)})'


def make_source(
    builder: tfds.core.DatasetBuilder, split: str, *, cropped: bool = False
) -> builders.TfdsSource:
    """One split of the prepared builder: the whole images, or (``cropped``) their boxes."""
    return (CroppedSource if cropped else builders.TfdsSource)(builder, split)
