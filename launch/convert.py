r"""Converts a PyTorch checkpoint (.pth/.tar) to a tldmi_jax model checkpoint or GAN prior.

  python launch/convert.py --kind=vgg16 --src=VGG16_88.26.tar --dst=converted/vgg16
  python launch/convert.py --kind=evolve_ir152 \
    --src=Backbone_IR_152_Epoch_112_Batch_2547328_Time_2019-07-13-02-59_checkpoint.pth \
    --dst=converted/ir152_ms1m
  python launch/convert.py --kind=evolve_ir50 --src=backbone_ir50_ms1m_epoch120.pth \
    --dst=converted/ir50_ms1m

`evolve_ir50` keeps all 349 keys, the 112-px embedding head `output_layer` included, as the
original starts its evaluation FaceNet (FaceNet64 targets leave the head out through their
`init.dont_load`); `--kind=evolve_ir50_backbone` drops the head (input_layer and body only).
  python launch/convert.py --kind=fid_inception \
    --src=pt_inception-2015-12-05-6726825d.pth --dst=converted/fid_inception

A GAN prior (--kind=gmi|kedmi|plgmi) is assembled from the generator (--src) and the
discriminator (--src_d), the two files the originals save; the result is a prior directory
(`tldmi_jax.priors.load_prior`, `--config.prior.checkpoint` of the attacks):

  python launch/convert.py --kind=kedmi --src=celeba_G.tar --src_d=celeba_D.tar \
    --dst=converted/kedmi_celeba

PPA's StyleGAN2-ADA prior (--kind=stylegan2_ada) comes from the G_ema of a network pickle
of stylegan2-ada-pytorch, read without running any of its code (or from a tensors-only export
of G_ema, .pth or .npz); the result is a `stylegan2` prior directory:

  python launch/convert.py --kind=stylegan2_ada --src=ffhq.pkl --dst=converted/stylegan2_ffhq

Checkpoints are read with PyTorch's restricted unpickler (tensors only; one that needs
arbitrary code is refused). Kinds: see `tldmi_jax.interop.convert.KINDS`,
`tldmi_jax.interop.gans.PRIORS` and `tldmi_jax.interop.stylegan2`. The last line printed is
the conversion report as JSON.
"""

import json
import os

from absl import app, flags

from tldmi_jax.interop import convert, gan_priors, gans, stylegan2
from tldmi_jax.utils import atomic, cli

_PRIOR_HELP = {
    'gmi': 'GMI prior: DCGAN generator (--src) + DGWGAN critic (--src_d)',
    'kedmi': 'KEDMI prior: generator (--src) + MinibatchDiscriminator (--src_d)',
    'plgmi': 'PLG-MI prior: ResNetGenerator (--src) + SN projection discriminator (--src_d)',
}
_KIND = flags.DEFINE_enum(
    'kind',
    None,
    [*convert.KINDS, *convert.FAMILIES, *gans.PRIORS, stylegan2.KIND],
    'Checkpoint kind: '
    + '; '.join(f'{k.name}: {k.description}' for k in convert.KINDS.values())
    + '; '
    + '; '.join(
        f'{name}: torchvision {"/".join(depths.values())}, the depth read from the checkpoint'
        for name, (depths, _) in convert.FAMILIES.items()
    )
    + '; '
    + '; '.join(f'{name}: {text}' for name, text in _PRIOR_HELP.items())
    + f'; {stylegan2.KIND}: {stylegan2.DESCRIPTION}',
)
_SRC = flags.DEFINE_string('src', None, 'PyTorch checkpoint file (a GAN prior: the generator).')
_SRC_D = flags.DEFINE_string(
    'src_d', None, 'GAN priors only (--kind=gmi|kedmi|plgmi): the discriminator checkpoint.'
)
_DST = flags.DEFINE_string(
    'dst',
    None,
    'Output directory: new, empty, or an earlier conversion (replaced); anything else is refused.',
)
_SRC_KEY = flags.DEFINE_string(
    'src_key',
    None,
    "'/'-path of the state dict inside the checkpoint (default: found); for a StyleGAN2-ADA "
    'pickle the network (default G_ema).',
)
_SRC_D_KEY = flags.DEFINE_string(
    'src_d_key', None, "'/'-path of the state dict inside --src_d (default: found)."
)
_ARCH = flags.DEFINE_string(
    'arch', None, "Target arch instead of the kind's (e.g. vgg16_tiny, gmi_tiny)."
)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'Classes (default: from the fc).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Input size (default: the arch's).")
flags.mark_flags_as_required(['kind', 'src', 'dst'])


def _convert_prior():
    if not _SRC_D.value:
        raise app.UsageError(
            f'--kind={_KIND.value} assembles a prior from two files: the generator as '
            '--src and the discriminator as --src_d.'
        )
    _, report = gan_priors.convert_prior(
        _KIND.value,
        _SRC.value,
        _SRC_D.value,
        _DST.value,
        g_key=_SRC_KEY.value,
        d_key=_SRC_D_KEY.value,
        arch=_ARCH.value,
        num_classes=_NUM_CLASSES.value,
        image_size=_IMAGE_SIZE.value,
    )
    spec = report['spec']
    mapped = report['generator']['mapped'] + report['discriminator']['mapped']
    print(
        f'{_KIND.value} prior: {mapped} tensors -> {_DST.value} ({spec["image_size"]} px, '
        f'z_dim {spec["z_dim"]}, {spec["num_classes"]} classes)'
    )
    return report


def _convert_stylegan2():
    if _SRC_D.value or _SRC_D_KEY.value or _ARCH.value or _NUM_CLASSES.value or _IMAGE_SIZE.value:
        raise app.UsageError(
            f'--kind={stylegan2.KIND} takes --src (and --src_key) only: the pickle records the '
            'architecture.'
        )
    _, report = stylegan2.convert_stylegan2(_SRC.value, _DST.value, src_key=_SRC_KEY.value)
    spec = report['spec']
    print(
        f'{_KIND.value}: {report["generator"]["mapped"]} tensors of {report["source"]} -> '
        f'{_DST.value} ({spec["image_size"]} px, z_dim {spec["z_dim"]}, w_dim {spec["w_dim"]}, '
        f'{report["num_ws"]} ws)'
    )
    return report


def _convert_model():
    if _SRC_D.value or _SRC_D_KEY.value:
        raise app.UsageError('--src_d/--src_d_key are for GAN priors (--kind=gmi|kedmi|plgmi).')
    report = convert.convert_checkpoint(
        _KIND.value,
        _SRC.value,
        _DST.value,
        src_key=_SRC_KEY.value,
        arch=_ARCH.value,
        num_classes=_NUM_CLASSES.value,
        image_size=_IMAGE_SIZE.value,
    ).report
    print(
        f'{report["kind"]}: {report["mapped"]} tensors -> {_DST.value} ({report["arch"]} at '
        f'{report["image_size"]} px); {len(report["ignored"])} source keys ignored, '
        f'{len(report["left_fresh"])} model variables left fresh'
    )
    return report


def main(argv):
    del argv
    # Only an earlier conversion (or nothing) is ever replaced: a workdir, '.' or a folder
    # of other files is refused before anything is read or written.
    atomic.check_replaceable(os.path.abspath(_DST.value))
    # Unsafe, unreadable or unmappable input raises; cli prints it as one error line.
    if _KIND.value == stylegan2.KIND:
        report = _convert_stylegan2()
    elif _KIND.value in gans.PRIORS:
        report = _convert_prior()
    else:
        report = _convert_model()
    print(json.dumps(report))


if __name__ == '__main__':
    cli.run(main)
