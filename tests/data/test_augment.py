"""color_jitter: torchvision's ColorJitter semantics, on hand-computed values."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldmi_jax.data import augment

# A 2 x 2 RGB image.
IMAGE = np.array(
    [[[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]], [[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]]], np.float32
)


def test_brightness_only_scales_and_clamps():
    @jax.jit  # One program for every comparison below (test time).
    def outputs(key):
        out = augment.color_jitter(key, IMAGE, brightness=0.5)
        params = augment.jitter_params(key, brightness=0.5)
        return out, params, augment.adjust_brightness(IMAGE, 1.5)

    out, (order, factors), fixed = outputs(jax.random.key(3))
    f = float(factors[0])
    assert 0.5 <= f <= 1.5 and sorted(order.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(out, np.clip(f * IMAGE, 0, 1), rtol=1e-6)
    # A fixed factor, by hand: 1.5 x, clamped at 1.
    want = [[[0.3, 0.6, 0.9], [1.0, 0.75, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]
    np.testing.assert_allclose(fixed, want, rtol=1e-6)


def test_contrast_and_saturation_by_hand():
    # Grey levels 0.299 r + 0.587 g + 0.114 b: 0.363, 0.5925, 0, 0.9; mean 0.463875.
    grey = np.array([[0.363, 0.5925], [0.0, 0.9]], np.float32)
    np.testing.assert_allclose(augment.grayscale(IMAGE)[..., 0], grey, rtol=1e-5)
    np.testing.assert_allclose(
        augment.adjust_contrast(IMAGE, 0.5), 0.5 * IMAGE + 0.5 * 0.463875, rtol=1e-5
    )
    np.testing.assert_allclose(
        augment.adjust_saturation(IMAGE, 0.0), np.repeat(grey[..., None], 3, -1), rtol=1e-5
    )
    # Factor 2 extrapolates away from grey and clamps: pixel (0, 1) -> (1, 0.4075, 0).
    np.testing.assert_allclose(
        augment.adjust_saturation(IMAGE, 2.0)[0, 1], [1.0, 0.4075, 0.0], rtol=1e-5
    )


def test_hue_is_colorsys_rotation():
    pixels = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
    pixels[:4] = [[1, 0, 0], [0.5, 0.5, 0.5], [0, 1, 1], [1, 1, 0]]  # Edge cases, grey.
    adjust_hue = jax.jit(augment.adjust_hue)  # One program for the three shifts (test time).
    for shift in (0.25, -0.1, 0.5):
        want = [
            colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            for h, s, v in (colorsys.rgb_to_hsv(*p) for p in pixels)
        ]
        np.testing.assert_allclose(adjust_hue(pixels, shift), want, atol=2e-6)


def test_order_is_a_traced_permutation():
    a, b = jnp.array([0, 1, 2, 3]), jnp.array([3, 2, 1, 0])
    factors = jnp.array([1.3, 0.7, 1.5, 0.2])

    @jax.jit  # One program for the reference values below (test time).
    def references(factors):
        by_hand = IMAGE
        for op, f in zip(
            (augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation),
            factors[:3],
            strict=True,
        ):
            by_hand = op(by_hand, f)
        orders = jax.vmap(lambda i: augment.jitter_params(jax.random.key(i), 0.1)[0])(jnp.arange(8))
        return augment.adjust_hue(by_hand, factors[3]), orders

    by_hand, orders = references(factors)
    apply = jax.jit(augment.apply_jitter)
    np.testing.assert_allclose(apply(IMAGE, a, factors), by_hand, atol=1e-6)
    assert not np.allclose(apply(IMAGE, b, factors), by_hand, atol=1e-3)
    orders = {tuple(order.tolist()) for order in orders}
    assert len(orders) > 1


def test_identity_when_off_and_range_under_vmap():
    key = jax.random.key(0)
    assert augment.color_jitter(key, IMAGE) is IMAGE
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 4, 4, 3)), jnp.float32)
    keys = jax.random.split(key, 8)
    out = jax.jit(jax.vmap(lambda k, x: augment.color_jitter(k, x, 0.9, 0.9, 0.9, 0.5)))(
        keys, images
    )
    assert out.shape == images.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not np.allclose(out[0], out[1] - images[1] + images[0])  # Per-example draws.
    with pytest.raises(ValueError, match='hue must be in'):
        augment.color_jitter(key, IMAGE, hue=0.6)
    with pytest.raises(ValueError, match='contrast must be >= 0'):
        augment.jitter_params(key, contrast=-0.1)
