r"""The evaluation model: FaceNet (IR-50 at 112 px) on the 1000 private CelebA identities.

  python launch/train.py --config=configs/eval_celeba.py --workdir=workdirs/eval_facenet \
    --config.data.root=/path/to/celeba_manual_dir \
    --config.init.checkpoint=/path/to/converted_ir50_ms1m

The original (`FaceNet` block of TL-DMI's classify.json): MS-Celeb-1M IR-50 backbone, new
head, SGD lr 0.01 (momentum 0.9, weight decay 1e-4), 30 epochs, batch 64, no freezing;
released as `FaceNet_95.88.tar` (95.88 % private test accuracy). Images are the CelebA
crop (108 px) resized to 112 px from the raw image. About 2 GPU-hours. Pass the workdir to
`launch/evaluate.py` as `--config.eval_model.checkpoint`.

As the original, the model starts from all 349 keys of the MS1M IR-50 checkpoint, its
512-d embedding head `output_layer` included (convert it with `--kind=evolve_ir50`); only
the classifier `fc` is new. Variant `:fresh_head` starts `output_layer` fresh as well.

Variant `:runlocal`: the tiny FaceNet on generated data, 5-10 s on 2 CPU cores.
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the evaluation-model training config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False, fresh_head=False)
    # Shared classifier block (data / model / freeze / optim / evals, each field commented
    # in config_lib.classifier_config); the original FaceNet recipe:
    config = config_lib.classifier_config(
        dataset='celeba_mi',  # Private CelebA identities (crop 108 -> 112 px).
        arch='facenet',  # IR-50 at 112 px with the TL-DMI head (512-d features).
        num_classes=1000,  # The private identities.
        image_size=112,  # Evaluation-model input side.
        channels=3,  # RGB.
        lr=0.01,  # Constant SGD learning rate.
        epochs=30,  # As the original FaceNet block.
        batch_size=64,  # As the original FaceNet block.
        dont_load=('fc/.*',),  # MS1M IR-50 with its embedding head: only the classifier is new.
    )
    if arg.fresh_head:  # The embedding head starts fresh too.
        config.init.dont_load = ('output_layer/.*', 'fc/.*')
    if arg.runlocal:
        config_lib.runlocal_classifier(config)  # facenet_tiny, 32 px, synthetic data.
    return config
