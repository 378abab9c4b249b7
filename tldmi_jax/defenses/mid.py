"""MID (Wang et al., AAAI 2021): a variational information bottleneck between features and fc.

As in `Jiachen-T-Wang/mi-defense` (`model.py:VGG16_vib`, `engine.py:train_vib`): a linear
layer `vib` maps the features to `2k` statistics, `mu` (first half) and
`std = softplus(raw - 5)` (second half); training feeds the sample `mu + std * eps` to the
classifier `fc`, whose input size becomes `k` (the original's `k = feat_dim // 2`), and adds
`beta * KL(N(mu, std^2) || N(0, I))` (summed over the k dimensions, averaged over the batch)
to the cross-entropy. Their CelebA betas are 0.003, 0.01 and 0.02 (`Defend_MI`: VGG16 natural
accuracy 79.82, 70.98 and 59.14).

`VIB` wraps any registered classifier without renaming its parameters
(`nn.share_scope`): the backbone keeps its paths (`conv1_1/...`, `fc/...`) and the head
gains `vib/{kernel,bias}`, so pretrained loading, freezing and the Fisher analysis keep
working. The bottleneck is spliced in by intercepting the inner model's `fc` call; the
returned features are the inner model's features (the original returns the backbone
features too).

Deviations: the original samples at test time as well (its `test()` and `predict()` draw
a fresh `eps`); here inference uses `mu`, so evaluation and attacks are deterministic and
need no rng. The wrapped model keeps the architecture's own head layers before `fc` (for
VGG16 the BatchNorm1d `head_bn`, which `VGG16_vib` lacks).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tldmi_jax.defenses import transfer

GROUP = 'vib'
_STD_SHIFT = 5.0  # softplus(raw - 5): the original's initial std is about 0.0067.


def kl_divergence(mu: jax.Array, std: jax.Array) -> jax.Array:
    """KL(N(mu, diag(std^2)) || N(0, I)) per example; mu, std [B, k] (std > 0) -> [B]."""
    return -0.5 * jnp.sum(1.0 + 2.0 * jnp.log(std) - mu**2 - std**2, axis=-1)


class Bottleneck(nn.Module):
    """`vib`: features [B, d] -> a sample (training) or the mean (inference), [B, k].

    Attributes:
      k: bottleneck size (0: d // 2, as the original).
    """

    k: int = 0

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        d = features.shape[-1]
        k = self.k or max(d // 2, 1)
        kernel = self.param('kernel', nn.initializers.lecun_normal(), (d, 2 * k), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (2 * k,), jnp.float32)
        stats = features @ kernel + bias
        mu, raw = stats[:, :k], stats[:, k:]
        std = jax.nn.softplus(raw - _STD_SHIFT)
        self.sow('intermediates', 'mu', mu)
        self.sow('intermediates', 'std', std)
        if not train:
            return mu
        # The trainer's 'dropout' stream: no extra rng plumbing, a distinct key per call site.
        return mu + std * jax.random.normal(self.make_rng('dropout'), mu.shape, mu.dtype)


class VIB(nn.Module):
    """A classifier with a VIB head before its `fc`, returning `(features, logits)`.

    Attributes:
      inner: a registered classifier whose last layer is a Dense named `fc`.
      k: bottleneck size (0: half the feature size).
    """

    inner: nn.Module
    k: int = 0

    def setup(self):
        nn.share_scope(self, self.inner)  # Keep the inner parameter paths at the top level.

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    @property
    def layer_groups(self) -> tuple[tuple[str, str], ...]:
        """The inner groups with `vib` before the head (trained with it)."""
        groups = tuple(self.inner.layer_groups)
        return (*groups[:-1], (GROUP, f'{GROUP}/.*'), groups[-1])

    @property
    def cut_points(self) -> dict[str, str]:
        """The inner aliases; `head` (and any alias of the head group) starts at `vib`."""
        head = self.inner.layer_groups[-1][0]
        points = dict(getattr(self.inner, 'cut_points', {}) or {})
        points = {alias: GROUP if name == head else name for alias, name in points.items()}
        points.setdefault('head', GROUP)
        return points

    @property
    def OFFICIAL_FREEZE_LAYERS(self) -> int | None:  # noqa: N802 (the models' constant name)
        return transfer.official_freeze_layers(self.inner)

    def official_frozen_groups(self, k: int, freeze_stem: bool = False) -> tuple[str, ...]:
        """The inner model's translation of `freeze_layers=k` (`vib` always trains)."""
        return self.inner.official_frozen_groups(k, freeze_stem=freeze_stem)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies images through the bottleneck.

        Args:
          x: images as the inner model takes them.
          train: sample the bottleneck (needs the 'dropout' rng) and train the inner model.

        Returns:
          `(features, logits)`: the inner features [B, d] and logits [B, num_classes].

        Raises:
          ValueError: if the inner model has no `fc` layer.
        """
        bottleneck = Bottleneck(self.k, name=GROUP)
        spliced = []

        def splice(next_fun, args, kwargs, context):
            scope = context.module.scope
            if (
                context.method_name == '__call__'
                and scope is not None
                and tuple(scope.path) == ('fc',)
            ):
                spliced.append(True)
                return next_fun(bottleneck(args[0], train), *args[1:], **kwargs)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(splice):
            features, logits = self.inner(x, train=train)
        if not spliced:
            raise ValueError(f'{type(self.inner).__name__} has no `fc` layer for the VIB head.')
        return features, logits


def wrap(model: nn.Module, k: int = 0) -> VIB:
    """Wraps a classifier with the VIB head.

    Raises:
      ValueError: for a negative `k`.
    """
    if k < 0:
        raise ValueError(f'defense.mid_k must be >= 0 (0: half the feature size), got {k}.')
    return VIB(inner=model, k=int(k))


def wrap_for_checkpoint(model: nn.Module, params: Any) -> nn.Module:
    """Wraps `model` if `params` hold a VIB head (its size read from `vib/kernel`)."""
    if GROUP not in params or isinstance(model, VIB):
        return model
    return wrap(model, k=int(jnp.shape(params[GROUP]['kernel'])[-1]) // 2)


def statistics(intermediates: Any) -> tuple[jax.Array, jax.Array]:
    """`(mu, std)` [B, k] sown by the bottleneck in a forward pass's 'intermediates'."""
    sown = intermediates[GROUP]
    return sown['mu'][0], sown['std'][0]
