"""CelebA with the standard model-inversion splits (KEDMI / GMI / TL-DMI protocol).

Splits:
  private_train: 1,000 private identities relabelled 0..999, 27,018 images (``trainset.txt``).
  private_test: the same identities, 3,009 images (``testset.txt``).
  public: 30,000 images of other identities (``ganset.txt``), label -1.

``num_classes`` is the largest private training label + 1 (1000 for the real files); every
class in ``0..num_classes-1`` must have a training image and every test label must be below
``num_classes``. Images are stored as the original aligned 178x218 JPEG bytes; the 108x108
crop and resize happen in ``tldmi_jax.data.preprocess``.
"""

from __future__ import annotations

import os

from tldmi_jax.data import builders

IMAGE_DIR = 'img_align_celeba'
# File names tried for each split, in order: TL-DMI / KEDMI / LOMMA, then the MI toolbox,
# then PLG-MI's data_files.
SPLIT_FILES = {
    'private_train': ('trainset.txt', 'private_train.txt', 'celeba_trainset.txt'),
    'private_test': ('testset.txt', 'private_test.txt', 'celeba_testset.txt'),
    'public': ('ganset.txt', 'public.txt', 'celeba_ganset.txt'),
}
SPLITS = tuple(SPLIT_FILES)


class CelebaMi(builders.ManualImageBuilder):
    """CelebA aligned images with the private/public model-inversion splits."""

    IMAGE_ENCODING = 'jpeg'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put in the manual directory (``root``):
      img_align_celeba/      the 202,599 aligned 178x218 JPEGs (000001.jpg ...)
      trainset.txt           private train split, lines "000123.jpg 17" (labels 0..999)
      testset.txt            private test split, same format
      ganset.txt             public split, lines "000456.jpg" (a label column is ignored)
    The split files come with TL-DMI's release v1.0 or LOMMA's data; the MI toolbox names
    private_train.txt / private_test.txt / public.txt (and PLG-MI's celeba_trainset.txt /
    celeba_testset.txt / celeba_ganset.txt) are accepted too, in the root or in
    root/split_files/.
    """

    def _split_records(self, manual_dir):
        image_dir = builders.require_dir(
            os.path.join(manual_dir, IMAGE_DIR), f'{self.name} image folder {IMAGE_DIR}/'
        )
        search = (manual_dir, os.path.join(manual_dir, 'split_files'))
        entries = {}
        for split, names in SPLIT_FILES.items():
            path = builders.find_file(search, names, f'{self.name} {split} split file')
            entries[split] = (path, builders.read_list_file(path, need_label=split != 'public'))

        train_path, train = entries['private_train']
        num_classes = max(label for _, label in train) + 1 if train else 0
        builders.check_classes(
            (label for _, label in train), num_classes, f'{self.name} private_train ({train_path})'
        )
        test_path, test = entries['private_test']
        for filename, label in test:
            if label >= num_classes:
                raise builders.DataError(
                    f'{self.name}: {test_path} gives {filename} label {label}, but private_train '
                    f'has only {num_classes} classes'
                )

        splits = {}
        for split, (_, lines) in entries.items():
            splits[split] = [
                builders.Record(
                    key=filename,
                    path=os.path.join(image_dir, filename),
                    label=builders.PUBLIC_LABEL if split == 'public' else label,
                    filename=filename,
                )
                for filename, label in lines
            ]
        return splits, num_classes
