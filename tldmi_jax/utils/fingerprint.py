"""Fingerprints of a run's inputs, so that a resumed run never mixes two versions of one.

The inputs of a stage are the config fields that name checkpoints or outputs of other
stages (`INPUT_FIELD`): `target.checkpoint`, `prior.checkpoint`, `init.checkpoint`,
`init.checkpoints.<arch>`, `augmented.checkpoints` (comma-separated), `eval_model.checkpoint`,
`attack_dir`, `fid.inception_checkpoint` and a sweep's `targets.<name>.checkpoint`, also
inside the stage configs a sweep or demo nests. A fingerprint is a SHA-256 over the files
that define the input, as the loaders pick them:

* a file: itself;
* an attack workdir: `reconstructions.npz` and `attack.json`;
* a prior (`prior.json` there or in `prior/`): the prior directory;
* a trainer workdir or model directory: `model_best/`, else `model_final/`, else the
  directory itself (`checkpoint.find_model_dir`);

skipping the owner marker, temporary files of the atomic writers and lock files. Each file
is read once in 1 MiB blocks (about a second for a 200 MB checkpoint).
"""

import hashlib
import json
import os
import re
from typing import Any

from tldmi_jax.utils import atomic, checkpoint

INPUT_FIELD = re.compile(
    r'(?:^|.*\.)(?:(?:target|prior|init|eval_model)\.checkpoint|init\.checkpoints\.[^.]+'
    r'|augmented\.checkpoints|attack_dir|fid\.inception_checkpoint|targets\.[^.]+\.checkpoint)'
)
_SKIPPED = re.compile(r'\.tldmi_jax.*|\..+\.tmp(\.\w+)?|\.write_test\..*|\.lock')
_BLOCK = 1 << 20


def input_paths(flat_config: dict[str, Any]) -> dict[str, list[str]]:
    """`{field: [absolute paths]}` for every input field that is set, in a flattened config."""
    found = {}
    for key, value in sorted(flat_config.items()):
        if not isinstance(value, str) or not value.strip() or not INPUT_FIELD.fullmatch(key):
            continue
        paths = [p.strip() for p in value.split(',')] if key.endswith('checkpoints') else [value]
        found[key] = [os.path.abspath(p) for p in paths if p]
    return found


def defining_files(path: str) -> tuple[str, list[str]]:
    """`(root, files)`: the files that define the input at `path`, relative to `root`."""
    if os.path.isfile(path):
        return os.path.dirname(path), [os.path.basename(path)]
    if not os.path.isdir(path):
        return path, []
    if os.path.isfile(os.path.join(path, 'reconstructions.npz')):
        names = ('reconstructions.npz', 'attack.json')
        return path, [n for n in names if os.path.isfile(os.path.join(path, n))]
    for candidate in (path, os.path.join(path, 'prior')):
        if os.path.isfile(os.path.join(candidate, 'prior.json')):
            return candidate, _walk(candidate)
    root = checkpoint.find_model_dir(path)
    return root, _walk(root)


def fingerprint(path: str) -> str:
    """SHA-256 (hex) over the names, sizes and bytes of `defining_files(path)`.

    A missing path fingerprints as 'missing'.
    """
    if not os.path.exists(path):
        return 'missing'
    root, files = defining_files(path)
    digest = hashlib.sha256()
    for name in files:
        full = os.path.join(root, name)
        digest.update(f'{name}\0{os.path.getsize(full)}\0'.encode())
        with open(full, 'rb') as f:
            while block := f.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def fingerprints(paths: dict[str, list[str]]) -> dict[str, list[dict[str, str]]]:
    """`{field: [{'path', 'sha256'}]}` for `input_paths(...)`."""
    return {
        field: [{'path': p, 'sha256': fingerprint(p)} for p in ps] for field, ps in paths.items()
    }


def changed(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """`(field, path)` of every input whose fingerprint differs from the recorded one.

    Fields recorded in only one of the two are not compared (a field the config sets anew
    is a config difference, which the workdir guard reports).
    """
    out = []
    for field in sorted(set(recorded) & set(current)):
        old = [e.get('sha256') for e in recorded[field]]
        new = [e['sha256'] for e in current[field]]
        if len(old) != len(new):
            out.append((field, ','.join(e['path'] for e in current[field])))
            continue
        out += [
            (field, e['path']) for a, e in zip(old, current[field], strict=True) if a != e['sha256']
        ]
    return out


def read(path: str) -> dict[str, Any] | None:
    """The content of an `inputs.json`, or None if it is absent or unreadable."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def write(path: str, workdir: str, inputs: dict[str, Any]) -> None:
    """Writes `inputs.json`: the run's workdir (absolute) and its inputs' fingerprints."""
    atomic.write_json(path, {'workdir': os.path.abspath(workdir), 'inputs': inputs})


def _walk(root: str) -> list[str]:
    files = []
    for directory, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(directory, name)
            if not _SKIPPED.fullmatch(name) and os.path.isfile(full):
                files.append(os.path.relpath(full, root))
    return files
