"""Reading the StyleGAN2-ADA network pickles (`ffhq.pkl`, `afhqdog.pkl`) without running them.

The released files are `pickle.dump`s of `{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}` whose networks are `torch_utils.persistence` objects: each pickles as
a call `_reconstruct_persistent_obj(meta)` where `meta` holds the source code of its Python
module (`module_src`), the class name and the object's `__dict__` (`state`: the
`nn.Module` internals `_parameters`, `_buffers`, `_modules` and the constructor arguments
`_init_args`, `_init_kwargs`). Loading them with `pickle.load` executes that source
(`exec(module_src)`) and anything else the pickle names.

`NetworkUnpickler` resolves only the globals these files need, each to a function written
here that runs nothing from the file:

- `torch_utils.persistence._reconstruct_persistent_obj` -> a `PersistentModule` record of
  `meta['state']`. `module_src` is never executed nor compiled, and a class that is not one
  of StyleGAN2-ADA's (`NETWORK_CLASSES`) is refused.
- `torch.storage._load_from_bytes` -> `torch.load(bytes, weights_only=True)`, PyTorch's
  restricted unpickler.
- `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter(_with_state)` -> a numpy array
  (float tensors as float32).
- `collections.OrderedDict`, `builtins.set`, `builtins.frozenset` -> themselves.
- `dnnlib.util.EasyDict` -> a plain `dict` subclass.
- `numpy.dtype`, `numpy(._)core.multiarray.scalar` -> numeric dtypes and scalars only (the
  `weight_gain` attributes).

Any other global is refused with `UnsafeCheckpointError` naming the file and the global;
nothing from the file is executed. PyTorch is imported only to read the tensors.

  network = read_network_pickle('ffhq.pkl')  # G_ema
  network.tensors['synthesis.b4.const'].shape  # (512, 4, 4)
  network.init_kwargs['synthesis_kwargs']['channel_base']  # 32768
"""

import collections
import dataclasses
import io
import os
import pickle
from typing import Any

import numpy as np

from tldmi_jax.interop import torch_load
from tldmi_jax.interop.torch_load import UnsafeCheckpointError

# The persistent classes of stylegan2-ada-pytorch (`training/networks.py`, `augment.py`).
NETWORK_CLASSES = frozenset(
    {
        'FullyConnectedLayer',
        'Conv2dLayer',
        'MappingNetwork',
        'SynthesisLayer',
        'ToRGBLayer',
        'SynthesisBlock',
        'SynthesisNetwork',
        'Generator',
        'DiscriminatorBlock',
        'MinibatchStdLayer',
        'DiscriminatorEpilogue',
        'Discriminator',
        'AugmentPipe',
    }
)
NETWORK_KEYS = ('G_ema', 'G', 'D')  # Networks a pickle holds (G_ema is what PPA uses).
_NUMERIC_DTYPES = frozenset(
    ['b1', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'f2', 'f4', 'f8']
)
_PERSISTENCE = 'torch_utils.persistence'
_NOTHING_RAN = 'Nothing from it was executed.'


@dataclasses.dataclass
class PersistentModule:
    """A persistence object as data: what `_reconstruct_persistent_obj` would have rebuilt.

    Attributes:
      class_name: e.g. 'Generator'.
      init_args, init_kwargs: the pickled constructor arguments.
      parameters, buffers: `{name: numpy array or None}` of this module only.
      modules: `{name: PersistentModule or None}`, the child modules.
      non_persistent: names of buffers that `state_dict()` leaves out.
    """

    class_name: str
    init_args: tuple
    init_kwargs: dict
    parameters: dict
    buffers: dict
    modules: dict
    non_persistent: frozenset

    def flat_tensors(self, prefix: str = '') -> dict[str, np.ndarray]:
        """`{dotted name: array}` of all parameters and persistent buffers, as `state_dict()`."""
        out = {}
        for name, value in self.parameters.items():
            if value is not None:
                out[f'{prefix}{name}'] = value
        for name, value in self.buffers.items():
            if value is not None and name not in self.non_persistent:
                out[f'{prefix}{name}'] = value
        for name, child in self.modules.items():
            if child is not None:
                out.update(child.flat_tensors(f'{prefix}{name}.'))
        return out


