"""The reconstructions file format."""

import numpy as np
import pytest

from tldmi_jax import reconstructions


def test_round_trip(tmp_path):
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 3))
    reconstructions.save(
        str(tmp_path), images, [0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0], {'attack': 'gmi'}
    )
    arrays, meta = reconstructions.load(str(tmp_path))
    np.testing.assert_allclose(arrays['images'], images.astype(np.float32))
    assert arrays['identity'].tolist() == [0, 0, 1, 1] and meta == {'attack': 'gmi'}


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='reconstructions.npz'):
        reconstructions.load(str(tmp_path))
    with pytest.raises(ValueError, match='identity has shape'):
        reconstructions.save(str(tmp_path), np.zeros((2, 4, 4, 3)), [0], [0, 0], [0, 0])
