"""What the attack modules share: the attack context, identity losses, p_reg.

Losses here act on ONE instance (logits [K], features [F]); the loop vmaps them. The
original code averages its losses over a batch of `reference_batch` (60) identities and
steps with the gradient of that mean, so each latent sees its own term divided by 60.
The attack modules divide by `reference_batch` to reproduce those step sizes exactly while
keeping every instance independent of the others.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tldmi_jax import classifiers
from tldmi_jax.priors import Prior
from tldmi_jax.priors import plgmi as plgmi_prior


@dataclasses.dataclass(frozen=True)
class AttackContext:
    """Everything an attack module may use.

    Attributes:
      prior: the generative prior (generator + discriminator with variables).
      target: the attacked classifier, `images [B, H, W, C] -> (features, logits)`.
      augmented: LOMMA's augmented (distilled) models, same signature; may be empty.
      num_classes: the target's class count.
      image_size: the target's input size (the prior's output is resized if different).
      p_reg: mean penultimate feature of the target on public data (LOMMA), or None.
    """

    prior: Prior
    target: classifiers.BoundFn
    augmented: Sequence[classifiers.BoundFn] = ()
    num_classes: int = 0
    image_size: int = 64
    p_reg: jax.Array | None = None


def resize_to(images: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of [B, H, W, C] images to `size` (no-op if already that size)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    shape = (images.shape[0], size, size, images.shape[3])
    return jax.image.resize(images, shape, method='bilinear')


def cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] for one instance."""
    return -jax.nn.log_softmax(logits)[label]


def logit_loss(logits: jax.Array, label: jax.Array) -> jax.Array:
    """LOMMA's logit loss: -logits[label] (the original's NLLLoss on raw logits)."""
    return -logits[label]


def max_margin(logits: jax.Array, label: jax.Array) -> jax.Array:
    """PLG-MI's max-margin loss: -logit[label] + the largest other logit."""
    return plgmi_prior.max_margin_loss(logits[None], jnp.asarray(label)[None])


def log_sum_exp(logits: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(logits, axis=-1)


def kedmi_prior_loss(d_logits: jax.Array) -> jax.Array:
    """softplus(lse(D(x))) - lse(D(x)): KEDMI's 'real' score of the semi-supervised D."""
    lse = log_sum_exp(d_logits)
    return jax.nn.softplus(lse) - lse


IDENTITY_LOSSES = {'ce': cross_entropy, 'logit': logit_loss, 'margin': max_margin}


def identity_loss(
    ctx: AttackContext,
    images: jax.Array,
    label: jax.Array,
    *,
    loss: str = 'ce',
    use_augmented: bool = False,
    reg_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The identity term of one instance (images [1, H, W, C]).

    `loss` on the target's logits, averaged with the augmented models' when
    `use_augmented`, plus `reg_weight * mean((f_T(x) - p_reg)^2)` on the target only
    (LOMMA). This is the original `iden_loss` per instance.
    """
    if loss not in IDENTITY_LOSSES:
        raise ValueError(f'Unknown identity loss {loss!r}; use one of {sorted(IDENTITY_LOSSES)}.')
    fn = IDENTITY_LOSSES[loss]
    images = resize_to(images, ctx.image_size)
    features, logits = ctx.target(images)
    terms = [fn(logits[0], label)]
    if use_augmented:
        if not ctx.augmented:
            raise ValueError('This attack variant needs augmented models; none were given.')
        terms += [fn(model(images)[1][0], label) for model in ctx.augmented]
    total = sum(terms) / len(terms)
    aux = {'iden': total}
    if reg_weight:
        if ctx.p_reg is None:
            raise ValueError('The feature regulariser needs p_reg (public-feature mean).')
        reg = jnp.mean(jnp.square(features[0] - ctx.p_reg))
        total = total + reg_weight * reg
        aux['reg'] = reg
    return total, aux


def prior_plus_identity(
    ctx: AttackContext, cfg, prior_fn, images: jax.Array, label: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GMI/KEDMI's per-instance loss (prior + lam * identity) / reference_batch, and aux."""
    prior = prior_fn(ctx, images, label)
    iden, aux = identity_loss(
        ctx,
        images,
        label,
        loss=cfg.iden_loss,
        use_augmented=cfg.use_augmented,
        reg_weight=cfg.reg_weight,
    )
    return (prior + cfg.lam * iden) / cfg.reference_batch, {'prior': prior, **aux}


def public_feature_mean(
    target: classifiers.BoundFn, images: np.ndarray, batch_size: int = 100
) -> np.ndarray:
    """p_reg: the mean of the target's penultimate features over public images [N, H, W, C]."""
    apply = jax.jit(lambda x: target(x)[0])
    total, count = None, 0
    for start in range(0, len(images), batch_size):
        feats = np.asarray(apply(images[start : start + batch_size]), np.float64)
        total = feats.sum(0) if total is None else total + feats.sum(0)
        count += len(feats)
    if not count:
        raise ValueError('p_reg needs at least one public image.')
    return (total / count).astype(np.float32)
