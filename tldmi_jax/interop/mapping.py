"""Building blocks of the PyTorch -> Flax key mappings: one `Rule` per tensor.

A mapping function (see `tldmi_jax.interop.classifiers`) returns the list of rules that
fills a model's variables from a state dict. The helpers below produce the rules of one
PyTorch layer each, with the layout change it needs:

| PyTorch                          | Flax (linen, this package)                            |
| -------------------------------- | ----------------------------------------------------- |
| `Conv2d.weight` [O, I, kh, kw]   | `params/<layer>/kernel` [kh, kw, I, O] (HWIO)          |
| `Linear.weight` [out, in]        | `params/<layer>/kernel` [in, out] (transposed)         |
| `*.bias`                         | `params/<layer>/bias`                                  |
| `BatchNorm.weight` / `.bias`     | `params/<layer>/scale` / `params/<layer>/bias`         |
| `BatchNorm.running_mean` / `_var`| `batch_stats/<layer>/mean` / `batch_stats/<layer>/var` |
| `BatchNorm.num_batches_tracked`  | dropped (momentum is fixed at torch's 0.1)             |
| `PReLU.weight` [C]               | `params/<layer>/alpha`                                 |

A Linear layer after a flatten needs no permutation as long as the Flax model flattens in
NCHW order, as the VGG and IR heads of `tldmi_jax.models` do.
"""

import dataclasses
from collections.abc import Callable

import numpy as np


def identity(x: np.ndarray) -> np.ndarray:
    return x


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """Conv2d weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
    if w.ndim != 4:
        raise ValueError(f'expected a 4-d conv weight, got shape {w.shape}')
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """Linear weight [out, in] -> Flax Dense kernel [in, out]."""
    if w.ndim != 2:
        raise ValueError(f'expected a 2-d linear weight, got shape {w.shape}')
    return w.T


@dataclasses.dataclass(frozen=True)
class Rule:
    """Fills one target leaf from one source tensor.

    Attributes:
      src: source key (after the `module.` prefix is dropped and the kind's aliases apply).
      dst: '/'-joined target path including the collection, e.g. `params/fc/kernel`.
      transform: layout change applied to the source array.
    """

    src: str
    dst: str
    transform: Callable[[np.ndarray], np.ndarray] = identity


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix else name


def conv(src: str, dst: str, bias: bool = True) -> list[Rule]:
    """`nn.Conv2d` at `src` -> `nn.Conv` at `dst`."""
    rules = [Rule(_join(src, 'weight'), f'params/{dst}/kernel', oihw_to_hwio)]
    if bias:
        rules.append(Rule(_join(src, 'bias'), f'params/{dst}/bias'))
    return rules


def linear(src: str, dst: str, bias: bool = True) -> list[Rule]:
    """`nn.Linear` at `src` -> `nn.Dense` at `dst`."""
    rules = [Rule(_join(src, 'weight'), f'params/{dst}/kernel', linear_kernel)]
    if bias:
        rules.append(Rule(_join(src, 'bias'), f'params/{dst}/bias'))
    return rules


def batch_norm(src: str, dst: str, scale: bool = True, bias: bool = True) -> list[Rule]:
    """`nn.BatchNorm{1,2}d` at `src` -> `tldmi_jax.models.layers.BatchNorm` at `dst`.

    `num_batches_tracked` is not mapped; the converter ignores it everywhere.
    """
    rules = [
        Rule(_join(src, 'running_mean'), f'batch_stats/{dst}/mean'),
        Rule(_join(src, 'running_var'), f'batch_stats/{dst}/var'),
    ]
    if scale:
        rules.append(Rule(_join(src, 'weight'), f'params/{dst}/scale'))
    if bias:
        rules.append(Rule(_join(src, 'bias'), f'params/{dst}/bias'))
    return rules


def prelu(src: str, dst: str) -> list[Rule]:
    """`nn.PReLU(C)` at `src` -> `tldmi_jax.models.layers.PReLU` at `dst`."""
    return [Rule(_join(src, 'weight'), f'params/{dst}/alpha')]
