"""Datasets of the model-inversion benchmarks, behind one entry point.

``get_source(name, split, root=..., data_dir=...)`` returns random access to one split:
``len(source)``, ``source[i] -> {'image': uint8 [H, W, C], 'label': int}``,
``source.num_classes`` (the private class count, the same for every split of a dataset) and
``source.labels`` (int64 [N], read without decoding images). Public splits have label -1,
except fashion_mnist_mi's public split, which keeps the original classes 5-9.

The image datasets are TFDS builders, prepared once from a local manual directory into
array_record files under ``data_dir`` and then only read (no TensorFlow, no network).
Fashion-MNIST and the synthetic set are built in memory. Stanford Dogs takes one option,
``cropped`` (the images cut to their bounding boxes on read, PPA's ``stanford_dogs_cropped``).

Example::

    from tldmi_jax import data
    train = data.get_source('celeba_mi', 'private_train', root='/data/celeba')
    fn = data.get_preprocess('celeba', 64)
    for batch in data.epoch_batches(train, np.arange(len(train)), 64, preprocess=fn,
                                    seed=0, epoch=0, shuffle=True, drop_remainder=True):
        ...
"""

from __future__ import annotations

from tldmi_jax.data import (
    celeba_mi,
    facescrub_mi,
    fashion_mnist_mi,
    ffhq_mi,
    stanford_dogs_mi,
    synthetic,
)
from tldmi_jax.data.builders import ArraySource, DataError, Source, TfdsSource, load_builder
from tldmi_jax.data.fashion_mnist_mi import (
    DEFAULT_FASHION_MNIST_DIR,
    default_fashion_mnist_dir,
    load_fashion_mnist_mi,
)
from tldmi_jax.data.pipeline import epoch_batches, load_all, num_batches, split_validation
from tldmi_jax.data.preprocess import get_preprocess, random_flip
from tldmi_jax.data.synthetic import make_synthetic
from tldmi_jax.utils import distributed

__all__ = [
    'DATASETS',
    'DEFAULT_FASHION_MNIST_DIR',
    'ArraySource',
    'DataError',
    'Source',
    'TfdsSource',
    'default_fashion_mnist_dir',
    'epoch_batches',
    'get_builder',
    'get_preprocess',
    'get_source',
    'load_all',
    'make_synthetic',
    'num_batches',
    'random_flip',
    'split_validation',
]

# name -> its splits.
DATASETS: dict[str, tuple[str, ...]] = {
    'celeba_mi': celeba_mi.SPLITS,
    'ffhq_mi': ffhq_mi.SPLITS,
    'facescrub_mi': facescrub_mi.SPLITS,
    'stanford_dogs_mi': stanford_dogs_mi.SPLITS,
    'fashion_mnist_mi': fashion_mnist_mi.SPLITS,
    'synthetic': synthetic.SPLITS,
}

_BUILDERS = {
    'celeba_mi': celeba_mi.CelebaMi,
    'ffhq_mi': ffhq_mi.FfhqMi,
    'facescrub_mi': facescrub_mi.FacescrubMi,
    'stanford_dogs_mi': stanford_dogs_mi.StanfordDogsMi,
}
# The options `get_source` accepts, per dataset (synthetic: those of `make_synthetic`).
_OPTIONS = {'stanford_dogs_mi': ('cropped',)}


def _check_name_split(name: str, split: str) -> None:
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; valid: {", ".join(DATASETS)}')
    if split not in DATASETS[name]:
        raise ValueError(
            f'dataset {name!r} has no split {split!r}; valid: {", ".join(DATASETS[name])}'
        )


def get_builder(name: str, *, root: str | None = None, data_dir: str | None = None):
    """Returns the prepared TFDS builder of an image dataset, preparing it from ``root`` once.

    Raises:
      ValueError: ``name`` is not a TFDS-backed dataset.
      DataError: see ``get_source``.
    """
    if name not in _BUILDERS:
        raise ValueError(f'no TFDS builder for {name!r}; valid: {", ".join(_BUILDERS)}')
    return load_builder(_BUILDERS[name], root=root, data_dir=data_dir)


def get_source(
    name: str,
    split: str,
    *,
    root: str | None = None,
    data_dir: str | None = None,
    **kwargs,
) -> Source:
    """Returns random access to one split of a dataset.

    Args:
      name: one of ``DATASETS``: 'celeba_mi', 'ffhq_mi', 'facescrub_mi', 'stanford_dogs_mi',
        'fashion_mnist_mi', 'synthetic'.
      split: one of ``DATASETS[name]``.
      root: the manual directory with the original files. Needed to prepare celeba_mi,
        ffhq_mi, facescrub_mi and stanford_dogs_mi the first time (afterwards ignored); for
        fashion_mnist_mi the idx directory (default ``DEFAULT_FASHION_MNIST_DIR``); unused
        for synthetic.
      data_dir: where TFDS keeps prepared array_record files; None is the TFDS default.
      **kwargs: options of ``make_synthetic`` (seed, num_classes, image_size, ...), or
        stanford_dogs_mi's ``cropped`` (bool, default False: whole images); no other
        dataset takes any.

    Returns:
      A Source: ``len()``, ``[i] -> {'image': uint8 [H, W, C], 'label': int}``,
      ``num_classes`` and ``labels``.

    Raises:
      ValueError: unknown name or split (the message lists the valid ones).
      DataError: missing or malformed local files (the message names the file).
    """
    _check_name_split(name, split)
    if name == 'synthetic':
        return make_synthetic(split, **kwargs)
    unknown = sorted(set(kwargs) - set(_OPTIONS.get(name, ())))
    if unknown:
        takes = f'only {", ".join(_OPTIONS[name])}' if name in _OPTIONS else 'no options'
        raise TypeError(f'{name} takes {takes}, got {", ".join(unknown)}')
    if name == 'fashion_mnist_mi':
        return load_fashion_mnist_mi(split, root=root)
    # Prepared once, by process 0 of a multi-process run, before the others open it.
    with distributed.main_first(f'prepare:{name}:{data_dir}'):
        builder = get_builder(name, root=root, data_dir=data_dir)
        if name == 'stanford_dogs_mi':
            return stanford_dogs_mi.make_source(builder, split, **kwargs)
        return TfdsSource(builder, split)
