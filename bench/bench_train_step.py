r"""Classifier train-step speed: tldmi_jax (jit) vs an equivalent PyTorch step, same run.

  PYTHONPATH=. python bench/bench_train_step.py [--arch=vgg16] [--batch=8] [--steps=5]
      [--freeze] [--quick] [--device=auto]

Both sides run the same architecture, cross-entropy, BatchNorm in training mode and a
random horizontal flip (JAX: per example, inside the step; PyTorch: the whole batch):

- vgg16 (TL-DMI's VGG16-BN at 64 px, 1000 classes) and small (the demo SmallCNN at 32 px,
  10 classes): each side initialises its own random weights; SGD lr 0.01, momentum 0.9,
  weight decay 1e-4 on both. With --freeze both use TL-DMI's official VGG16 freeze (k=26:
  conv1_1..conv4_1 frozen).
- ir152 and facenet64 (TL-DMI's IR-152 and FaceNet64 = IR-50 targets at 64 px, 1000
  classes, dropout 0.5 before the head's Linear): the PyTorch reference of
  tests/interop/test_convert.py (`TorchIR64` at its full size) gets random weights and the
  library's converter (`convert.convert_state_dict`) turns them into the JAX model, so both
  sides start from the same weights. The optimizer is the library's recipe for that target
  (`configs/celeba.py`: SGD, momentum 0.9, weight decay 1e-4, lr 0.01 for ir152 and 0.008
  for facenet64), built as the trainer builds it, and the same torch.optim.SGD. With
  --freeze both use the architecture's official TL-DMI freeze (`config.defense` of
  `celeba.py:defense=tldmi`: body units 0..k frozen, k=46 for ir152 and 5 for facenet64,
  the stem trainable as in the original); the two trainable-parameter counts are checked
  equal. The first-step losses of both sides are printed (they differ by the random flips
  and dropout masks).

JAX: `classifier.make_train_step` (the trainer's step: flip, loss, gradients, the freeze
plan's optimizer), jitted with the state donated. PyTorch: zero_grad, forward, loss,
backward, optimizer step, eager. After a warm-up (JAX: the compile; PyTorch: one step) the
two sides alternate step by step; prints the median step time of each and the ratio
PyTorch / JAX (> 1 means tldmi_jax is faster), the JAX compile time, the FLOPs of one step
(XLA's cost analysis of the JAX step, used for the achieved FLOP/s of both sides) and the
peak memory. `--quick`: batch 8, 3 steps. `--device`: where the PyTorch side runs (auto:
CUDA when available); JAX runs on its default backend. The last stdout line is
`BENCH_RESULT {json}` (read by bench/run_all.py). Needs torch (`pip install -r
requirements-test.txt`) and the repository root on the path (the IR references and the
configs are imported from tests/interop and configs/).
"""

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from torch import nn

from bench.bench_common import peak_memory, step_flops, timing_result, torch_device
from configs import celeba
from tests.interop import test_convert as classifier_refs
from tldmi_jax import models
from tldmi_jax.defenses import transfer
from tldmi_jax.interop import convert
from tldmi_jax.train import classifier, optim

VGG_WIDTHS = (
    64,
    64,
    'M',
    128,
    128,
    'M',
    256,
    256,
    256,
    'M',
    512,
    512,
    512,
    'M',
    512,
    512,
    512,
    'M',
)
FREEZE_K = 26  # TL-DMI's official VGG16 freeze index.
IR_ARCHS = ('ir152', 'facenet64')  # Converted from the tests/interop references.


class TorchVGG16(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        layers, c = [], 3
        for w in VGG_WIDTHS:
            if w == 'M':
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
        self.feature = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(2048)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        f = self.bn(self.feature(x).flatten(1))
        return f, self.fc(f)


class TorchSmall(nn.Module):
    def __init__(self, num_classes, widths=(32, 64, 128, 256), channels=3):
        super().__init__()
        layers, c = [], channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.feature = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 2 * 2, num_classes)

    def forward(self, x):
        f = self.feature(x).flatten(1)
        return f, self.fc(f)


