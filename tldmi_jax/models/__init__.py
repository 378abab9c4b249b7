"""Model zoo: classifiers returning `(features, logits)`, with named layer groups.

Every classifier is a linen module with `__call__(x, train=False)`, `layer_groups`,
`cut_points`, `cut_point_aliases`, `official_frozen_groups(k, freeze_stem=False)` and
`OFFICIAL_FREEZE_LAYERS`. `get_model(arch, num_classes)` builds one by name.

Layer groups (`model.layer_groups`) are ordered `(name, regex)` pairs over parameter paths;
their names follow the parameter names (`conv4_2`, `body_12`, `layer3`, ...). Freezing and the
Fisher analysis read the groups only from there.

Cut points (where fine-tuning starts, `config.defense.fine_tune_from`) share one 1-based
vocabulary on every architecture: `stage1` ... `stageN` (the first layer group of each stage,
counted from the input) and `head`. `model.cut_points` maps these names to groups;
`cut_points(model)` below adds every group name (a finer cut point) and the old names
(`model.cut_point_aliases`), which keep their old meaning and log a deprecation warning.

| arch | stageK is (group where it starts) | N | old names, same meaning |
|---|---|---|---|
| `vgg16` | conv block K (`convK_1`) | 5 | `blockK` = `stageK` |
| `small` | conv block K (`block{K-1}`) | 4 * | `block{K-1}` = `stageK` (0-based) |
| `ir152`, `facenet64`, `ir50`, `facenet` | IR stage K (its first unit, `body_i`) | 4 | - |
| `resnet18`, `resnet101`, `resnet152` | torchvision `layerK` (`layerK`) | 4 | `layerK` = `stageK` |
| `densenet121`, `densenet169` | dense block K (`denseblockK`) | 4 | - |
| `inception_v3` | Mixed_5b, Mixed_6a, Mixed_7a (35, 17, 8 px) | 3 | - |
| `efficientnet_b0/b1/b2` | MBConv stage K (`stageK`) | 7 | `features_K` = `stageK` ** |

`head` is the classifier head on every architecture (with MID, its VIB layer and the head).
(*) `len(widths)`; the demo's 4. (**) Also `features_0` = group `stem` and `features_8` =
group `head_conv`. The first IR units of the stages are `body_0, body_3, body_11, body_47` on
IR-152 and `body_0, body_3, body_7, body_21` on IR-50. The `_tiny` variants use the same names.
Before this vocabulary, `block2` froze one VGG block but two small-CNN blocks; the aliases keep
exactly those meanings.
"""

from collections.abc import Callable

import flax.linen as nn
from absl import logging

from tldmi_jax.models import densenet, efficientnet, inception_v3, irse, layers, resnet, small, vgg

# The registry, collected from the model modules (each exports `ARCHS`: name -> (class,
# input size it is used at)); the `_tiny` variants have the same parameter names.
_MODULES = (vgg, irse, resnet, densenet, inception_v3, small, efficientnet)
ARCHS: dict[str, Callable[..., nn.Module]] = {
    name: cls for module in _MODULES for name, (cls, _) in module.ARCHS.items()
}
_IMAGE_SIZES = {name: size for module in _MODULES for name, (_, size) in module.ARCHS.items()}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f'Unknown arch {arch!r}; known: {", ".join(sorted(ARCHS))}')


def get_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a classifier by name.

    Args:
      arch: a key of `ARCHS`.
      num_classes: number of output logits.
      **kwargs: further module attributes (e.g. `widths`).

    Returns:
      The (unbound) linen module.

    Raises:
      ValueError: for an unknown `arch`.
    """
    _check_arch(arch)
    return ARCHS[arch](num_classes=num_classes, **kwargs)


def default_image_size(arch: str) -> int:
    """Input side length (pixels) the architecture is used at.

    Raises:
      ValueError: for an unknown `arch`.
    """
    _check_arch(arch)
    return _IMAGE_SIZES[arch]


def count_params(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Number of parameters (not batch statistics), computed from shapes only.

    Args:
      model: an unbound classifier.
      image_size: input side length in pixels.
      channels: input channels.

    Returns:
      The total number of scalars in the 'params' collection.
    """
    return layers.param_count(model, image_size, channels)


def cut_point_aliases(model: nn.Module) -> dict[str, str]:
    """The model's old cut-point names, `{old_name: new_name}`.

    A wrapper without aliases of its own that wraps a classifier as `inner` (MID's VIB)
    has the aliases of that classifier.
    """
    aliases = getattr(model, 'cut_point_aliases', None)
    if aliases is None:
        inner = getattr(model, 'inner', None)
        return cut_point_aliases(inner) if inner is not None else {}
    return dict(aliases)


def cut_points(model: nn.Module) -> dict[str, str]:
    """Every name `config.defense.fine_tune_from` accepts, mapped to its layer group.

    The names are, in this order of precedence: the vocabulary of `model.cut_points`
    (`stage1`..`stageN`, `head`), every layer group name, then the old names of
    `cut_point_aliases(model)`.

    Args:
      model: a classifier with `layer_groups` (possibly wrapped, e.g. by MID).

    Returns:
      `{name: group name}`; every value is a name of `model.layer_groups`.

    Raises:
      ValueError: if the model maps a name to something that is no layer group.
    """
    groups = [name for name, _ in model.layer_groups]
    points = dict(getattr(model, 'cut_points', None) or {})
    for name in groups:
        points.setdefault(name, name)
    for old, new in cut_point_aliases(model).items():
        if new not in points:
            raise ValueError(f'{type(model).__name__}: alias {old!r} names {new!r}, no cut point.')
        points.setdefault(old, points[new])
    bad = {name: group for name, group in points.items() if group not in groups}
    if bad:
        raise ValueError(f'{type(model).__name__}: cut points {bad} name no layer group {groups}.')
    return points


def cut_point_group(model: nn.Module, name: str) -> str:
    """The layer group where fine-tuning from cut point `name` starts.

    An old name (an alias) logs one deprecation warning naming the new one.

    Raises:
      ValueError: for a name that is no cut point of the model, listing the valid ones.
    """
    points, aliases = cut_points(model), cut_point_aliases(model)
    if name not in points:
        vocabulary = list(getattr(model, 'cut_points', None) or {})
        groups = [group for group, _ in model.layer_groups]
        raise ValueError(
            f'Unknown cut point {name!r} for {type(model).__name__}; use {vocabulary}, '
            f'a layer group {groups} or an old name {sorted(aliases)}.'
        )
    if name in aliases:
        logging.warning(
            'Cut point %r is deprecated; use %r (the same layer group, %r).',
            name,
            aliases[name],
            points[name],
        )
    return points[name]
