r"""Evaluates a PPA attack at high resolution as Plug & Play Attacks does (the 224 px table).

FaceScrub (530 identities), reconstructions of `configs/attack_ppa.py` (224 px):

  python launch/convert.py --kind=facenet_vggface2 --src=20180402-114759-vggface2.pt \
    --dst=converted/facenet_vggface2
  python launch/evaluate.py --config=configs/evaluate_ppa.py:dataset=facescrub \
    --workdir=workdirs/resnet152_tldmi/ppa_eval \
    --config.attack_dir=workdirs/resnet152_tldmi/ppa \
    --config.eval_model.checkpoint=workdirs/inception_v3_facescrub \
    --config.data.root=/path/to/facescrub \
    --config.face_model.checkpoint=converted/facenet_vggface2 \
    --config.fid.inception_checkpoint=converted/fid_inception

Stanford Dogs (120 breeds, evaluated on the bounding-box crops as PPA does):
`:dataset=dogs` (no FaceNet: delta_face is not computed).

Metrics (docs/evaluation.md): attack accuracy top-1/top-5 of the Inception-v3 evaluation
model (299 px, trained on the private data: PPA's `Inception_V3_FaceScrub.yaml`),
`attack/delta_eval` (mean over reconstructions of the minimum squared L2 distance to the
target's private training images in its 2048-d penultimate features), `attack/delta_face`
(the same in FaceNet's 512-d embedding at 160 px, faces only), FID (all reconstructions
against the target classes' private training images, resized straight to 299 px), and
the target's natural accuracy. Reconstructions are resized 224 -> 299 and 224 -> 160
(bilinear, antialiased). Without `face_model.checkpoint`, delta_face is skipped with a
warning; without `fid.inception_checkpoint`, FID/KID/PRDC. Cost at the full size (530 x 50
reconstructions; not measured here): one pass of each network over the reconstructions and
the private training images (their features are cached in the workdir), then FID/KID/PRDC
on the host.

Variant `:runlocal` runs alone in 15-60 s on 2 CPU cores (warm/cold compilation cache): the
tiny target, evaluation model and stand-in GMI attack of `evaluate_celeba.py:runlocal` on
generated data (`tldmi_jax.pipelines.runlocal`), a tiny random-weight Inception and FaceNet.
A tiny PPA attack can be evaluated instead (about a minute more):

  python launch/evaluate.py --config=configs/evaluate_ppa.py:runlocal --workdir=/tmp/ev_ppa
  python launch/attack.py --config=configs/attack_ppa.py:runlocal --workdir=/tmp/ppa
  python launch/evaluate.py --config=configs/evaluate_ppa.py:runlocal --workdir=/tmp/ev_ppa2 \
    --config.attack_dir=/tmp/ppa --config.target.checkpoint=/tmp/ppa/target
"""

import ml_collections

from tldmi_jax import config_lib

# Private data (tldmi_jax.data.DATASETS), its preprocessing and builder options.
_DATA = {
    'facescrub': ('facescrub_mi', 'facescrub_ppa', {}),
    # PPA's `stanford_dogs_cropped`: the evaluation model and the attack's evaluation use the
    # bounding-box crops.
    'dogs': ('stanford_dogs_mi', '', {'cropped': True}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the PPA evaluation config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, dataset='facescrub', runlocal=False)
    if arg.dataset not in _DATA:
        raise ValueError(f'Unknown dataset {arg.dataset!r}; use one of {sorted(_DATA)}.')
    config = config_lib.evaluate_config(arg.runlocal)
    config.distance = 'ppa'  # attack/delta_eval and attack/delta_face.
    config.face_model.enabled = arg.dataset != 'dogs'  # FaceNet distances for faces only.
    config.fid.reconstructions = 'all'  # PPA's FID takes every final sample.
    config.fid.real_size = 'inception'  # Private images resized straight to 299 px.
    if not arg.runlocal:
        name, prep, kwargs = _DATA[arg.dataset]
        config.data.name = name
        config.data.preprocess = prep
        config.data.kwargs = ml_collections.ConfigDict(kwargs)
        config.data.train_split = 'train'  # PPA's 90 % training split.
        config.data.test_split = 'test'
    return config
