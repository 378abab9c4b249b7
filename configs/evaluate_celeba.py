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
    """Returns the evaluation config for `arg` (see the module docstring).

    Every field, with its comment, is in `config_lib.evaluate_config`, which
    `configs/evaluate_ppa.py` shares.
    """
    arg = config_lib.parse_arg(arg, runlocal=False)
    return config_lib.evaluate_config(arg.runlocal)
