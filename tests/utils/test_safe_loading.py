"""No loader unpickles: a malicious pickle in any file a user can hand over is refused.

Every `.npz`/`.npy` a stage reads (reconstructions given to evaluate and fisher, feature
caches, attack batch files and p_reg, the PLG-MI pseudo-label cache, the dataset index
cache) holds an object array whose unpickling would create a marker file; each loader must
refuse it (real inputs: one error naming the file, never suggesting `allow_pickle`) or
rebuild it (caches) without creating the marker. PyTorch checkpoints (the converters) are
covered in tests/interop/test_safe_load.py. A source scan keeps new loaders honest.
"""

import os
import re
import types

import ml_collections
import numpy as np
import pytest

from tests.payloads import Payload
from tldmi_jax import reconstructions
from tldmi_jax.attacks import common, runner
from tldmi_jax.data import builders
from tldmi_jax.evaluation import features
from tldmi_jax.train import gan
from tldmi_jax.utils import npz

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _evil_array(marker):
    array = np.empty(1, dtype=object)
    array[0] = Payload(marker)
    return array


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'marker'
    yield path
    assert not path.exists(), 'a loader unpickled a malicious file'


def test_reconstructions_given_to_evaluate_are_not_unpickled(tmp_path, marker):
    np.savez(
        tmp_path / reconstructions.FILENAME,
        images=_evil_array(marker),
        identity=np.zeros(1, np.int32),
        seed=np.zeros(1, np.int32),
        batch=np.zeros(1, np.int32),
    )
    with pytest.raises(npz.NpzError, match='reconstructions.npz: cannot read the recons') as err:
        reconstructions.load(str(tmp_path))
    assert 'never unpickled' in str(err.value) and 'allow_pickle' not in str(err.value)


def test_feature_cache_ignores_a_pickled_file(tmp_path, marker):
    cache = features.FeatureCache(str(tmp_path / 'cache'))
    key = {'model': 'm'}
    os.makedirs(cache.directory)
    np.savez(cache.path('eval', key), features=_evil_array(marker))
    assert cache.load('eval', key) is None  # Refused: recomputed instead.
    arrays = cache.get_or_compute('eval', key, lambda: {'features': np.ones(2, np.float32)})
    np.testing.assert_array_equal(arrays['features'], 1.0)
    np.testing.assert_array_equal(cache.load('eval', key)['features'], 1.0)  # Replaced.


def test_attack_batch_files_are_refused_and_p_reg_rebuilt(tmp_path, marker, monkeypatch):
    batch = tmp_path / 'batch_000.npz'
    np.savez(batch, images=_evil_array(marker), losses=_evil_array(marker))
    with pytest.raises(npz.NpzError, match='batch_000.npz: cannot read the finished') as err:
        runner._read_batch(str(batch))
    assert 'allow_pickle' not in str(err.value)
    np.save(tmp_path / 'p_reg.npy', _evil_array(marker))
    monkeypatch.setattr(common, 'public_feature_mean', lambda target, images: np.ones(3))
    data = {'name': 'synthetic', 'root': None, 'data_dir': None}
    data['kwargs'] = {'num_classes': 2, 'image_size': 32}
    config = ml_collections.ConfigDict({'data': data})
    cfg = ml_collections.ConfigDict({'p_reg_samples': 2})
    np.testing.assert_array_equal(runner._p_reg(config, cfg, None, 32, str(tmp_path)), 1.0)
    np.testing.assert_array_equal(np.load(tmp_path / 'p_reg.npy', allow_pickle=False), 1.0)


def test_pseudo_label_cache_is_rebuilt_not_unpickled(tmp_path, marker, monkeypatch):
    np.savez(
        tmp_path / 'pseudo_labels.npz',
        top_n=_evil_array(marker),
        indices=_evil_array(marker),
        labels=_evil_array(marker),
    )
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    monkeypatch.setattr(gan, '_target_probs', lambda *args: probs)
    config = ml_collections.ConfigDict({'plgmi': {'top_n': 1}, 'batch_size': 2})
    indices, labels = gan.pseudo_labels(config, str(tmp_path), 't', None, None, [0, 1], None)
    assert sorted(zip(indices.tolist(), labels.tolist(), strict=True)) == [(0, 0), (1, 1)]
    assert npz.load(str(tmp_path / 'pseudo_labels.npz'), 'cache')['top_n'].item() == 1


class _Records:
    """A tiny stand-in for a TFDS data source: labels and filenames only."""

    def __init__(self, labels):
        self._labels = labels

    def __len__(self):
        return len(self._labels)

    def __getitems__(self, indices):
        return [{'label': self._labels[i], 'filename': f'{i}.png'} for i in indices]


def test_dataset_index_cache_is_rebuilt_not_unpickled(tmp_path, marker):
    builder = types.SimpleNamespace(
        name='stub',
        data_dir=str(tmp_path),
        info=types.SimpleNamespace(metadata={'num_classes': 2}),
        as_data_source=lambda split, decoders=None: _Records([1, 0, 1]),
    )
    np.savez(tmp_path / 'index-train.npz', labels=_evil_array(marker), filenames=np.arange(3))
    source = builders.TfdsSource(builder, 'train')
    assert source.labels.tolist() == [1, 0, 1]
    with np.load(tmp_path / 'index-train.npz', allow_pickle=False) as stored:
        assert stored['labels'].tolist() == [1, 0, 1]  # The cache was rewritten.


# Calls that may unpickle, and the argument that makes each one safe.
_UNSAFE = (
    (re.compile(r'\bnp\.load\('), 'allow_pickle=False'),
    (re.compile(r'\btorch\.load\('), 'weights_only=True'),
    (re.compile(r'\bpickle\.loads?\(|\bcloudpickle\b|\bdill\b|\bjoblib\.load\('), None),
)


def test_library_source_has_no_unsafe_load():
    found = []
    for directory in ('tldmi_jax', 'launch'):
        for dirpath, _, filenames in os.walk(os.path.join(ROOT, directory)):
            for name in filenames:
                if not name.endswith('.py'):
                    continue
                path = os.path.join(dirpath, name)
                for number, line in enumerate(open(path), 1):
                    code = line.split('#')[0]
                    for pattern, safe in _UNSAFE:
                        if pattern.search(code) and (safe is None or safe not in code):
                            found.append(f'{os.path.relpath(path, ROOT)}:{number}: {line.strip()}')
    assert not found, 'loads that may unpickle:\n' + '\n'.join(found)
