r"""The embedded demo: a small CNN on Fashion-MNIST's private classes 0-4.

  python launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/demo

Data: Debian's `dataset-fashion-mnist` package (`make demo` installs it) or
`--config.data.root=DIR` with the four idx files. Private split = classes 0-4 (30,000
train / 5,000 test images), public split = classes 5-9, following GMI's MNIST protocol.
Runs in about a minute on 2 CPU cores; natural accuracy about 0.9.
Variants: defense=none|tldmi (freezes the first two conv blocks), runlocal.
"""

import ml_collections

from tldmi_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the demo config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, defense='none', runlocal=False)
    config = config_lib.classifier_config(
        dataset='fashion_mnist_mi',
        arch='small',
        num_classes=5,
        image_size=32,  # 28 -> 32 as in GMI's MNIST setting.
        channels=1,
        lr=0.05,
        epochs=2,
        batch_size=128,
        defense=arg.defense,
        dont_load=('fc/.*',),
    )
    # TL-DMI on the demo CNN: freeze the first two conv blocks (stage1-2), fine-tune from stage3.
    config.defense.fine_tune_from = 'stage3' if arg.defense == 'tldmi' else ''
    config.checkpoint_every_steps = 100

    if arg.runlocal:
        config.data.max_train = 256
        config.data.max_test = 64
        config.batch_size = 16
        config.total_steps = 10
        config.checkpoint_every_steps = 5
        config.log_every_steps = 5
    return config
