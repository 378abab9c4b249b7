r"""Classifier train-step speed: tldmi_jax (jit) vs an equivalent PyTorch step, same run.

  python bench/bench_train_step.py [--arch=vgg16] [--batch=8] [--steps=5] [--freeze]

Both sides run the same architecture (VGG16-BN at 64 px, or the demo SmallCNN at 32 px),
SGD momentum 0.9 + weight decay 1e-4, cross-entropy, BatchNorm in training mode. With
--freeze both use TL-DMI's official VGG16 freeze (k=26: conv1_1..conv4_1 frozen). Prints the
median step time of each and the ratio (JAX / PyTorch; < 1 means JAX is faster).
Needs torch (`pip install -r requirements-test.txt`).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from torch import nn

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


def time_steps(step, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--arch', default='vgg16', choices=['vgg16', 'small'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--freeze', action='store_true')
    args = p.parse_args()
    size, classes = (64, 1000) if args.arch == 'vgg16' else (32, 10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, args.batch).astype(np.int32)

    model = models.get_model(args.arch, classes)
    v = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x[:1]))
    spec = ml_collections.ConfigDict(
        {'name': 'tldmi' if args.freeze else 'none', 'freeze_layers': 26 if args.freeze else -1}
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
    t = time.perf_counter()
    state, _ = step_fn(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    holder = [state]

    def jax_step():
        holder[0], m = step_fn(holder[0], batch)
        jax.block_until_ready(m)

    jax_t = time_steps(jax_step, args.steps)

    torch.manual_seed(0)
    tm = TorchVGG16(classes) if args.arch == 'vgg16' else TorchSmall(classes)
    if args.freeze:
        for i, child in enumerate(tm.feature.children()):
            if i <= 26:
                for prm in child.parameters():
                    prm.requires_grad = False
    opt = torch.optim.SGD(
        [q for q in tm.parameters() if q.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4
    )
    tx_, ty_ = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
    tm.train()

    def torch_step():
        opt.zero_grad()
        _, out = tm(torch.flip(tx_, dims=[3]))
        loss = nn.functional.cross_entropy(out, ty_)
        loss.backward()
        opt.step()

    torch_step()
    torch_t = time_steps(torch_step, args.steps)
    threads = torch.get_num_threads()
    print(f'arch={args.arch} batch={args.batch} freeze={args.freeze} torch threads={threads}')
    print(f'jax compile: {compile_s:.2f} s')
    print(f'{"":10} {"step ms":>10}')
    print(f'{"jax":10} {jax_t * 1e3:10.1f}')
    print(f'{"pytorch":10} {torch_t * 1e3:10.1f}')
    print(f'ratio jax/pytorch: {jax_t / torch_t:.2f}')


if __name__ == '__main__':
    main()
