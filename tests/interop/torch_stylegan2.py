"""A PyTorch reference of the StyleGAN2-ADA generator, shared by the tests and the benchmarks.

It rebuilds the original's generator (NVlabs/stylegan2-ada-pytorch `training/networks.py`,
the 'skip' architecture) from its math with plain torch ops: the fused modulated convolution
(what the original runs in eval mode, float32) as one grouped convolution with per-sample
kernels (a grouped transposed convolution for the 2x up-sampling ones), upfirdn2d as zero
insertion, zero padding and a depthwise convolution with the flipped FIR filter. Its modules
carry the original's attribute names, so their `state_dict()` keys are the original's, and
they record their constructor arguments as the original's persistence decorator does
(`Persistent.remember`), so that tests can pickle them in the original's format.

Users: tests/interop/test_convert_stylegan2.py (tiny widths: the converter's parity and the
pickle format) and bench/bench_ppa.py (full width: PPA's optimisation step in PyTorch, with
the weights of a Flax prior).

Example::

    g = Generator(z_dim=512, w_dim=512, img_resolution=256).eval()
    ws = g.mapping(z, psi=0.5, cutoff=8)  # [B, num_ws(256), 512]
    images = g.synthesis(ws, noise_mode='const')  # [B, 3, 256, 256], about [-1, 1]
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')  # Skips a test module that imports this without torch.
tnn = torch.nn
F = torch.nn.functional


def block_resolutions(img_resolution: int) -> list[int]:
    """4, 8, ..., `img_resolution` (a power of two)."""
    return [2**i for i in range(2, int(round(math.log2(img_resolution))) + 1)]


def num_ws(img_resolution: int) -> int:
    """The w vectors the synthesis network reads: two per block, less one at 4 px, plus the
    last toRGB's."""
    return 2 * len(block_resolutions(img_resolution))


def fir(taps=(1, 3, 3, 1)):
    """The normalised 2-D FIR filter of `taps`."""
    t = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t)
    return f / f.sum()


