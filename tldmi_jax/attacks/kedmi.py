"""KEDMI (Chen et al., ICCV 2021): learn a Gaussian (mu, log sigma^2) per identity.

Each step draws z = clamp(mu + exp(log_var / 2) * eps, -1, 1) and minimises
prior + lam * identity with KEDMI's prior softplus(lse(D(G(z)))) - lse(D(G(z))) of the
semi-supervised discriminator; Adam (lr 0.02) on (mu, log_var), both initialised to 0 as in
TL-DMI (LOMMA's upstream initialises log_var to 1: `init_log_var=1.0`). At the end
`samples` (5) images per identity are drawn from the learned distribution.

Deviation: the original evaluates the minibatch-discrimination D on the whole batch of 60
identities at once, which couples identities; here D sees each sample alone, so an
identity's result does not depend on its batch (documented in the README).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tldmi_jax.attacks import common
from tldmi_jax.attacks.latent_search import Problem

NAME = 'kedmi'
PRIOR_KIND = 'kedmi'
LOMMA = True  # LOMMA's identity terms apply (`attack.lomma`).


def prior_loss(ctx: common.AttackContext, images: jax.Array, label: jax.Array) -> jax.Array:
    """KEDMI's prior on one instance (mean over its batch of one)."""
    del label
    _, d_logits = ctx.prior.discriminate(ctx.prior.variables['discriminator'], images)
    return jnp.mean(common.kedmi_prior_loss(d_logits))


def gaussian_problem(ctx, cfg, prior_fn, tx) -> Problem:
    """A Gaussian latent per instance, sampled with the reparameterisation trick."""
    z_dim = ctx.prior.z_dim
    g_vars = ctx.prior.variables['generator']

    def sample(latent, key, n):
        eps = jax.random.normal(key, (n, z_dim))
        z = latent['mu'] + jnp.exp(0.5 * latent['log_var']) * eps
        return jnp.clip(z, -cfg.clip, cfg.clip)

    def init(key):
        del key
        return {'mu': jnp.zeros((z_dim,)), 'log_var': jnp.full((z_dim,), cfg.init_log_var)}

    def loss(latent, label, key):
        images = ctx.prior.generate(g_vars, sample(latent, key, 1))
        return common.prior_plus_identity(ctx, cfg, prior_fn, images, label)

    def render(latent, label, key):
        del label
        return ctx.prior.generate(g_vars, sample(latent, key, cfg.samples))

    return Problem(init=init, loss=loss, tx=tx, render=render)


def make_problem(ctx: common.AttackContext, cfg: ml_collections.ConfigDict) -> Problem:
    """The KEDMI attack (or LOMMA+KEDMI with the LOMMA identity terms)."""
    return gaussian_problem(ctx, cfg, prior_loss, optax.adam(cfg.lr))
