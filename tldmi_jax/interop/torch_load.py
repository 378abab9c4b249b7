"""Safe reading of PyTorch checkpoints (`.pth`/`.tar`) into flat numpy state dicts.

Only tensors and plain containers are read: `torch.load(..., weights_only=True)` uses
PyTorch's restricted unpickler, which refuses any global (class or function) that is not a
known tensor type. A checkpoint that would need arbitrary code to load (a pickled
`nn.Module`, an object with a custom `__reduce__`, ...) is refused with
`UnsafeCheckpointError`; nothing in it is executed.

PyTorch is imported here, lazily: it is needed only to read checkpoints, never to run
models, so `import tldmi_jax` works without it.
"""

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

# Keys under which training scripts commonly nest the weights, tried in this order.
NESTED_KEYS = (
    'state_dict',
    'model_state_dict',
    'model',
    'net',
    'network',
    'module',
    'state',
    'params',
    'weights',
)
# Prefixes that wrappers add to every key (`nn.DataParallel`, DistributedDataParallel).
WRAPPER_PREFIXES = ('module.',)

_INSTALL_HINT = 'pip install torch==2.13.0 (the CPU build; or pip install -r requirements-test.txt)'


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs arbitrary code to load; it was refused and nothing ran."""


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(f'Reading PyTorch checkpoints needs PyTorch: {_INSTALL_HINT}') from e
    return torch


def _refusal_reason(message: str) -> str:
    """The line of PyTorch's restricted-unpickler message that says what was rejected."""
    for pattern in (r'Unsupported global:[^\n]*', r'[^\n]*unsupported GLOBAL[^\n]*'):
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            return found.group(0).strip()
    found = re.search(r'Unsupported operand[^\n]*', message)
    if found:
        return f'{found.group(0).strip()} (not a tensor-only PyTorch checkpoint)'
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else message


def read_checkpoint(path: str) -> Any:
    """Reads a PyTorch checkpoint with the restricted unpickler (tensors and containers only).

    Args:
      path: a `.pth`/`.tar`/`.pt` file written by `torch.save`.

    Returns:
      The loaded object (usually a dict), with tensors on the CPU.

    Raises:
      FileNotFoundError: naming `path` if it does not exist.
      UnsafeCheckpointError: if the file needs code other than tensor reconstruction
        (the error names the file and the rejected global).
      ValueError: if the file is not a readable PyTorch checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'PyTorch checkpoint not found: {path}')
    _check_format(path)
    torch = _import_torch()
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if not _GLOBAL_REFUSED.search(message):  # Bytes the unpickler cannot parse.
            found = re.search(r'Unsupported operand[^\n]*', message)
            raise ValueError(
                f'{path} is not a readable PyTorch checkpoint: its pickle data does not parse '
                f'({found.group(0).strip() if found else "unknown opcode"}); the file is '
                'damaged or was not written by torch.save. Nothing from it was executed.'
            ) from None
        raise UnsafeCheckpointError(
            f'Refused to load {path}: it is not a tensors-only checkpoint, and loading it '
            f'would need arbitrary code ({_refusal_reason(message)}). Nothing from it was '
            'executed. Re-save only the weights (`torch.save(model.state_dict(), ...)`) in an '
            'environment you trust, then convert that file.'
        ) from None
    except EOFError:
        raise ValueError(
            f'{path} is a truncated PyTorch checkpoint (it ends early); copy it again'
        ) from None
    except Exception as e:  # torch raises several types for a damaged or foreign file
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        reason = lines[0].split('. ')[0][:200]
        raise ValueError(f'{path} is a damaged PyTorch checkpoint ({reason}); copy it again') from e


# What `torch.save` writes: a zip archive (since PyTorch 1.6) or a pickle (the legacy
# format, which starts with the pickle PROTO opcode).
_ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')
_PICKLE_PROTO = 0x80
_GLOBAL_REFUSED = re.compile(r'unsupported global', flags=re.IGNORECASE)


def _check_format(path: str) -> None:
    """Raises ValueError, naming `path`, unless it starts like a file `torch.save` wrote."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        raise ValueError(f'{path} is empty, not a PyTorch checkpoint')
    legacy = len(head) >= 2 and head[0] == _PICKLE_PROTO and 2 <= head[1] <= 5
    if head.startswith(_ZIP_MAGIC) or legacy:
        return
    raise ValueError(
        f'{path} is not a PyTorch checkpoint: it is neither a zip archive (torch.save) nor a '
        'pickle (legacy torch.save); check that the path names the .pth/.tar file'
    )


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith('torch') and hasattr(value, 'detach')


def _find_state_dict(obj: Any, path: str, key: str | None) -> tuple[Mapping, str]:
    """Returns `(state_dict, where)`: the mapping of tensors inside a loaded checkpoint."""
    where = ''
    if key is not None:
        for part in key.split('/'):
            if not isinstance(obj, Mapping) or part not in obj:
                found = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
                raise ValueError(f'{path}: no entry {key!r} (at {part!r}; found {found}).')
            obj, where = obj[part], f'{where}/{part}' if where else part
    while True:
        if not isinstance(obj, Mapping):
            raise ValueError(
                f'{path}: expected a state dict (a mapping of tensors), got {type(obj).__name__}'
                + (f' at {where!r}' if where else '')
            )
        # A known nesting key wins, even beside stray tensors (e.g. a `best_acc` tensor).
        nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)][:1]
        if not nested:
            if any(_is_tensor(v) for v in obj.values()):
                return obj, where
            nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
        if len(nested) != 1:
            raise ValueError(
                f'{path}: cannot tell which entry holds the weights'
                + (f' under {where!r}' if where else '')
                + f'; top-level keys: {list(obj)}. Pass the key explicitly (--src_key).'
            )
        obj, where = obj[nested[0]], f'{where}/{nested[0]}' if where else nested[0]


def strip_wrapper_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Removes a leading `module.` (DataParallel) from keys; repeated wrappers too."""
    out = {}
    for name, value in state.items():
        original = name
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        if name in out:
            raise ValueError(f'Key {original!r} collides with another key once the prefix is cut.')
        out[name] = value
    return out


def _to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy().copy()


def load_state_dict(path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """Loads the weights of a PyTorch checkpoint as a flat `{name: numpy array}` dict.

    Finds the state dict if it is nested (under `state_dict`, `model`, `net`, ...; see
    `NESTED_KEYS`, or the only nested mapping), drops a `module.` prefix, converts floating
    tensors to float32 numpy arrays and skips non-tensor entries (e.g. an `epoch` counter
    inside the state dict).

    Args:
      path: the checkpoint file.
      key: explicit '/'-separated path of the state dict inside the checkpoint (e.g.
        `state_dict`); None finds it.

    Returns:
      The flat state dict.

    Raises:
      FileNotFoundError, UnsafeCheckpointError, ValueError: see `read_checkpoint`; also
        ValueError if no state dict is found.
    """
    obj = read_checkpoint(path)
    state, _ = _find_state_dict(obj, path, key)
    tensors = {str(k): _to_numpy(v) for k, v in state.items() if _is_tensor(v)}
    return strip_wrapper_prefix(tensors)