@dataclasses.dataclass
class Sides:
    """One row's two sides: the JAX model, variables, freeze plan and optimizer; the PyTorch
    module and a constructor of its optimizer (given the trainable parameters)."""

    model: Any
    variables: dict
    plan: transfer.FreezePlan
    tx: optax.GradientTransformation
    tm: nn.Module
    opt: Callable[[list], torch.optim.Optimizer]
    lr: float


def own_weights(arch: str, classes: int, x: np.ndarray, freeze: bool) -> Sides:
    """vgg16 / small: each side its own random weights, SGD lr 0.01 (as before)."""
    model = models.get_model(arch, classes)
    v = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x[:1]))
    spec = ml_collections.ConfigDict(
        {
            'name': 'tldmi' if freeze else 'none',
            'freeze_layers': FREEZE_K if freeze else -1,
        }
    )
    plan = transfer.resolve(model, v['params'], v['batch_stats'], spec)
    base = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    tx = transfer.make_optimizer(base, plan.labels)
    torch.manual_seed(0)
    tm = TorchVGG16(classes) if arch == 'vgg16' else TorchSmall(classes)
    if freeze:
        for i, child in enumerate(tm.feature.children()):
            if i <= FREEZE_K:
                for prm in child.parameters():
                    prm.requires_grad = False
    opt = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    return Sides(model, v, plan, tx, tm, opt, 0.01)


