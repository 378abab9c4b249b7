r"""Per-layer Fisher information of a CelebA target: classification vs MI task (Sec. 4.2).

  python launch/fisher.py --config=configs/fisher_celeba.py --workdir=workdirs/fisher_vgg16 \
    --config.target.checkpoint=workdirs/vgg16_none \
    --config.attack_dir=workdirs/attack_gmi_vgg16_none \
    --config.data.root=/path/to/celeba_manual_dir

Use a conventionally trained target (no defense), as the paper does, and the
reconstructions of an attack on that same target. Writes fisher.json (per layer group: FI
of both tasks, raw and normalised by each task's maximum), fisher.csv and fisher.png.
Cost: one backward pass per example (27,018 private images + the reconstructions); VGG16
at 64 px takes a few minutes on a GPU; `--config.fisher.max_examples=N` caps both tasks.

Variant `:runlocal` runs alone in 15-25 s on 2 CPU cores (tiny target trained on
generated data, STAND-IN reconstructions under WORKDIR/runlocal/):

  python launch/fisher.py --config=configs/fisher_celeba.py:runlocal --workdir=/tmp/fisher
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the Fisher-analysis config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False)
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.seed = 0  # Subsampling with max_examples; runlocal stand-ins.
    # True: a multi-process run (JAX's multi-controller runtime, docs/scaling.md): each chunk
    # of examples is split over every process's devices; process 0 writes.
    config.distributed = False
    config.runlocal = False  # Make a missing target/attack (tiny, generated data).
    config.overwrite = False  # True: replace a run with another config in --workdir.

    # --- data ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # A tldmi_jax.data.DATASETS name (the private data).
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.split = 'private_train'  # Classification task: images with true labels.

    # --- model and attack ---
    config.target = ml_collections.ConfigDict()
    config.target.checkpoint = placeholder(str)  # Trainer workdir or model checkpoint.
    config.target.arch = ''  # '': from config.json, else attack.json.
    config.target.num_classes = 0  # 0: from the checkpoint's fc layer.
    config.target.image_size = 0  # 0: from config.json, else attack.json's image_size.
    config.attack_dir = placeholder(str)  # MI task: reconstructions of an attack on it.

    # --- fisher ---
    config.fisher = ml_collections.ConfigDict()
    # Examples per compiled step (memory: chunk x activations; `method='vmap'`: x parameters).
    # 16 amortises the per-step kernel transposes (VGG16 at 64 px: 0.042 -> 0.038 s/example).
    config.fisher.chunk_size = 16
    config.fisher.max_examples = 0  # Per-task cap, seeded subsample (0: all).
    config.fisher.classification_identities = 'all'  # 'all' | 'attacked' private images.

    if arg.runlocal:
        config.runlocal = True
        config.data.name = 'synthetic'
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
    return config
