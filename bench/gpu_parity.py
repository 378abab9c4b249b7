r"""Full-size correctness on the GPU: converted models' outputs, JAX vs PyTorch, both on the GPU.

  PYTHONPATH=. JAX_DEFAULT_MATMUL_PRECISION=highest python bench/gpu_parity.py [--batch=60]
      [--allow-cpu]

The full-size PyTorch reference models of bench/bench_attack.py (the GMI generator and
critic at 64 px, the FaceNet64 and VGG16 targets with 1000 classes) get random weights; the
library's converters turn them into JAX models. On a batch of 60 latents, each module runs on
both sides with the same inputs (the critic and the targets on PyTorch's generated images):
JAX on its GPU backend with matmul/conv precision `highest`, PyTorch on CUDA with TF32 off
(matmul and cuDNN), both in eval mode. Prints the largest absolute difference of every output
and its relative size, |jax - torch| / max(1, max |torch|), and exits 1 when one exceeds
`REL` (the tolerance of the CPU parity tests, tests/interop/tolerance.py). `--allow-cpu`
runs it on the CPU (to check the script where there is no GPU).
"""

import argparse
import os
import sys

import bench_attack  # bench/ is the script's directory, hence on sys.path
import jax
import numpy as np
import torch

from tests.interop import tolerance

REL = tolerance.REL  # 2e-4 of max(1, max |reference|)


def compare(what: str, got, ref) -> bool:
    """Prints the differences of `got` (JAX) and `ref` (PyTorch); True when within REL."""
    got = np.asarray(got, dtype=np.float64)
    ref = ref.detach().cpu().numpy().astype(np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    abs_err = float(np.max(np.abs(got - ref)))
    rel_err = abs_err / max(1.0, float(np.max(np.abs(ref))))
    ok = rel_err <= REL
    print(
        f'{what:32} max |jax - torch| {abs_err:.2e}  relative {rel_err:.2e}  '
        f'{"ok" if ok else f"FAIL (> {REL:g})"}',
        flush=True,
    )
    return ok


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=60, help='latents (identities) per batch')
    p.add_argument('--allow-cpu', action='store_true', help='run without a GPU')
    args = p.parse_args()
    jax.config.update('jax_default_matmul_precision', 'highest')
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = jax.default_backend()
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if not args.allow_cpu and (backend != 'gpu' or dev.type != 'cuda'):
        print(f'needs a GPU for both: jax backend {backend}, torch device {dev}', file=sys.stderr)
        return 1
    precision = os.environ.get('JAX_DEFAULT_MATMUL_PRECISION', 'highest (set in the script)')
    print(
        f'jax {jax.__version__} on {jax.devices()} (matmul precision {precision}); '
        f'torch {torch.__version__} on {dev} (TF32 off); batch {args.batch}, 64 px'
    )

    z = np.random.default_rng(0).normal(size=(args.batch, 100)).astype(np.float32)
    ok = True
    for i, target in enumerate(bench_attack.TARGETS):
        g, d, t = bench_attack.torch_models(target)
        ctx, _ = bench_attack.jax_context(g, d, t, target)  # converts on the CPU first
        g, d, t = g.to(dev), d.to(dev), t.to(dev)
        variables = ctx.prior.variables
        with torch.no_grad():
            images = g(torch.from_numpy(z).to(dev))
            scores = d(images)
            features, logits = t(images)
        x = jax.device_put(nhwc(images))
        if i == 0:  # the same GMI generator and critic for both targets
            generate = jax.jit(ctx.prior.generate)
            ok &= compare(
                'GMI generator images',
                generate(variables['generator'], z),
                images.permute(0, 2, 3, 1),
            )
            discriminate = jax.jit(ctx.prior.discriminate)
            ok &= compare('GMI critic scores', discriminate(variables['discriminator'], x), scores)
        j_features, j_logits = jax.jit(ctx.target)(x)
        ok &= compare(f'{target} features', j_features, features)
        ok &= compare(f'{target} logits', j_logits, logits)
    print('parity: ok' if ok else f'parity: FAILED (tolerance {REL:g} relative)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
