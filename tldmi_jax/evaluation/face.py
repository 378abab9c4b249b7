"""PPA's delta_face: how close reconstructions come to the private faces, in FaceNet's space.

Plug & Play Attacks (`attack.py`, "Feature Distance") measures, for face datasets only, the
distance of `knn` (per reconstruction the minimum squared L2 distance to the training
images of its target class, averaged over all reconstructions) in the 512-d embedding of
facenet-pytorch's `InceptionResnetV1(pretrained='vggface2')` at 160 px
(`DistanceEvaluation(facenet, ..., 160, ...)`): `attack/delta_face`.

* The network is `tldmi_jax.models.inception_resnet_v1`, with weights converted once from
  facenet-pytorch's `20180402-114759-vggface2.pt` (`launch/convert.py
  --kind=facenet_vggface2`) and given as `config.face_model.checkpoint`; they are never
  downloaded. Unset: delta_face is skipped with a warning naming that field (under
  `runlocal` the tiny model runs with random weights instead).
* Inputs: PPA resizes its [-1, 1] images to 160 x 160 (`Resize(antialias=True)`; the
  reconstructions from the 800 px centre crop of the StyleGAN2 output, the private images
  from the files) and feeds them as they are. Here the 224 px reconstructions and the
  private images (preprocessed straight to 160 px) are resized bilinearly with antialiasing
  and mapped `2x - 1` (`config.face_model.input_mapping='ppa'`; `features.face_fn`).
* Private embeddings are cached in the workdir's feature cache, keyed by the weights, the
  input mapping and the data split.
"""

from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from tldmi_jax import classifiers
from tldmi_jax.data import pipeline
from tldmi_jax.evaluation import features, knn
from tldmi_jax.models import inception, inception_resnet_v1
from tldmi_jax.utils import checkpoint

FIELD = 'config.face_model.checkpoint'


def model_dir(path: str) -> str:
    """`checkpoint.find_model_dir(path)`; a missing one fails naming `FIELD` and the path.

    Raises:
      FileNotFoundError: `path` does not exist.
    """
    try:
        return checkpoint.find_model_dir(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{FIELD}: {e} (convert facenet-pytorch's 20180402-114759-vggface2.pt once: "
            'launch/convert.py --kind=facenet_vggface2)'
        ) from e


def load_face_model(config: ml_collections.ConfigDict) -> tuple[Any, Any, str] | None:
    """PPA's FaceNet and its variables, or None (with a warning) when there are none.

    Weights come only from `config.face_model.checkpoint` (an orbax model checkpoint,
    converted once from facenet-pytorch's `20180402-114759-vggface2.pt` with
    `launch/convert.py --kind=facenet_vggface2`); with `config.runlocal` and no checkpoint,
    `config.face_model.arch` runs with random weights.

    Returns:
      `(model, variables, origin)` (origin: the path or 'random weights'), or None.

    Raises:
      FileNotFoundError: the checkpoint does not exist (the message names the field).
      ValueError: it does not fit `config.face_model.arch`.
    """
    model = inception_resnet_v1.get_face_model(config.face_model.arch)
    path = config.face_model.checkpoint
    if path:
        return model, features.load_fixed_model(model, model_dir(path)), path
    if config.runlocal:
        logging.warning('runlocal: delta_face uses %s with RANDOM weights.', config.face_model.arch)
        return model, inception.random_variables(model, config.seed), 'random weights'
    logging.warning(
        'delta_face skipped: no FaceNet weights. Set --%s=/path/to/orbax checkpoint converted '
        "from facenet-pytorch's 20180402-114759-vggface2.pt (launch/convert.py "
        '--kind=facenet_vggface2; never downloaded).',
        FIELD,
    )
    return None


def face_distances(
    config: ml_collections.ConfigDict,
    cache: features.FeatureCache,
    recon: np.ndarray,
    identity: np.ndarray,
    source: Any,
    indices: np.ndarray,
    split_key: dict,
    preprocess_at: Callable[[int], pipeline.Preprocess],
) -> tuple[np.ndarray | None, list[str]]:
    """delta_face of every reconstruction (None when not computed) and report notes.

    Args:
      config: the evaluation config (`face_model`, `batch_size`, `knn.chunk_size`, ...).
      cache: the workdir's feature cache.
      recon: float32 [N, h, w, 3] reconstructions in [0, 1].
      identity: int [N], their target identities.
      source: the private training split.
      indices: its records of the attacked identities.
      split_key: the split's fingerprint (cache key).
      preprocess_at: `size -> preprocessing` of the private images at that side.

    Returns:
      `(distances float64 [N] or None, notes)`.
    """
    if not config.face_model.enabled:
        return None, ['delta_face not computed: `config.face_model.enabled=False` (no faces).']
    loaded = load_face_model(config)
    if loaded is None:
        return None, [f'delta_face skipped: set `{FIELD}` to the converted FaceNet.']
    model, variables, origin = loaded
    mapping, size = config.face_model.input_mapping, model.IMAGE_SIZE
    fn = features.face_fn(model, variables, input_mapping=mapping)
    key = {
        'face_model': classifiers.variables_hash(variables),
        'arch': config.face_model.arch,
        'input_mapping': mapping,
        'image_size': size,
        'data': split_key,
        'indices': pipeline.array_hash(indices),
    }

    def private_embeddings():
        (emb,), labels = features.run_on_source(
            fn, source, indices, preprocess_at(size), config.batch_size
        )
        return {'features': emb, 'labels': labels}

    private = cache.get_or_compute('face', key, private_embeddings)
    recon_emb = classifiers.run_batched(fn, recon, config.batch_size)[0]
    dist, _ = knn.knn_distances(
        recon_emb,
        identity,
        private['features'],
        private['labels'],
        chunk_size=config.knn.chunk_size,
    )
    notes = [f'FaceNet: `{config.face_model.arch}` ({origin}), {size} px, inputs `{mapping}`.']
    return dist, notes
