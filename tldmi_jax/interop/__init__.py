"""PyTorch interoperability: safe checkpoint reading and converters to tldmi_jax models.

`convert.convert_checkpoint(kind, src, dst)` converts a PyTorch `.pth`/`.tar` of a
registered kind (`convert.KINDS`) to a model checkpoint; `gans.convert_prior(family,
g_src, d_src, dst)` converts the generator and discriminator files of a GMI, KEDMI or
PLG-MI GAN into a prior directory (`tldmi_jax.priors.load_prior`);
`torch_load.load_state_dict` reads checkpoints with PyTorch's restricted unpickler.
PyTorch is imported only when a checkpoint is read.
"""

from tldmi_jax.interop import convert, gans, inception, mapping, torch_load
from tldmi_jax.interop.convert import (
    KINDS,
    Conversion,
    ConversionError,
    Kind,
    convert_checkpoint,
    convert_state_dict,
)
from tldmi_jax.interop.gans import PRIORS, convert_prior
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
    'convert_state_dict',
    'gans',
    'inception',
    'load_state_dict',
    'mapping',
    'torch_load',
]
