r"""Evaluates an attack on CelebA (64 px private identities) as in the original protocol.

  python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=workdirs/eval_gmi \
    --config.attack_dir=workdirs/attack_gmi \
    --config.eval_model.checkpoint=workdirs/eval_facenet \
    --config.data.root=/path/to/celeba_manual_dir \
    --config.fid.inception_checkpoint=/path/to/fid_inception

Writes metrics.json (attack/acc@1, attack/acc@5 with stds, attack/knn_dist, attack/fid,
attack/kid, PRDC, target/natural_acc, protocol_hash), per_identity.csv, groups.csv,
pairs.png and report.md. Without `fid.inception_checkpoint`, FID/KID/PRDC are skipped with
a warning. The evaluation model is trained with `configs/eval_celeba.py` (original: 95.88 %
test accuracy). Cost at the original size (1,500 reconstructions, 300 identities, ~8,100
private images): one pass of the evaluation model and the Inception over the private
images (cached in the workdir for reruns), then FID/KID/PRDC on the host (measured on 2
CPU cores: FID's 2048-d sqrtm 45 s, KID 35 s, PRDC 10 s, KNN 1 s).

Variant `:runlocal` runs alone in 15-50 s on 2 CPU cores (warm/cold compilation cache):
it trains a tiny target and a tiny evaluation model on generated data, writes STAND-IN
reconstructions (noisy private images, not an attack) under WORKDIR/runlocal/, and uses a
tiny random-weight Inception:

  python launch/evaluate.py --config=configs/evaluate_celeba.py:runlocal --workdir=/tmp/ev
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the evaluation config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False)
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # KID subsets, FID real-image subsampling, runlocal stand-ins.
    # True: a multi-process run (JAX's multi-controller runtime, docs/scaling.md): every process
    # evaluates, process 0 writes.
    config.distributed = False
    config.runlocal = False  # Make missing upstream artefacts (tiny, generated data).
    config.overwrite = False  # True: replace a run with another config in --workdir.

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # A tldmi_jax.data.DATASETS name (the private data).
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.train_split = 'private_train'  # KNN references, FID real images, grid.
    config.data.test_split = 'private_test'  # Target natural accuracy.

    # --- attack ---
    config.attack_dir = placeholder(str)  # Attack workdir holding reconstructions.npz.

    # --- models ---
    config.eval_model = ml_collections.ConfigDict()
    config.eval_model.checkpoint = placeholder(str)  # Trainer workdir or model checkpoint.
    config.eval_model.arch = ''  # '': from the workdir's config.json, else 'facenet'.
    config.eval_model.num_classes = 0  # 0: from the checkpoint's fc layer.
    config.eval_model.image_size = 0  # 0: from config.json, else 112 (64 -> 112 resize).
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # '': the one attack.json names, if present.
    config.target.arch = ''  # '': from config.json, else attack.json.
    config.target.num_classes = 0  # 0: from the checkpoint's fc layer.
    config.target.image_size = 0  # 0: from config.json, else attack.json's image_size.
    config.batch_size = 64  # Images per forward pass of the classifiers.

    # --- evals ---
    config.reproduce_top5_bug = False  # True: acc@5 of the last seed per batch (original).
    config.knn = ml_collections.ConfigDict()
    config.knn.chunk_size = 256  # Reconstructions per distance matrix product.
    config.fid = ml_collections.ConfigDict()
    config.fid.enabled = True  # Compute FID, KID and PRDC (needs Inception weights).
    config.fid.inception_checkpoint = placeholder(str)  # Converted pt_inception-2015-12-05.
    config.fid.arch = 'fid_inception'  # tldmi_jax.models.inception.INCEPTIONS key.
    config.fid.original_range_mapping = False  # True: the original's (x*0.5+0.5)*255.
    config.fid.batch_size = 50  # Images per Inception forward pass.
    config.fid.max_real = 0  # Cap on private images for FID (0: all of the identities).
    config.fid.kid_subsets = 100  # KID: number of random subsets averaged.
    config.fid.kid_subset_size = 1000  # KID: maximum subset size.
    config.fid.prdc_k = 3  # Nearest neighbours for precision/recall/density/coverage.

    # --- report ---
    config.report = ml_collections.ConfigDict()
    config.report.max_pairs = 30  # Reconstruction/nearest-image pairs in pairs.png.
    config.report.pairs_per_row = 5  # Pairs per grid row.

    if arg.runlocal:
        config.runlocal = True
        config.data.name = 'synthetic'
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.fid.arch = 'fid_inception_tiny'
        config.fid.batch_size = 16
        config.fid.kid_subsets = 10
        config.batch_size = 16
        config.report.max_pairs = 8
    return config
