"""Config helpers: ':arg' variants and the protocol hash.

Configs are `ml_collections` files with `get_config(arg)`; `arg` is the text after
the colon in `--config=configs/celeba.py:arch=vgg16,defense=tldmi,runlocal`.
"""

import hashlib
import json
from typing import Any

import ml_collections


def _coerce(text: str, default: Any) -> Any:
    """Converts `text` to the type of `default`."""
    if isinstance(default, bool):
        if text.lower() in ('1', 'true', 'yes', ''):
            return True
        if text.lower() in ('0', 'false', 'no'):
            return False
        raise ValueError(f'Expected a boolean, got {text!r}.')
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_arg(arg: str | None, lazy: bool = False, **spec: Any) -> ml_collections.ConfigDict:
    """Parses `'a=1,b,c=x'` into a ConfigDict typed like the defaults in `spec`.

    A bare key (`runlocal`) means True. Values take the type of their default.

    Args:
      arg: the config argument string (may be None or empty).
      lazy: accept keys that are not in `spec` (kept as strings).
      **spec: the known keys and their defaults.

    Returns:
      A ConfigDict with every key of `spec`, overridden by `arg`.

    Raises:
      ValueError: for an unknown key (unless `lazy`) or an unparsable value.
    """
    result = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return result
    for item in arg.split(','):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition('=')
        key = key.strip()
        if key not in spec:
            if not lazy:
                raise ValueError(
                    f'Unknown config argument {key!r}; known: {", ".join(sorted(spec))}.'
                )
            result[key] = value if eq else True
            continue
        default = spec[key]
        if not eq and not isinstance(default, bool):
            raise ValueError(f'Config argument {key!r} needs a value ({key}=...).')
        result[key] = _coerce(value, default) if eq else True
    return result


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """Serialises a (resolved) config to stable, sorted JSON."""
    return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=str)


def protocol_hash(payload: Any) -> str:
    """A short, stable hash of anything JSON-serialisable (splits, identities, seeds...)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
