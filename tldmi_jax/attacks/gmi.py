"""GMI (Zhang et al., CVPR 2020): optimise a point z through the GMI generator.

Loss = prior + lam * identity with prior = -D(G(z)) (WGAN critic) and identity = CE on the
target (or LOMMA's terms). The original update is v <- m v - lr g; z <- z - m v_prev +
(1 + m) v; clamp z to [-1, 1], which equals `optax.sgd(lr, m, nesterov=True)` followed by
the clamp (the tests check this against a transcription of the original update).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tldmi_jax.attacks import common
from tldmi_jax.attacks.latent_search import Problem

NAME = 'gmi'
PRIOR_KIND = 'gmi'
LOMMA = True  # LOMMA's identity terms apply (`attack.lomma`).


def prior_loss(ctx: common.AttackContext, images: jax.Array, label: jax.Array) -> jax.Array:
    """-D(G(z)) of the WGAN critic (one instance)."""
    del label
    d_vars = ctx.prior.variables['discriminator']
    return -jnp.mean(ctx.prior.discriminate(d_vars, images))


def point_problem(ctx, cfg, prior_fn, tx) -> Problem:
    """A point latent z ~ N(0, I), clamped; the loss is prior + lam * identity, scaled."""
    z_dim = ctx.prior.z_dim
    g_vars = ctx.prior.variables['generator']

    def init(key):
        return jax.random.normal(key, (z_dim,))  # Unclamped, as the original's first step.

    def loss(z, label, key):
        del key
        images = ctx.prior.generate(g_vars, z[None])
        return common.prior_plus_identity(ctx, cfg, prior_fn, images, label)

    def project(z):
        return jnp.clip(z, -cfg.clip, cfg.clip)

    def render(z, label, key):
        del label, key
        return ctx.prior.generate(g_vars, z[None])

    return Problem(init=init, loss=loss, tx=tx, project=project, render=render)


def make_problem(ctx: common.AttackContext, cfg: ml_collections.ConfigDict) -> Problem:
    """The GMI attack (or LOMMA+GMI when cfg selects the LOMMA identity terms)."""
    tx = optax.sgd(cfg.lr, momentum=cfg.momentum, nesterov=True)
    return point_problem(ctx, cfg, prior_loss, tx)
