"""PPA, Plug & Play Attacks (Struppek et al., ICML 2022): search StyleGAN2's w space.

The attack has three stages, all on the one latent-search loop:

1. **Candidate search** (`Problem.prepare`, once per attack): `candidates` (2000) random
   z are mapped to w with truncation (psi 0.5, cutoff 8), synthesised, centre-cropped
   (`crop`: 800 of FFHQ's 1024 px; none for AFHQ-Dog) and resized to the target's input,
   and scored by the target's softmax, averaged with the horizontally flipped image.
   Each identity then starts its `num_seeds` (200) instances from its best-scored
   candidates (`Problem.start`; seed s takes the s-th best). The pool is shared by all
   identities, as in PPA, so an identity's start does not depend on its batch.
2. **Optimisation** of one w per instance (`single_w`: the w of every layer; otherwise
   all `num_ws` of them) with Adam (lr 0.005, betas (0.1, 0.1)) for `steps` (50) steps on
   the Poincare loss of the target's logits for an augmented view of the image: PPA's
   transformations CenterCrop(800), Resize(target), RandomResizedCrop(target, scale
   (0.9, 1), ratio 1), all differentiable here (`tldmi_jax.data.augment`). Images are not
   clipped in the loss (`clip_images=False`, PPA's `clip: false`). The loss of an instance
   is divided by `reference_batch` (25, PPA's batch, whose mean loss it steps on), which
   matters only through Adam's epsilon.
3. **Final selection** (`Problem.select`): every optimised instance is rendered (clipped
   to [0, 1], at the target's size) and scored by its mean target confidence under
   `select_views` (100) random transformations, RandomResizedCrop(scale (0.5, 0.9), ratio
   (0.8, 1.2)) and a horizontal flip; the `final` (50) best of each identity are the
   reconstructions.

Deviations, each to keep instances independent of one another (results then do not depend
on batch composition or device count): PPA draws one random crop per batch of 25 images,
here each instance draws its own; PPA's final selection transforms the unclipped images,
here the rendered (clipped) ones; z comes from `jax.random`, not numpy's generator.
Not implemented: PPA's optional discriminator loss (weight 0 in every PPA config) and its
learning-rate schedulers (none in the FaceScrub, CelebA and Stanford Dogs configs).
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tldmi_jax.attacks import common
from tldmi_jax.attacks.latent_search import Problem
from tldmi_jax.data import augment
from tldmi_jax.priors import stylegan2

NAME = 'ppa'
PRIOR_KIND = 'stylegan2'
LOMMA = False  # Its own Poincare identity loss; LOMMA does not apply.
# How many candidates and views are computed at once: memory, not the result (left out of
# the protocol hash, as the instances per call, seed_chunk, are for every attack).
EXECUTION_ONLY = ('candidate_batch', 'select_batch')
POINCARE_XI = 1e-4  # The one-hot target is pulled off the unit ball's boundary by xi.


def poincare_loss(logits: jax.Array, label: jax.Array, xi: float = POINCARE_XI) -> jax.Array:
    """PPA's Poincare loss of one instance: the hyperbolic distance between the
    L1-normalised logits u and the one-hot target v (minus `xi`, clipped to [0, 1]):
    `arccosh(1 + 2 |u - v|^2 / ((1 - |u|^2) (1 - |v|^2)))`."""
    u = logits / jnp.sum(jnp.abs(logits))
    v = jnp.clip(jax.nn.one_hot(label, logits.shape[-1]) - xi, 0.0, 1.0)
    delta = 2.0 * jnp.sum(jnp.square(u - v)) / ((1.0 - jnp.sum(u * u)) * (1.0 - jnp.sum(v * v)))
    return jnp.arccosh(1.0 + delta)


def top_candidates(scores: jax.Array, identity: jax.Array, ranks: jax.Array) -> jax.Array:
    """Indices of the candidates ranked `ranks` (0 = best) by `scores[:, identity]`
    (ties: the lower index first)."""
    return jnp.argsort(-scores[:, identity], stable=True)[ranks]


def select_best(scores: jax.Array, count: int) -> jax.Array:
    """Indices of the `count` highest `scores` (ties: the lower index first)."""
    return jnp.argsort(-scores, stable=True)[:count]


def _check(cfg: ml_collections.ConfigDict, prior) -> None:
    """The hyperparameters fit together and the prior is a StyleGAN2 (ValueError if not)."""
    if prior.kind != stylegan2.KIND:
        raise ValueError(f'PPA searches a StyleGAN2 prior; got a {prior.kind} prior.')
    if cfg.num_seeds > cfg.candidates:
        raise ValueError(
            f'PPA keeps num_seeds={cfg.num_seeds} candidates per identity out of '
            f'candidates={cfg.candidates}: raise attack.candidates or lower attack.num_seeds.'
        )
    if cfg.final > cfg.num_seeds:
        raise ValueError(
            f'PPA selects final={cfg.final} of num_seeds={cfg.num_seeds} optimised latents '
            'per identity: lower attack.final or raise attack.num_seeds.'
        )
    crop = int(cfg.crop or 0)
    if crop > prior.image_size:
        raise ValueError(
            f'attack.crop={crop} exceeds the {prior.image_size} px StyleGAN2 output '
            '(0: no crop, as for AFHQ-Dog).'
        )


def make_problem(ctx: common.AttackContext, cfg: ml_collections.ConfigDict) -> Problem:
    """The PPA attack on `ctx.prior` (a StyleGAN2) and `ctx.target`."""
    prior = ctx.prior
    _check(cfg, prior)
    g, g_vars = prior.generator, prior.variables['generator']
    size = ctx.image_size
    crop = int(cfg.crop or 0) or None
    psi, cutoff = float(cfg.psi), (None if cfg.cutoff is None else int(cfg.cutoff))
    scale = 1.0 / cfg.reference_batch

    def images(ws: jax.Array, clip: bool) -> jax.Array:
        """ws [n, w_dim] or [n, num_ws, w_dim] -> [n, size, size, 3] for the target."""
        raw = g.apply(g_vars, ws, 'const', method='synthesize')
        return stylegan2.to_images(raw, crop=crop, size=size, clip=clip)

    def probabilities(x: jax.Array) -> jax.Array:
        return jax.nn.softmax(ctx.target(x)[1], axis=-1)

    def prepare(key: jax.Array) -> dict[str, jax.Array]:
        z = jax.random.normal(key, (cfg.candidates, prior.z_dim))
        ws = g.apply(g_vars, z, psi, cutoff, method='map')  # [N, num_ws, w_dim]

        def score(w: jax.Array) -> jax.Array:
            x = images(w, clip=True)
            p = probabilities(x)
            if cfg.candidate_flip:
                p = 0.5 * (p + probabilities(x[:, :, ::-1]))
            return p

        # One candidate at a time under `lax.map`, `candidate_batch` of them per step.
        scores = jax.lax.map(lambda w: score(w[None])[0], ws, batch_size=int(cfg.candidate_batch))
        return {'ws': ws[:, 0] if cfg.single_w else ws, 'scores': scores}

    def start(identity, seeds, data):
        return data['ws'][top_candidates(data['scores'], identity, seeds)]

    def loss(w, label, key):
        x = images(w[None], clip=bool(cfg.clip_images))
        if cfg.crop_scale:
            x = augment.random_resized_crop(
                key, x[0], size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio)
            )[None]
        logits = ctx.target(x)[1][0]
        term = poincare_loss(logits, label)
        conf = jax.nn.softmax(logits)[label]
        return scale * term, {'iden': term, 'conf': conf}

    def render(w, label, key):
        del label, key
        return images(w[None], clip=True)

    def select(rendered, identity, key):
        # rendered [S, 1, H, W, C]: score every (instance, view) pair, `select_batch` views
        # per step, then keep the `final` instances of highest mean confidence.
        flat = rendered[:, 0]
        views = int(cfg.select_views)
        pairs = jnp.arange(flat.shape[0] * views)

        def confidence(pair):
            s = pair // views
            k_crop, k_flip = jax.random.split(jax.random.fold_in(key, pair))
            x = augment.random_resized_crop(
                k_crop, flat[s], size, tuple(cfg.select_scale), tuple(cfg.select_ratio)
            )
            x = augment.random_flip(k_flip, x)
            return probabilities(x[None])[0, identity]

        conf = jax.lax.map(confidence, pairs, batch_size=int(cfg.select_batch))
        best = select_best(conf.reshape(flat.shape[0], views).mean(axis=1), int(cfg.final))
        return rendered[best]

    tx = optax.adam(cfg.lr, b1=cfg.b1, b2=cfg.b2)
    return Problem(
        init=lambda key: None,  # Unused: `start` places every instance.
        loss=loss,
        tx=tx,
        render=render,
        prepare=prepare,
        start=start,
        select=select,
    )
