"""PLG-MI (Yuan et al., AAAI 2023): search z of the pseudo-label-guided conditional GAN.

z ~ N(0, I) (dim 128), the generator is conditioned on the target identity, and the loss
is the max-margin loss on two random augmented views (the same differentiable augmentation
the PLG-MI GAN trains with), Adam lr 0.1 for 600 steps, 5 seeds.
There is no prior term (the conditional generator is the prior).
"""

import jax
import ml_collections
import optax

from tldmi_jax.attacks import common
from tldmi_jax.attacks.latent_search import Problem
from tldmi_jax.priors import plgmi as plgmi_prior

NAME = 'plgmi'
PRIOR_KIND = 'plgmi'
LOMMA = False  # Its own max-margin identity loss; LOMMA does not apply.


def make_problem(ctx: common.AttackContext, cfg: ml_collections.ConfigDict) -> Problem:
    """The PLG-MI reconstruction stage."""
    z_dim = ctx.prior.z_dim
    g_vars = ctx.prior.variables['generator']
    scale = 1.0 / cfg.reference_batch

    def init(key):
        return jax.random.normal(key, (z_dim,))

    def generate(z, label):
        return ctx.prior.generate(g_vars, z[None], label[None])

    def loss(z, label, key):
        image = generate(z, label)[0]
        total = 0.0
        for key_v in jax.random.split(key, cfg.views):
            view = plgmi_prior.augment(key_v, image[None])
            term, _ = common.identity_loss(ctx, view, label, loss=cfg.iden_loss)
            total = total + term
        return scale * total, {'iden': total}

    def render(z, label, key):
        del key
        return generate(z, label)

    return Problem(init=init, loss=loss, tx=optax.adam(cfg.lr), render=render)
