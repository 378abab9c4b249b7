"""Losses of the three GAN priors, and the per-kind D and G loss functions of the trainer.

`make_loss_fns(prior, config, target)` returns `(d_loss, g_loss)`, pure functions

  d_loss(d_params, d_state, g_params, g_state, batch, target_vars, key)
      -> (loss, (metrics, new_d_state, new_g_state))
  g_loss(g_params, g_state, d_params, d_state, batch, target_vars, key)
      -> (loss, (metrics, new_g_state, new_d_state))

differentiated with respect to their first argument. `*_state` are the non-parameter
collections ('batch_stats' of G, 'spectral' of the PLG-MI D). As in the original code the
generator runs in training mode in both steps (so its BatchNorm statistics follow every
fake batch) and the PLG-MI discriminator runs one spectral-norm power iteration per call.

* gmi (`engine.train_general_gan`): WGAN-GP. D: -(E D(x) - E D(G(z))) + gp_weight * GP on
  random interpolates; G: -E D(G(z)).
* kedmi (`engine.train_specific_gan`): D: soft CE between D logits on public x and the
  softmax of the target's logits + 0.5 [E softplus(lse D(x_u)) - E lse D(x_u) +
  E softplus(lse D(G(z)))]; G: |E f(G(z)) - E f(x_u2)|_1 (mean over features) +
  1e-4 * entropy of D(G(z)) (summed over the batch, as the original `HLoss`).
* plgmi (`train_cgan.py`): hinge loss; D sees real (pseudo-labelled, + U(0, 1/256) noise)
  and fake images with labels; G: -E D(G(z, y), y) + alpha * max-margin loss of the target
  on augmented G(z, y).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tldmi_jax.priors import Prior, plgmi
from tldmi_jax.priors.layers import SPECTRAL


def gradient_penalty(critic: Callable, real: jax.Array, fake: jax.Array, key: jax.Array):
    """WGAN-GP: E (||grad_x D(x_hat)||_2 - 1)^2 on x_hat = real + a (fake - real), a ~ U(0, 1)."""
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
    x_hat = real + alpha * (fake - real)
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1))
    return jnp.mean(jnp.square(norms - 1.0))


def soft_cross_entropy(logits: jax.Array, target_logits: jax.Array) -> jax.Array:
    """-sum softmax(target) * log_softmax(logits), averaged over the batch."""
    probs = jax.nn.softmax(target_logits, axis=-1)
    return -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1)) / logits.shape[0]


def kedmi_unlabeled_loss(out_unl: jax.Array, out_fake: jax.Array) -> jax.Array:
    """Improved-GAN unsupervised term (before the original's factor 0.5).

    With D(x) = Z(x) / (Z(x) + 1), Z = sum exp(logits): -E log D(x_u) - E log(1 - D(x_f))
    = E softplus(lse(x_u)) - E lse(x_u) + E softplus(lse(x_f)).
    """
    lse_u = jax.nn.logsumexp(out_unl, axis=1)
    lse_f = jax.nn.logsumexp(out_fake, axis=1)
    return jnp.mean(jax.nn.softplus(lse_u)) - jnp.mean(lse_u) + jnp.mean(jax.nn.softplus(lse_f))


def entropy(logits: jax.Array) -> jax.Array:
    """-sum softmax * log_softmax over the classes and the batch (the original's `HLoss`)."""
    return -jnp.sum(jax.nn.softmax(logits, -1) * jax.nn.log_softmax(logits, -1))


def hinge_d_loss(dis_fake: jax.Array, dis_real: jax.Array) -> jax.Array:
    """E relu(1 - D(x)) + E relu(1 + D(G(z)))."""
    return jnp.mean(jax.nn.relu(1.0 - dis_real)) + jnp.mean(jax.nn.relu(1.0 + dis_fake))


def hinge_g_loss(dis_fake: jax.Array) -> jax.Array:
    """-E D(G(z))."""
    return -jnp.mean(dis_fake)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def make_loss_fns(prior: Prior, config: ml_collections.ConfigDict, target: Any = None):
    """The D and G loss functions of `prior.kind` (see the module docstring).

    Args:
      prior: the prior being trained (its modules; variables are passed to the losses).
      config: the train_gan config (n.b. `gp_weight`, `kedmi`, `plgmi`, `target`).
      target: the target classifier module (kedmi, plgmi), called as
        `target.apply(vars, x, train=False) -> (features, logits)`.

    Returns:
      `(d_loss, g_loss)`.
    """
    g, d, kind, zd = prior.generator, prior.discriminator, prior.kind, prior.z_dim
    k = prior.num_classes

    def run_g(g_params, g_state, z, y):
        variables = {'params': g_params, **g_state}
        args = (z, y) if kind == 'plgmi' else (z,)
        return g.apply(variables, *args, train=True, mutable=['batch_stats'])

    def target_logits(target_vars, x, key):
        if config.target.get('train_mode', False):
            # The original KEDMI never calls T.eval(): batch statistics and dropout.
            (_, logits), _ = target.apply(
                target_vars, x, train=True, mutable=['batch_stats'], rngs={'dropout': key}
            )
        else:
            _, logits = target.apply(target_vars, x, train=False)
        return jax.lax.stop_gradient(logits)

    def latents(key, n):
        kz, ky = jax.random.split(key)
        y = jax.random.randint(ky, (n,), 0, max(k, 1))
        return jax.random.normal(kz, (n, zd)), y

    if kind == 'gmi':

        def d_loss(d_params, d_state, g_params, g_state, batch, target_vars, key):
            real = batch['image']
            k_z, k_gp = jax.random.split(key)
            z, _ = latents(k_z, real.shape[0])
            fake, g_state = run_g(g_params, g_state, z, None)
            fake = jax.lax.stop_gradient(fake)

            def critic(x):
                return d.apply({'params': d_params}, x)

            wd = jnp.mean(critic(real)) - jnp.mean(critic(fake))
            gp = gradient_penalty(critic, real, fake, k_gp)
            loss = -wd + config.gp_weight * gp
            return loss, ({'d/loss': loss, 'd/wasserstein': wd, 'd/gp': gp}, d_state, g_state)

        def g_loss(g_params, g_state, d_params, d_state, batch, target_vars, key):
            z, _ = latents(key, batch['image'].shape[0])
            fake, g_state = run_g(g_params, g_state, z, None)
            loss = -jnp.mean(d.apply({'params': d_params}, fake))
            return loss, ({'g/loss': loss}, g_state, d_state)

        return d_loss, g_loss

    if kind == 'kedmi':
        kc = config.kedmi

        def d_loss(d_params, d_state, g_params, g_state, batch, target_vars, key):
            real, unl = batch['image'], batch['unlabeled']
            k_z, k_t = jax.random.split(key)
            z, _ = latents(k_z, real.shape[0])
            fake, g_state = run_g(g_params, g_state, z, None)
            fake = jax.lax.stop_gradient(fake)
            t_logits = target_logits(target_vars, real, k_t)
            _, out_lab = d.apply({'params': d_params}, real)
            _, out_unl = d.apply({'params': d_params}, unl)
            _, out_fake = d.apply({'params': d_params}, fake)
            loss_lab = soft_cross_entropy(out_lab, t_logits)
            loss_unl = kc.unlabeled_weight * kedmi_unlabeled_loss(out_unl, out_fake)
            loss = loss_lab + loss_unl
            metrics = {
                'd/loss': loss,
                'd/loss_label': loss_lab,
                'd/loss_unlabeled': loss_unl,
                'd/acc@1': _accuracy(out_lab, jnp.argmax(t_logits, -1)),
            }
            return loss, (metrics, d_state, g_state)

        def g_loss(g_params, g_state, d_params, d_state, batch, target_vars, key):
            unl2 = batch['unlabeled2']
            z, _ = latents(key, unl2.shape[0])
            fake, g_state = run_g(g_params, g_state, z, None)
            feat_fake, out_fake = d.apply({'params': d_params}, fake)
            feat_unl, _ = d.apply({'params': d_params}, unl2)
            matching = jnp.mean(jnp.abs(jnp.mean(feat_fake, 0) - jnp.mean(feat_unl, 0)))
            h = entropy(out_fake)
            loss = matching + kc.entropy_weight * h
            return loss, (
                {'g/loss': loss, 'g/feature_l1': matching, 'g/entropy': h},
                g_state,
                d_state,
            )

        return d_loss, g_loss

    if kind == 'plgmi':
        pc = config.plgmi

        def run_d(d_params, d_state, x, y):
            variables = {'params': d_params, **d_state}
            return d.apply(variables, x, y, train=True, mutable=[SPECTRAL])

        def d_loss(d_params, d_state, g_params, g_state, batch, target_vars, key):
            real, y_real = batch['image'], batch['label']
            k_z, k_n = jax.random.split(key)
            if config.data.get('dequantize', True):  # The original's `_noise_adder`.
                real = real + jax.random.uniform(k_n, real.shape, maxval=1.0 / 256.0)
            z, y = latents(k_z, real.shape[0])
            fake, g_state = run_g(g_params, g_state, z, y)
            fake = jax.lax.stop_gradient(fake)
            dis_fake, d_state = run_d(d_params, d_state, fake, y)
            dis_real, d_state = run_d(d_params, d_state, real, y_real)
            loss = hinge_d_loss(dis_fake, dis_real)
            metrics = {'d/loss': loss, 'd/real': jnp.mean(dis_real), 'd/fake': jnp.mean(dis_fake)}
            return loss, (metrics, d_state, g_state)

        def g_loss(g_params, g_state, d_params, d_state, batch, target_vars, key):
            k_z, k_aug = jax.random.split(key)
            z, y = latents(k_z, batch['image'].shape[0])
            fake, g_state = run_g(g_params, g_state, z, y)
            dis_fake, d_state = run_d(d_params, d_state, fake, y)
            seen = plgmi.augment(k_aug, fake) if pc.augment else fake
            _, logits = target.apply(target_vars, seen, train=False)
            inv = plgmi.max_margin_loss(logits, y)
            adv = hinge_g_loss(dis_fake)
            loss = adv + pc.alpha * inv
            metrics = {
                'g/loss': loss,
                'g/adv': adv,
                'g/inv': inv,
                'g/target_acc@1': _accuracy(logits, y),
            }
            return loss, (metrics, g_state, d_state)

        return d_loss, g_loss

    raise ValueError(f'Unknown prior kind {kind!r}.')


def adam(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas=(b1, b2)) (eps 1e-8, no weight decay)."""
    return optax.adam(optim.lr, b1=optim.b1, b2=optim.b2)
