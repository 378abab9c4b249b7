"""PyTorch interoperability: safe checkpoint reading and converters to tldmi_jax models.

`convert.convert_checkpoint(kind, src, dst)` converts a PyTorch `.pth`/`.tar` of a
registered kind (`kinds.KINDS`) to a model checkpoint; `gan_priors.convert_prior(family,
g_src, d_src, dst)` converts the generator and discriminator files of a GMI, KEDMI or
PLG-MI GAN into a prior directory (`tldmi_jax.priors.load_prior`);
`stylegan2.convert_stylegan2(src, dst)` converts the G_ema of a StyleGAN2-ADA network pickle
(read by `stylegan2_pkl` without running its code) into a `stylegan2` prior directory;
`torch_load.load_state_dict` reads checkpoints with PyTorch's restricted unpickler.
PyTorch is imported only when a checkpoint is read.
"""

from tldmi_jax.interop import (
    convert,
    gan_priors,
    gans,
    inception,
    kinds,
    mapping,
    stylegan2,
    stylegan2_pkl,
    torch_load,
)
from tldmi_jax.interop.convert import (
    KINDS,
    Conversion,
    ConversionError,
    Kind,
    convert_checkpoint,
    convert_state_dict,
)
from tldmi_jax.interop.gan_priors import convert_prior
from tldmi_jax.interop.gans import PRIORS
from tldmi_jax.interop.stylegan2 import convert_stylegan2
from tldmi_jax.interop.torch_load import UnsafeCheckpointError, load_state_dict

__all__ = [
    'KINDS',
    'PRIORS',
    'Conversion',
    'ConversionError',
    'Kind',
    'UnsafeCheckpointError',
    'convert',
    'convert_checkpoint',
    'convert_prior',
    'convert_stylegan2',
    'convert_state_dict',
    'gan_priors',
    'gans',
    'inception',
    'kinds',
    'load_state_dict',
    'mapping',
    'stylegan2',
    'stylegan2_pkl',
    'torch_load',
]
