"""Image grids."""

import numpy as np
import pytest
from PIL import Image

from tldmi_jax.reporting import grids


def test_grid_layout_and_pixels(tmp_path):
    images = np.zeros((5, 4, 4, 1), np.float32)
    images[1] = 1.0
    path = grids.save_grid(str(tmp_path / 'g.png'), images, ncol=3, pad=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert (grid[1:5, 6:10] == 255).all() and (grid[1:5, 1:5] == 0).all()


def test_captions_and_errors():
    grid = grids.make_grid(np.ones((2, 8, 8, 3)), captions=['a', 'b'], scale=2)
    assert grid.size[1] > 16 + 12
    with pytest.raises(ValueError, match='captions'):
        grids.make_grid(np.ones((2, 8, 8, 3)), captions=['a'])
    with pytest.raises(ValueError, match='Expected images'):
        grids.make_grid(np.ones((8, 8, 3)))
