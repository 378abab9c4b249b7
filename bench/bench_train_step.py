r"""Classifier train-step speed: tldmi_jax (jit) vs an equivalent PyTorch step, same run.

  python bench/bench_train_step.py [--arch=vgg16] [--batch=8] [--steps=5] [--freeze] [--quick]
      [--device=auto]

Both sides run the same architecture (VGG16-BN at 64 px, or the demo SmallCNN at 32 px),
SGD momentum 0.9 + weight decay 1e-4, cross-entropy, BatchNorm in training mode. With
--freeze both use TL-DMI's official VGG16 freeze (k=26: conv1_1..conv4_1 frozen). After a
warm-up (JAX: the compile; PyTorch: one step) the two sides alternate step by step; prints
the median step time of each and the ratio PyTorch / JAX (> 1 means tldmi_jax is faster),
the JAX compile time, the FLOPs of one step (XLA's cost analysis of the JAX step, used for
the achieved FLOP/s of both sides) and the peak memory. `--quick`: batch 8, 3 steps.
`--device`: where the PyTorch side runs (auto: CUDA when available); JAX runs on its
default backend. The last stdout line is `BENCH_RESULT {json}` (read by bench/run_all.py).
Needs torch (`pip install -r requirements-test.txt`).
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from torch import nn

from bench.bench_common import peak_memory, step_flops
from tldmi_jax import models
from tldmi_jax.defenses import transfer
from tldmi_jax.train import classifier

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


def torch_device(name: str) -> torch.device:
    """`auto`: CUDA when PyTorch sees it, else the CPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='vgg16', choices=['vgg16', 'small'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--steps', type=int, default=5, help='timed steps of each side')
    p.add_argument('--freeze', action='store_true')
    p.add_argument('--quick', action='store_true', help='batch 8, 3 steps')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='PyTorch')
    args = p.parse_args()
    if args.quick:
        args.batch, args.steps = 8, 3
    if min(args.batch, args.steps) < 1:
        p.error('--batch and --steps must be >= 1')
    if args.freeze and args.arch != 'vgg16':
        p.error('--freeze is the VGG16 freeze (k=26): use it with --arch=vgg16')
    dev = torch_device(args.device)
    size, classes = (64, 1000) if args.arch == 'vgg16' else (32, 10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, args.batch).astype(np.int32)

    model = models.get_model(args.arch, classes)
    v = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x[:1]))
    spec = ml_collections.ConfigDict(
        {
            'name': 'tldmi' if args.freeze else 'none',
            'freeze_layers': FREEZE_K if args.freeze else -1,
        }
    )
    plan = transfer.resolve(model, v['params'], v['batch_stats'], spec)
    base = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    tx = transfer.make_optimizer(base, plan.labels)
    state = classifier.TrainState(
        step=jnp.asarray(0),
        params=v['params'],
        batch_stats=v['batch_stats'],
        opt_state=tx.init(v['params']),
        best_val=jnp.asarray(0.0),
        best_step=jnp.asarray(0),
    )
    step_fn = jax.jit(
        classifier.make_train_step(model, tx, plan, seed=0, flip=True), donate_argnums=0
    )
    batch = {'image': jnp.asarray(x), 'label': jnp.asarray(y)}
    flops = step_flops(step_fn.lower(state, batch))
    holder = [state]

    def jax_step() -> float:
        holder[0], m = step_fn(holder[0], batch)
        return float(jax.block_until_ready(m)['train/loss'])

    torch.manual_seed(0)
    tm = TorchVGG16(classes) if args.arch == 'vgg16' else TorchSmall(classes)
    if args.freeze:
        for i, child in enumerate(tm.feature.children()):
            if i <= FREEZE_K:
                for prm in child.parameters():
                    prm.requires_grad = False
    tm = tm.to(dev)
    opt = torch.optim.SGD(
        [q for q in tm.parameters() if q.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4
    )
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
        'quick': args.quick,
        'torch_device': str(dev),
        'jax_backend': jax.default_backend(),
        'jax_s': medians['jax'],
        'torch_s': medians['pytorch'],
        'ratio': ratio,
        'compile_s': compile_s,
        'flops_per_step': flops,
        **memory,
    }
    print('BENCH_RESULT ' + json.dumps(result))


if __name__ == '__main__':
    main()
