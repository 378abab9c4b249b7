"""PNG image grids, optionally with a caption under each tile."""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tldmi_jax.utils import atomic


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [N, H, W, C] in [0, 1] (C = 1 or 3) -> uint8 [N, H, W, 3]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f'Expected images [N, H, W, 1|3], got shape {images.shape}.')
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_grid(
    images: np.ndarray,
    ncol: int | None = None,
    captions: Sequence[str] | None = None,
    pad: int = 2,
    scale: int = 1,
) -> Image.Image:
    """Tiles images row-major into one PIL image.

    Args:
      images: float [N, H, W, C] in [0, 1].
      ncol: tiles per row (default: ceil(sqrt(N))).
      captions: one short text per tile, drawn under it.
      pad: pixels between tiles.
      scale: integer upscaling of each tile (nearest), for small images.

    Returns:
      An RGB PIL image.
    """
    tiles = to_uint8(images)
    n, h, w, _ = tiles.shape
    if n == 0:
        raise ValueError('No images to tile.')
    if captions is not None and len(captions) != n:
        raise ValueError(f'{len(captions)} captions for {n} images.')
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    text_h = 12 if captions is not None else 0
    canvas = Image.new(
        'RGB', (ncol * (w + pad) + pad, nrow * (h + text_h + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, ncol)
        x, y = pad + c * (w + pad), pad + r * (h + text_h + pad)
        canvas.paste(Image.fromarray(tiles[i]), (x, y))
        if captions is not None:
            draw.text((x, y + h), str(captions[i]), fill=(0, 0, 0), font=font)
    return canvas


def save_grid(path: str, images: np.ndarray, **kwargs) -> str:
    """Writes `make_grid(images, **kwargs)` as a PNG at `path`; returns the path."""
    atomic.save_image(make_grid(images, **kwargs), path)
    return path
