"""FaceScrub (cropped faces, 530 identities) with PPA's 90/10 train/test split.

Labels and split follow Plug-and-Play Attacks (``datasets/facescrub.py``, group ``all``)
exactly, so the same images land in the same split with the same label:

* Identities: the sorted folder names under ``actors/faces`` get labels ``0..A-1`` and the
  sorted folder names under ``actresses/faces`` get ``A..A+B-1`` (265 + 265 = 530 in the real
  data). This is torchvision ``ImageFolder`` per group, actresses offset by the number of
  actors; note it is *not* one sorted list over both groups. With the flat layout
  (``root/<Name>/*``) the label is the index of the name in ``sorted(names)``.
* Image order: actors then actresses; within a group by label, and within an identity in
  ImageFolder's order (``sorted(os.walk(folder))``, then sorted file names, keeping files
  whose lower-cased name ends in a torchvision image extension).
* Split: ``indices = list(range(N))``, ``np.random.seed(42)``, ``np.random.shuffle(indices)``
  (numpy's legacy MT19937 generator, reproduced here with ``np.random.RandomState(42)``,
  which shuffles identically), then ``train = indices[:int(0.9 * N)]`` and
  ``test = indices[int(0.9 * N):]``.

PPA uses torch's ``random_split`` only to carve a validation set out of the training split
(``utils/datasets.py``); this module does not reproduce torch's generator (which cannot be
matched bit-for-bit without torch), and ``tldmi_jax.data.pipeline.split_validation`` draws
validation indices with numpy instead.
"""

from __future__ import annotations

import os

import numpy as np

from tldmi_jax.data import builders

GROUPS = ('actors', 'actresses')
SPLIT_SEED = 42
TRAIN_FRACTION = 0.9
SPLITS = ('train', 'test')


def identity_folders(root: str) -> list[tuple[str, str]]:
    """``[(identity name, folder), ...]`` in label order, for either supported layout."""
    grouped = [os.path.join(root, group, 'faces') for group in GROUPS]
    if any(os.path.isdir(d) for d in grouped):
        bases = [d for d in grouped if os.path.isdir(d)]
    else:
        bases = [root]
    folders = []
    for base in bases:
        names = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        folders.extend((name, os.path.join(base, name)) for name in names)
    return folders


def split_indices(num_images: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """PPA's split: legacy-numpy shuffle of ``range(num_images)``, first 90% for training."""
    indices = list(range(num_images))
    np.random.RandomState(seed).shuffle(indices)
    num_train = int(TRAIN_FRACTION * num_images)
    return np.asarray(indices[:num_train]), np.asarray(indices[num_train:])


class FacescrubMi(builders.ManualImageBuilder):
    """FaceScrub cropped faces; label = identity index, splits as in PPA."""

    IMAGE_ENCODING = 'jpeg'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the cropped FaceScrub faces in the manual directory (``root``) as
      actors/faces/<Name>/*.jpeg
      actresses/faces/<Name>/*.jpeg
    (the layout written by the FaceScrub download scripts with face cropping), or as a flat
      <Name>/*.jpeg
    with one folder per identity. Every identity folder must hold at least one image.
    """

    def _split_records(self, manual_dir):
        folders = identity_folders(manual_dir)
        if not folders:
            raise builders.DataError(f'{self.name}: no identity folders found in {manual_dir}')
        records = []
        for label, (name, folder) in enumerate(folders):
            images = builders.list_images(folder)
            if not images:
                raise builders.DataError(
                    f'{self.name}: class {label} ({name}) has no images in {folder}'
                )
            for image in images:
                path = os.path.join(folder, image)
                relpath = os.path.relpath(path, manual_dir)
                records.append(
                    builders.Record(key=relpath, path=path, label=label, filename=relpath)
                )
        train, test = split_indices(len(records))
        splits = {
            'train': [records[i] for i in train],
            'test': [records[i] for i in test],
        }
        return splits, len(folders)