@dataclasses.dataclass
class NetworkPickle:
    """One network of a StyleGAN2-ADA pickle.

    Attributes:
      tensors: `{name: numpy array}` as its `state_dict()` (float32 for float tensors).
      class_name: its class ('Generator' for G_ema).
      init_args, init_kwargs: its constructor arguments (EasyDicts as plain dicts).
      key: which network of the pickle ('G_ema').
    """

    tensors: dict[str, np.ndarray]
    class_name: str
    init_args: list
    init_kwargs: dict
    key: str


class _EasyDict(dict):
    """`dnnlib.util.EasyDict` as a plain dict (its attribute access is not needed)."""


class NetworkUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` that resolves only the whitelisted globals (see the module doc)."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path
        self._torch = torch_load._import_torch()
        self._allowed = {
            ('collections', 'OrderedDict'): collections.OrderedDict,
            ('builtins', 'set'): set,
            ('builtins', 'frozenset'): frozenset,
            ('dnnlib.util', 'EasyDict'): _EasyDict,
            ('numpy', 'dtype'): self._dtype,
            ('numpy.core.multiarray', 'scalar'): self._scalar,
            ('numpy._core.multiarray', 'scalar'): self._scalar,
            ('torch.storage', '_load_from_bytes'): self._load_storage,
            ('torch._utils', '_rebuild_tensor_v2'): self._rebuild_tensor,
            ('torch._utils', '_rebuild_parameter'): self._rebuild_parameter,
            ('torch._utils', '_rebuild_parameter_with_state'): self._rebuild_parameter,
            (_PERSISTENCE, '_reconstruct_persistent_obj'): self._persistent,
        }

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f'Refused to load {self._path}: it names the global {module}.{name}, which '
                'a StyleGAN2-ADA network pickle does not need, and loading it would need '
                f'arbitrary code. {_NOTHING_RAN} Re-export the network in an environment '
                'you trust, or save its tensors only (torch.save(G_ema.state_dict(), ...)).'
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f'{self._path}: a persistent id ({pid!r:.80}) in a network pickle.')

    def _damaged(self, what: str) -> ValueError:
        return ValueError(f'{self._path} is not a readable StyleGAN2-ADA pickle: {what}.')

    def _dtype(self, name: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(name, str) or name not in _NUMERIC_DTYPES:
            raise self._damaged(f'numpy dtype {name!r:.40} is not a plain number type')
        return np.dtype(name)

    def _scalar(self, dtype: Any, data: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
            raise self._damaged('a numpy scalar without a numeric dtype and bytes')
        if len(data) != dtype.itemsize or dtype.kind not in 'biuf':
            raise self._damaged(f'a numpy scalar of {len(data)} bytes as {dtype}')
        return np.frombuffer(data, dtype)[0]

    def _load_storage(self, data: Any) -> Any:
        if not isinstance(data, bytes):
            raise self._damaged('a tensor storage that is not bytes')
        try:
            return self._torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f'Refused to load {self._path}: a tensor storage in it is not plain tensor '
                f'data ({torch_load._refusal_reason(str(e))}). {_NOTHING_RAN}'
            ) from None

    def _rebuild_tensor(self, storage, offset, size, stride, *rest) -> np.ndarray:
        if not isinstance(storage, self._torch.storage.TypedStorage):
            raise self._damaged('a tensor whose storage is not a tensor storage')
        ints = lambda xs: isinstance(xs, tuple | list) and all(type(v) is int for v in xs)  # noqa: E731
        if type(offset) is not int or not ints(size) or not ints(stride):
            raise self._damaged('a tensor with a bad offset, size or stride')
        tensor = self._torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))
        return torch_load._to_numpy(tensor)

    def _rebuild_parameter(self, data: Any, *rest) -> np.ndarray:
        if not isinstance(data, np.ndarray):
            raise self._damaged('a parameter that is not a tensor')
        return data

    def _persistent(self, meta: Any) -> PersistentModule:
        if not isinstance(meta, dict) or meta.get('type') != 'class':
            raise self._damaged('a persistence record that is not a class instance')
        class_name, state = meta.get('class_name'), meta.get('state')
        if class_name not in NETWORK_CLASSES:
            raise UnsafeCheckpointError(
                f'Refused to load {self._path}: it holds a {_PERSISTENCE} object of class '
                f'{class_name!r:.80}, which is not a StyleGAN2-ADA network class; its pickled '
                f'source code would run on loading. {_NOTHING_RAN}'
            )
        if not isinstance(state, dict):
            raise self._damaged(f'the {class_name} record has no state')
        parts = {}
        for field in ('_parameters', '_buffers', '_modules', '_init_kwargs'):
            value = state.get(field) or {}
            if not isinstance(value, dict):
                raise self._damaged(f'{class_name}.{field} is not a dict')
            parts[field] = value
        return PersistentModule(
            class_name=class_name,
            init_args=tuple(state.get('_init_args') or ()),
            init_kwargs=parts['_init_kwargs'],
            parameters=parts['_parameters'],
            buffers=parts['_buffers'],
            modules=parts['_modules'],
            non_persistent=frozenset(state.get('_non_persistent_buffers_set') or ()),
        )


def _plain(value: Any) -> Any:
    """Constructor arguments as JSON-able Python values (EasyDicts, numpy scalars, tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_tree(module: PersistentModule, where: str, path: str) -> None:
    """Raises ValueError unless every tensor is an array and every child a record."""
    for kind, items in (('parameter', module.parameters), ('buffer', module.buffers)):
        for name, value in items.items():
            if value is not None and not isinstance(value, np.ndarray):
                raise ValueError(f'{path}: {kind} {where}{name} is not a tensor.')
    for name, child in module.modules.items():
        if child is not None and not isinstance(child, PersistentModule):
            raise ValueError(f'{path}: module {where}{name} is not a persistence object.')
        if child is not None:
            _check_tree(child, f'{where}{name}.', path)


def read_network_pickle(path: str, key: str | None = None) -> NetworkPickle:
    """Reads one network of a StyleGAN2-ADA pickle, running nothing from the file.

    Args:
      path: the `.pkl` file (`ffhq.pkl`, `afhqdog.pkl`, a training snapshot).
      key: 'G_ema' (default), 'G' or 'D'.

    Returns:
      The network's tensors and constructor arguments.

    Raises:
      FileNotFoundError: naming `path` if it does not exist.
      UnsafeCheckpointError: a global outside the whitelist, a persistence object of
        another class, or tensor data that needs code (nothing was executed).
      ValueError: the file is not a readable network pickle, or has no network `key`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'StyleGAN2-ADA network pickle not found: {path} (expected the released ffhq.pkl '
            'or afhqdog.pkl of stylegan2-ada-pytorch, a training snapshot, or a tensors-only '
            'export .pth/.npz of G_ema)'
        )
    with open(path, 'rb') as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
            raise ValueError(
                f'{path} is not a StyleGAN2-ADA network pickle (it does not start like a '
                'pickle of protocol 2-5); a torch.save state dict goes in as .pth, arrays as .npz'
            )
        f.seek(0)
        try:
            data = NetworkUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ValueError(
                f'{path} is a damaged StyleGAN2-ADA pickle ({reason}); copy it again. '
                f'{_NOTHING_RAN}'
            ) from None
    key = key or NETWORK_KEYS[0]
    network = data.get(key) if isinstance(data, dict) else None
    if not isinstance(network, PersistentModule):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f'{path} has no network {key!r} (a StyleGAN2-ADA pickle holds {NETWORK_KEYS}); '
            f'found {found}.'
        )
    _check_tree(network, '', path)
    return NetworkPickle(
        tensors=network.flat_tensors(),
        class_name=network.class_name,
        init_args=_plain(list(network.init_args)),
        init_kwargs=_plain(network.init_kwargs),
        key=key,
    )
