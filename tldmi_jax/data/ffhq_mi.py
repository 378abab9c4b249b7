"""FFHQ 128x128 thumbnails as the public (unlabelled) prior data of the 64x64 setting.

One split, ``public``, label -1. Images are stored as the original PNG bytes; the centre crop
88 and resize happen in ``tldmi_jax.data.preprocess``.
"""

from __future__ import annotations

import os

from tldmi_jax.data import builders

IMAGE_DIR = 'thumbnails128x128'
LIST_FILES = ('ganset_ffhq.txt', 'ffhq_ganset.txt')
SPLITS = ('public',)


class FfhqMi(builders.ManualImageBuilder):
    """FFHQ thumbnails128x128, optionally restricted to the images listed in ganset_ffhq.txt."""

    IMAGE_ENCODING = 'png'
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put in the manual directory (``root``):
      thumbnails128x128/     the FFHQ 128x128 PNG thumbnails, flat or in numbered
                             subfolders (00000/00000.png ...)
      ganset_ffhq.txt        optional: the images to use, one per line ("00000.png" or a
                             path relative to thumbnails128x128/; a label column is
                             ignored). Without it every image under thumbnails128x128/ is used.
    """

    def _split_records(self, manual_dir):
        image_dir = builders.require_dir(
            os.path.join(manual_dir, IMAGE_DIR), f'{self.name} image folder {IMAGE_DIR}/'
        )
        found = builders.list_images(image_dir)
        list_path = next(
            (
                os.path.join(manual_dir, n)
                for n in LIST_FILES
                if os.path.isfile(os.path.join(manual_dir, n))
            ),
            None,
        )
        if list_path is None:
            chosen = found
        else:
            by_basename = {}
            for relpath in found:
                by_basename.setdefault(os.path.basename(relpath), relpath)
            available = set(found)
            chosen, chosen_set = [], set()
            for name, _ in builders.read_list_file(list_path, need_label=False):
                relpath = os.path.normpath(name)
                if relpath not in available:
                    relpath = by_basename.get(os.path.basename(name))
                if relpath is None:
                    raise builders.DataError(
                        f'{self.name}: {list_path} lists {name}, which is not under {image_dir}'
                    )
                if relpath in chosen_set:
                    raise builders.DataError(
                        f'{self.name}: {list_path} lists {relpath} more than once'
                    )
                chosen_set.add(relpath)
                chosen.append(relpath)
        if not chosen:
            raise builders.DataError(f'{self.name}: no images found under {image_dir}')
        records = [
            builders.Record(
                key=relpath,
                path=os.path.join(image_dir, relpath),
                label=builders.PUBLIC_LABEL,
                filename=relpath,
            )
            for relpath in chosen
        ]
        return {'public': records}, 0
