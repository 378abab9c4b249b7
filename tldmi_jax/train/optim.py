"""The optimizers of the classifier trainer and the distilled students (PyTorch recipes)."""

import ml_collections
import optax


def make_base_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """PyTorch-style SGD or Adam: `g + wd * p`, then (Nesterov) momentum or Adam.

    Args:
      optim: `name` ('sgd' default, or 'adam'), `lr` (a float or an optax schedule),
        `weight_decay`; SGD's `momentum` and `nesterov`; Adam's `b1`, `b2`.

    Raises:
      ValueError: for another optimizer name.
    """
    name = optim.get('name', 'sgd')
    if name == 'sgd':
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay),
            optax.sgd(optim.lr, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    if name == 'adam':
        return optax.chain(
            optax.add_decayed_weights(optim.weight_decay),
            optax.adam(optim.lr, b1=optim.get('b1', 0.9), b2=optim.get('b2', 0.999)),
        )
    raise ValueError(f'Unknown optimizer {name!r}; use sgd or adam.')
