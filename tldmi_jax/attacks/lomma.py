"""LOMMA (Nguyen et al., CVPR 2023): an option of GMI and KEDMI (`attack.lomma=VARIANT`).

LOMMA changes only the identity term: the logit loss -logit_y (instead of CE) averaged over
the target and the augmented models distilled from it, plus `reg_weight` (TL-DMI's `lam`
1.0) times mean((f_T(x) - p_reg)^2), with p_reg the mean penultimate feature of the target
on public images. The variants of the original code:

| variant | identity loss |
|---|---|
| `baseline` | CE on the target |
| `L_logit` | logit loss on the target + reg |
| `L_aug` | CE averaged over the target and the augmented models |
| `ours` (LOMMA) | logit loss averaged over target + augmented, + reg (target only) |
"""

import ml_collections

VARIANTS = {
    'baseline': dict(iden_loss='ce', use_augmented=False, reg=False),
    'L_logit': dict(iden_loss='logit', use_augmented=False, reg=True),
    'L_aug': dict(iden_loss='ce', use_augmented=True, reg=False),
    'ours': dict(iden_loss='logit', use_augmented=True, reg=True),
}


def configure(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the identity-loss fields of `cfg` from `cfg.variant`."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f'Unknown LOMMA variant {cfg.variant!r}; use one of {sorted(VARIANTS)}.')
    spec = VARIANTS[cfg.variant]
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.iden_loss = spec['iden_loss']
    cfg.use_augmented = spec['use_augmented']
    cfg.reg_weight = cfg.reg_weight if spec['reg'] else 0.0
    return cfg