def upfirdn(x, f, up=1, pad=(0, 0), gain=1.0):
    """NCHW: zeros after each pixel, zero padding, depthwise conv with the flipped filter."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kernel = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def modulated_conv(x, weight, styles, demodulate=True, up=1, f=None):
    """Fused modulated conv: per-sample kernels [B*O, I, k, k] in one grouped convolution."""
    b, i, h, w = x.shape
    o, _, k, _ = weight.shape
    kernels = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    if demodulate:
        kernels = kernels * (kernels.square().sum([2, 3, 4]) + 1e-8).rsqrt()[..., None, None, None]
    x = x.reshape(1, b * i, h, w)
    if up == 1:
        y = F.conv2d(x, kernels.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    else:  # Transposed conv (weights [B*I, O, k, k]), then the FIR filter (padding 1, gain 4).
        y = F.conv_transpose2d(
            x, kernels.transpose(1, 2).reshape(b * i, o, k, k), stride=2, groups=b
        )
        y = upfirdn(y, f, pad=(1, 1), gain=4.0)
    return y.reshape(b, o, *y.shape[2:])


def _clamp(x, clamp):
    return x if clamp is None else x.clamp(-clamp, clamp)


class Persistent(tnn.Module):
    """Records constructor arguments as the persistence decorator does."""

    def remember(self, **kwargs):
        self._init_args, self._init_kwargs = (), kwargs


class FC(Persistent):
    def __init__(self, fin, fout, lr=1.0, bias_init=0.0, act='linear'):
        super().__init__()
        self.remember(in_features=fin, out_features=fout, lr_multiplier=lr, activation=act)
        self.weight = tnn.Parameter(torch.randn(fout, fin) / lr)
        self.bias = tnn.Parameter(torch.full([fout], float(bias_init)))
        self.weight_gain, self.bias_gain, self.activation = lr / np.sqrt(fin), lr, act

    def forward(self, x):
        y = x @ (self.weight * float(self.weight_gain)).t() + self.bias * self.bias_gain
        return F.leaky_relu(y, 0.2) * np.sqrt(2) if self.activation == 'lrelu' else y


class Mapping(Persistent):
    def __init__(self, z_dim, w_dim, num_ws, num_layers=8, layer_features=None):
        super().__init__()
        self.remember(z_dim=z_dim, c_dim=0, w_dim=w_dim, num_ws=num_ws)
        self.num_ws, self.num_layers = num_ws, num_layers
        hidden = layer_features or w_dim
        widths = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for i in range(num_layers):
            setattr(self, f'fc{i}', FC(widths[i], widths[i + 1], lr=0.01, act='lrelu'))
        self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z, psi=1.0, cutoff=None):
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f'fc{i}')(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if psi != 1:
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], psi)
        return x


class Layer(Persistent):
    def __init__(self, cin, cout, w_dim, res, up=1, conv_clamp=None):
        super().__init__()
        self.remember(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=res, up=up)
        self.res, self.up, self.conv_clamp, self.act_gain = res, up, conv_clamp, np.sqrt(2)
        self.register_buffer('resample_filter', fir())
        self.affine = FC(w_dim, cin, bias_init=1)
        self.weight = tnn.Parameter(torch.randn(cout, cin, 3, 3))
        self.register_buffer('noise_const', torch.randn([res, res]))
        self.noise_strength = tnn.Parameter(torch.zeros([]))
        self.bias = tnn.Parameter(torch.zeros([cout]))

    def forward(self, x, w, noise_mode):
        x = modulated_conv(x, self.weight, self.affine(w), up=self.up, f=self.resample_filter)
        if noise_mode == 'const':
            x = x + self.noise_const * self.noise_strength
        x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * float(self.act_gain)
        return _clamp(x, self.conv_clamp)


class ToRGB(Persistent):
    def __init__(self, cin, w_dim, conv_clamp=None):
        super().__init__()
        self.remember(in_channels=cin, out_channels=3, w_dim=w_dim, conv_clamp=conv_clamp)
        self.conv_clamp = conv_clamp
        self.affine = FC(w_dim, cin, bias_init=1)
        self.weight = tnn.Parameter(torch.randn(3, cin, 1, 1))
        self.bias = tnn.Parameter(torch.zeros([3]))
        self.weight_gain = 1 / np.sqrt(cin)

    def forward(self, x, w):
        x = modulated_conv(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return _clamp(x + self.bias[None, :, None, None], self.conv_clamp)


class Block(Persistent):
    def __init__(self, cin, cout, w_dim, res, conv_clamp=None):
        super().__init__()
        self.remember(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=res)
        self.cin = cin
        self.register_buffer('resample_filter', fir())
        if cin == 0:
            self.const = tnn.Parameter(torch.randn([cout, res, res]))
        else:
            self.conv0 = Layer(cin, cout, w_dim, res, up=2, conv_clamp=conv_clamp)
        self.conv1 = Layer(cout, cout, w_dim, res, conv_clamp=conv_clamp)
        self.torgb = ToRGB(cout, w_dim, conv_clamp)

    def forward(self, x, img, ws, noise_mode):
        if self.cin == 0:
            x = self.conv1(self.const[None].repeat(ws.shape[0], 1, 1, 1), ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, 1 if self.cin == 0 else 2])
        img = y if img is None else upfirdn(img, self.resample_filter, 2, (2, 1), 4.0) + y
        return x, img


class Synthesis(Persistent):
    """ws [B, num_ws, w_dim] -> images [B, 3, R, R]; widths `min(channel_base // res,
    channel_max)`."""

    def __init__(self, w_dim, img_resolution, channel_base=32768, channel_max=512, conv_clamp=None):
        super().__init__()
        self.remember(
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=3,
            channel_base=channel_base,
            channel_max=channel_max,
        )
        self.resolutions = block_resolutions(img_resolution)
        self.num_ws = num_ws(img_resolution)
        width = lambda r: min(channel_base // r, channel_max)  # noqa: E731
        for r in self.resolutions:
            cin = width(r // 2) if r > 4 else 0
            setattr(self, f'b{r}', Block(cin, width(r), w_dim, r, conv_clamp))

    def forward(self, ws, noise_mode='const'):
        x = img = None
        first = 0
        for r in self.resolutions:
            n = 1 if r == 4 else 2
            x, img = getattr(self, f'b{r}')(x, img, ws[:, first : first + n + 1], noise_mode)
            first += n
        return img


class Generator(Persistent):
    """z [B, z_dim] -> images [B, 3, R, R]: `mapping`, then `synthesis`.

    `mapping_kwargs` and `synthesis_kwargs` are remembered as plain dicts (the original
    pickles `dnnlib.util.EasyDict`s; a test that pickles one swaps them in).
    """

    def __init__(
        self,
        z_dim=512,
        w_dim=512,
        img_resolution=1024,
        mapping_layers=8,
        layer_features=None,
        channel_base=32768,
        channel_max=512,
        conv_clamp=None,
        num_fp16_res=0,
    ):
        super().__init__()
        mapping = dict(num_layers=mapping_layers, layer_features=layer_features)
        synthesis = dict(
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
        )
        self.remember(
            z_dim=z_dim,
            c_dim=0,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=3,
            mapping_kwargs=mapping,
            synthesis_kwargs=synthesis,
        )
        self.synthesis = Synthesis(w_dim, img_resolution, channel_base, channel_max, conv_clamp)
        self.mapping = Mapping(z_dim, w_dim, num_ws(img_resolution), mapping_layers, layer_features)

    def forward(self, z, psi=1.0, cutoff=None, noise_mode='const'):
        return self.synthesis(self.mapping(z, psi, cutoff), noise_mode)