def converted_weights(arch: str, freeze: bool) -> Sides:
    """ir152 / facenet64: the tests/interop reference with random weights, converted by the
    library; the optimizer and freeze of `configs/celeba.py` for that target."""
    torch.manual_seed(0)  # The conv and linear weights (randomise sets the rest).
    tm = classifier_refs.randomise(classifier_refs.FULL_SIZE[arch](), seed=3)
    conv = convert.convert_state_dict(arch, classifier_refs.numpy_state(tm))
    assert conv.num_classes == 1000 and conv.image_size == 64, conv.report
    assert not conv.report['left_fresh'], conv.report
    config = celeba.get_config(f'arch={arch},defense={"tldmi" if freeze else "none"}')
    model, v = conv.model, {'params': conv.params, 'batch_stats': conv.batch_stats}
    plan = transfer.resolve(model, v['params'], v['batch_stats'], config.defense)
    tx = transfer.make_optimizer(optim.make_base_optimizer(config.optim), plan.labels)
    if freeze:  # The original: `feature.body` children 0..k frozen, the stem left trainable.
        k = transfer.official_freeze_layers(model)
        for i, unit in enumerate(tm.feature.body.children()):
            if i <= k:
                unit.requires_grad_(False)
    trainable = sum(q.numel() for q in tm.parameters() if q.requires_grad)
    assert trainable == plan.trainable_params, (trainable, plan.trainable_params)
    oc = config.optim
    opt = lambda params: torch.optim.SGD(
        params, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay
    )
    return Sides(model, v, plan, tx, tm, opt, oc.lr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='vgg16', choices=['vgg16', 'small', *IR_ARCHS])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--steps', type=int, default=5, help='timed steps of each side')
    p.add_argument('--freeze', action='store_true', help="the arch's official TL-DMI freeze")
    p.add_argument('--quick', action='store_true', help='batch 8, 3 steps')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    if args.quick:
        args.batch, args.steps = 8, 3
    if min(args.batch, args.steps) < 1:
        p.error('--batch and --steps must be >= 1')
    if args.freeze and args.arch == 'small':
        p.error("--freeze is TL-DMI's official freeze: use it with vgg16, ir152 or facenet64")
    dev = torch_device(args.device)
    size, classes = (32, 10) if args.arch == 'small' else (64, 1000)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, args.batch).astype(np.int32)

    if args.arch in IR_ARCHS:
        sides = converted_weights(args.arch, args.freeze)
    else:
        sides = own_weights(args.arch, classes, x, args.freeze)
    v, tx = sides.variables, sides.tx
    state = classifier.TrainState(
        step=jnp.asarray(0),
        params=v['params'],
        batch_stats=v['batch_stats'],
        opt_state=tx.init(v['params']),
        best_val=jnp.asarray(0.0),
        best_step=jnp.asarray(0),
    )
    step_fn = jax.jit(
        classifier.make_train_step(sides.model, tx, sides.plan, seed=0, flip=True),
        donate_argnums=0,
    )
    batch = {'image': jnp.asarray(x), 'label': jnp.asarray(y)}
    flops = step_flops(step_fn.lower(state, batch))
    holder = [state]

    def jax_step() -> float:
        holder[0], m = step_fn(holder[0], batch)
        return float(jax.block_until_ready(m)['train/loss'])

    tm = sides.tm.to(dev)
    opt = sides.opt([q for q in tm.parameters() if q.requires_grad])
    tx_ = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
    ty_ = torch.from_numpy(y).long().to(dev)
    tm.train()

    def torch_step() -> torch.Tensor:
        opt.zero_grad()
        _, out = tm(torch.flip(tx_, dims=[3]))
        loss = nn.functional.cross_entropy(out, ty_)
        loss.backward()
        opt.step()
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        return loss.detach()

    # Warm-up: JAX compiles on its first call (the time includes one step); PyTorch one step.
    tic = time.perf_counter()
    jax_loss = jax_step()
    compile_s = time.perf_counter() - tic
    torch_loss = float(torch_step())
    assert np.isfinite([jax_loss, torch_loss]).all(), (jax_loss, torch_loss)

    times = {'jax': [], 'pytorch': []}
    for _ in range(args.steps):  # alternate the sides step by step
        for side, step in (('jax', jax_step), ('pytorch', torch_step)):
            tic = time.perf_counter()
            step()
            times[side].append(time.perf_counter() - tic)
    medians = {side: statistics.median(ts) for side, ts in times.items()}
    ratio = medians['pytorch'] / medians['jax']
    memory = peak_memory(dev)

    threads = torch.get_num_threads()
    print(
        f'arch={args.arch} batch={args.batch} freeze={args.freeze} steps={args.steps} '
        f'torch device={dev} threads={threads} jax devices={jax.devices()}'
    )
    extra = {}
    if args.arch in IR_ARCHS:
        plan = sides.plan
        extra = {
            'freeze_layers': transfer.official_freeze_layers(sides.model) if args.freeze else -1,
            'params': plan.total_params,
            'trainable_params': plan.trainable_params,
            'lr': sides.lr,
        }
        print(
            f'same weights (converted); parameters {plan.total_params:,}, trainable '
            f'{plan.trainable_params:,} ({plan.source}); SGD lr {extra["lr"]}'
        )
        print(
            f'first-step loss: jax {jax_loss:.4f}, pytorch {torch_loss:.4f} (flips and dropout '
            'masks differ)'
        )
    print(f'jax compile: {compile_s:.2f} s (first call, one step included)')
    print(f'{"":10} {"step ms":>10} {"min":>10} {"max":>10}')
    for side, ts in times.items():
        print(f'{side:10} {medians[side] * 1e3:10.1f} {min(ts) * 1e3:10.1f} {max(ts) * 1e3:10.1f}')
    print(f'ratio pytorch/jax: {ratio:.2f}  (> 1: tldmi_jax is faster)')
    if flops:
        print(
            f'step: {flops / 1e9:.2f} GFLOP (XLA cost analysis); achieved jax '
            f'{flops / medians["jax"] / 1e9:.1f} GFLOP/s, pytorch '
            f'{flops / medians["pytorch"] / 1e9:.1f} GFLOP/s'
        )
    print(f'peak RSS of the process: {memory["peak_rss_mb"]:.0f} MiB')
    result = {
        'name': 'train_step',
        'arch': args.arch,
        'image_size': size,
        'classes': classes,
        'batch': args.batch,
        'freeze': args.freeze,
        'steps': args.steps,
        **timing_result(args.quick, dev, medians, ratio, compile_s, flops, memory),
        **extra,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
