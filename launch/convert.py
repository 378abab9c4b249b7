r"""Converts a PyTorch checkpoint (.pth/.tar) to a tldmi_jax model checkpoint.

  python launch/convert.py --kind=vgg16 --src=VGG16_88.26.tar --dst=converted/vgg16
  python launch/convert.py --kind=evolve_ir152 \
    --src=Backbone_IR_152_Epoch_112_Batch_2547328_Time_2019-07-13-02-59_checkpoint.pth \
    --dst=converted/ir152_ms1m

The checkpoint is read with PyTorch's restricted unpickler (tensors only; one that needs
arbitrary code is refused). Kinds: see `tldmi_jax.interop.convert.KINDS`. The last line
printed is the conversion report as JSON.
"""

import json
import sys

from absl import app, flags

from tldmi_jax.interop import convert

_KIND = flags.DEFINE_enum(
    'kind',
    None,
    list(convert.KINDS),
    'Checkpoint kind: ' + '; '.join(f'{k.name}: {k.description}' for k in convert.KINDS.values()),
)
_SRC = flags.DEFINE_string('src', None, 'PyTorch checkpoint file.')
_DST = flags.DEFINE_string('dst', None, 'Output directory (replaced).')
_SRC_KEY = flags.DEFINE_string(
    'src_key', None, "'/'-path of the state dict inside the checkpoint (default: found)."
)
_ARCH = flags.DEFINE_string('arch', None, "Target arch instead of the kind's (e.g. vgg16_tiny).")
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'Classes (default: from the fc).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Input size (default: the arch's).")
flags.mark_flags_as_required(['kind', 'src', 'dst'])


def main(argv):
    del argv
    try:
        conversion = convert.convert_checkpoint(
            _KIND.value,
            _SRC.value,
            _DST.value,
            src_key=_SRC_KEY.value,
            arch=_ARCH.value,
            num_classes=_NUM_CLASSES.value,
            image_size=_IMAGE_SIZE.value,
        )
    except (FileNotFoundError, ValueError) as e:  # unsafe, unreadable or unmappable input
        sys.exit(f'error: {e}')
    report = conversion.report
    print(
        f'{report["kind"]}: {report["mapped"]} tensors -> {_DST.value} ({report["arch"]} at '
        f'{report["image_size"]} px); {len(report["ignored"])} source keys ignored, '
        f'{len(report["left_fresh"])} model variables left fresh'
    )
    print(json.dumps(report))


if __name__ == '__main__':
    app.run(main)
