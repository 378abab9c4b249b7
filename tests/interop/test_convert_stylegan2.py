"""StyleGAN2-ADA converter: a PyTorch reference, the persistence pickle format, safety.

The reference (tests/interop/torch_stylegan2.py, shared with bench/bench_ppa.py) rebuilds
the original's generator (NVlabs/stylegan2-ada-pytorch `training/networks.py`) from its math
with plain torch ops; its modules carry the original's attribute names, so their
`state_dict()` keys are the original's. Here it runs at tiny widths.

The test pickle imitates `torch_utils.persistence`: every network module pickles as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with `meta = {type, version,
module_src, class_name, state=module.__dict__}`, tensors the normal torch way
(`_rebuild_parameter`, `_rebuild_tensor_v2`, `torch.storage._load_from_bytes`), the
constructor arguments as `dnnlib.util.EasyDict`s, numpy float64 gains; pickle protocol 3 as
Python 3.7 wrote the released files. Its `module_src` writes a marker file when executed: the
converter must never run it.
"""

import contextlib
import copy
import io
import json
import os
import pickle
import sys
import types

import chex
import jax
import numpy as np
import pytest

from tests.interop import torch_stylegan2 as torch_sg2
from tests.launch import in_process
from tests.payloads import Payload
from tldmi_jax import priors
from tldmi_jax.interop import stylegan2 as sg2
from tldmi_jax.interop import stylegan2_pkl
from tldmi_jax.interop.kinds import ConversionError
from tldmi_jax.interop.torch_load import UnsafeCheckpointError
from tldmi_jax.priors import stylegan2 as flax_sg2

torch = pytest.importorskip('torch')
F = torch.nn.functional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Z, W, HIDDEN, RES, BASE, CMAX, LAYERS, CLAMP = 16, 16, 24, 16, 128, 16, 3, 1.5
BATCH, CUTOFF, TOL = 2, 3, 1e-4
SOURCE = 'open({marker!r}, "w").write("the pickled module source ran")\n'


# ---------------------------------------------------------------------------------------
# The reference at tiny widths (tests/interop/torch_stylegan2.py), pickled as the original.


class EasyDict(dict):
    """Stands in for `dnnlib.util.EasyDict` while pickling (`fake_original_modules`)."""


EasyDict.__module__ = 'dnnlib.util'


def tiny_generator():
    """The reference generator at this file's sizes, its kwargs as the original pickles them."""
    g = torch_sg2.Generator(Z, W, RES, LAYERS, HIDDEN, BASE, CMAX, CLAMP, num_fp16_res=2)
    g._init_kwargs = {
        k: EasyDict(v) if isinstance(v, dict) else v for k, v in g._init_kwargs.items()
    }
    return g


class Discriminator(torch_sg2.Persistent):
    def __init__(self):
        super().__init__()
        self.remember(c_dim=0, img_resolution=RES, img_channels=3)
        self.fc = torch_sg2.FC(3, 1)


# ---------------------------------------------------------------------------------------
# The persistence pickle format.

NAMES = {
    torch_sg2.Generator: 'Generator',
    torch_sg2.Mapping: 'MappingNetwork',
    torch_sg2.FC: 'FullyConnectedLayer',
    torch_sg2.Synthesis: 'SynthesisNetwork',
    torch_sg2.Block: 'SynthesisBlock',
    torch_sg2.Layer: 'SynthesisLayer',
    torch_sg2.ToRGB: 'ToRGBLayer',
    Discriminator: 'Discriminator',
}


def _reconstruct_persistent_obj(meta):
    """The name the original pickles for every network object (never called here)."""
    raise AssertionError('not the function the converter may call')


_reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'


@contextlib.contextmanager
def fake_original_modules():
    """`torch_utils.persistence` and `dnnlib.util` in sys.modules, so pickle can name them."""
    fake = {
        'torch_utils': {},
        'torch_utils.persistence': {'_reconstruct_persistent_obj': _reconstruct_persistent_obj},
        'dnnlib': {},
        'dnnlib.util': {'EasyDict': EasyDict},
    }
    saved = {name: sys.modules.get(name) for name in fake}
    for name, attrs in fake.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


class PersistencePickler(pickle.Pickler):
    """Pickles the reference modules as `persistence.persistent_class.__reduce__` does."""

    def __init__(self, file, module_src, class_names=None):
        super().__init__(file, protocol=3)
        self.module_src, self.class_names = module_src, class_names or {}

    def reducer_override(self, obj):
        name = self.class_names.get(type(obj), NAMES.get(type(obj)))
        if name is None:
            return NotImplemented
        meta = dict(type='class', version=6, module_src=self.module_src, class_name=name)
        return _reconstruct_persistent_obj, (dict(meta, state=dict(obj.__dict__)),), None


def write_pickle(path, data, module_src, class_names=None):
    with fake_original_modules(), open(path, 'wb') as f:
        PersistencePickler(f, module_src, class_names).dump(data)


# ---------------------------------------------------------------------------------------
# Fixtures.


def make_reference():
    """The reference generator with random weights (biases, noise strengths, w_avg too)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        g = tiny_generator().eval()
        with torch.no_grad():
            for name, p in g.named_parameters():
                if not name.endswith('weight') and not name.endswith('const'):
                    p.copy_(torch.randn_like(p) * 0.5)
            g.mapping.w_avg.normal_()
    return g


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """The reference, its persistence pickle (G perturbed, G_ema the reference) and the
    prior converted from it, read back with `priors.load_prior`."""
    base = tmp_path_factory.mktemp('stylegan2')
    g_ema = make_reference()
    g = copy.deepcopy(g_ema)
    with torch.no_grad():
        g.mapping.fc0.weight.add_(1.0)
    marker = base / 'source_ran'
    data = dict(G=g, D=Discriminator(), G_ema=g_ema, augment_pipe=None, training_set_kwargs=None)
    path = base / 'network-snapshot.pkl'
    write_pickle(path, data, SOURCE.format(marker=str(marker)))
    _, report = sg2.convert_stylegan2(str(path), str(base / 'prior'))
    prior = priors.load_prior(str(base / 'prior'))
    return dict(reference=g_ema, pkl=path, prior=prior, report=report, marker=marker, base=base)


def _reference_images(g, z, psi=1.0, cutoff=None, noise_mode='const'):
    with torch.no_grad():
        out = g(torch.from_numpy(z), psi, cutoff, noise_mode)
    return out.numpy().transpose(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------
# Tests.


def test_pickle_converts_to_the_reference(converted):
    prior, g = converted['prior'], converted['reference']
    z = np.random.RandomState(0).randn(BATCH, Z).astype(np.float32)
    generate = jax.jit(lambda v, z, psi: prior.generator.apply(v, z, psi, CUTOFF))
    for psi, cutoff in ((1.0, None), (0.7, CUTOFF)):
        ours = np.asarray(generate(prior.variables['generator'], z, psi))
        ref = _reference_images(g, z, psi, cutoff)
        assert np.abs(ref).max() > 0.5 and np.abs(ref).max() <= CLAMP * 3
        assert np.abs(ours - ref).max() < TOL, (psi, np.abs(ours - ref).max())
    assert not converted['marker'].exists()  # The pickled module source never ran.
    spec, report = prior.spec, converted['report']
    names = ('image_size', 'z_dim', 'w_dim', 'layer_features', 'channel_base', 'channel_max')
    assert [spec[k] for k in names] == [RES, Z, W, HIDDEN, BASE, CMAX]
    assert spec['conv_clamp'] == CLAMP and spec['mapping_layers'] == LAYERS
    assert report['num_ws'] == 6 and report['source'].endswith('network-snapshot.pkl[G_ema]')
    filters = sum('resample_filter' in k for k in g.state_dict())  # 3 blocks + 5 layers.
    assert filters == 8 and report['generator']['mapped'] == len(g.state_dict()) - filters
    assert all('resample_filter' in k for k in report['generator']['ignored'])
    assert any('num_fp16_res=2' in note for note in report['notes'])
    assert json.loads((converted['base'] / 'prior' / 'conversion.json').read_text()) == report


def test_the_pickled_source_is_live_but_never_run(converted):
    """The marker source does write the marker when executed (so the check above can fail)."""
    other = converted['base'] / 'exec_check'
    exec(SOURCE.format(marker=str(other)), {})  # noqa: S102
    assert other.exists() and not converted['marker'].exists()


def test_the_reader_returns_g_ema_and_the_init_kwargs(converted):
    network = stylegan2_pkl.read_network_pickle(str(converted['pkl']))
    ref = converted['reference'].state_dict()
    assert sorted(network.tensors) == sorted(ref)
    for name, value in ref.items():
        np.testing.assert_array_equal(network.tensors[name], value.numpy(), err_msg=name)
    assert network.class_name == 'Generator'
    assert network.init_kwargs['synthesis_kwargs'] == dict(
        channel_base=BASE, channel_max=CMAX, num_fp16_res=2, conv_clamp=CLAMP
    )
    other = stylegan2_pkl.read_network_pickle(str(converted['pkl']), key='G')
    assert not np.array_equal(other.tensors['mapping.fc0.weight'], ref['mapping.fc0.weight'])
    with pytest.raises(ConversionError, match="'D' is a Discriminator"):
        sg2.read_source(str(converted['pkl']), 'D')
    with pytest.raises(ValueError, match=r"no network 'E' .* found \['D', 'G', 'G_ema'"):
        stylegan2_pkl.read_network_pickle(str(converted['pkl']), key='E')
    cut = converted['base'] / 'cut.pkl'
    cut.write_bytes(converted['pkl'].read_bytes()[:5000])
    with pytest.raises(ValueError, match=f'{cut} is a damaged StyleGAN2-ADA pickle'):
        stylegan2_pkl.read_network_pickle(str(cut))


def test_tensor_only_exports_convert_to_the_same_variables(converted, tmp_path):
    state = converted['reference'].state_dict()
    pth, npz = tmp_path / 'g_ema.pth', tmp_path / 'g_ema.npz'
    torch.save({'G_ema': state}, pth)
    np.savez(npz, **{k: v.numpy() for k, v in state.items()})
    want = converted['prior'].variables
    _, report = sg2.convert_stylegan2(
        str(pth), str(tmp_path / 'out'), options={'conv_clamp': CLAMP}
    )
    chex.assert_trees_all_equal(priors.load_prior(str(tmp_path / 'out')).variables, want)
    assert report['spec'] == converted['prior'].spec
    assert any('does not record conv_clamp' in note for note in report['notes'])
    tensors, size, options, _, _ = sg2.read_source(str(npz))
    prior, _ = sg2.convert_network(tensors, size, {**options, 'conv_clamp': CLAMP})
    chex.assert_trees_all_equal(prior.variables, want)
    with pytest.raises(ValueError, match=r"Unknown stylegan2 option\(s\) \['clamp'\]"):
        sg2.convert_stylegan2(str(pth), str(tmp_path / 'bad'), options={'clamp': 1})


def test_unmapped_missing_and_misshapen_tensors_are_listed(converted):
    state = {k: v.numpy() for k, v in converted['reference'].state_dict().items()}
    del state['synthesis.b8.conv0.noise_const']
    state['synthesis.b8.conv0.extra'] = np.zeros(3, np.float32)
    state['mapping.fc0.bias'] = np.zeros(HIDDEN + 1, np.float32)
    state['synthesis.b16.resample_filter'] = np.ones((4, 4), np.float32)
    options = dict(converted['prior'].spec)
    for key in ('kind', 'num_classes', 'image_size'):
        del options[key]
    with pytest.raises(ConversionError) as err:
        sg2.convert_network(state, RES, options, source='edited')
    message = str(err.value)
    assert 'synthesis.b8.conv0.extra (3,)' in message  # unmapped
    assert 'synthesis.b8.conv0.noise_const (for buffers/synthesis/b8/conv0/noise_const)' in message
    assert 'mapping.fc0.bias (25,) -> params/mapping/fc0/bias (25,), model has (24,)' in message
    assert 'synthesis.b16.resample_filter: not the FIR filter' in message


def test_generator_arguments_it_cannot_build_are_listed():
    kwargs = dict(z_dim=Z, c_dim=10, w_dim=W, img_resolution=RES, img_channels=3, extra=1)
    kwargs['synthesis_kwargs'] = dict(architecture='resnet', channel_bases=3)
    with pytest.raises(ConversionError) as err:
        sg2.options_from_kwargs([], kwargs)
    message = str(err.value)
    expected = (
        "unknown Generator argument 'extra'",
        'c_dim=10: class-conditional',
        "synthesis_kwargs.architecture='resnet'",
        "unknown synthesis_kwargs argument 'channel_bases'",
    )
    for part in expected:
        assert part in message, part
    size, options, _ = sg2.options_from_kwargs([Z, 0, W, RES, 3], {})  # Positional, defaults.
    assert size == RES and options['channel_base'] == 32768 and options['mapping_layers'] == 8


class StorageBytes:
    """Pickles as `torch.storage._load_from_bytes(data)` (how tensor storages pickle)."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


def _payload_bytes(marker):
    buf = io.BytesIO()
    torch.save(Payload(marker), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


@pytest.mark.parametrize('case', ['global', 'unknown-class', 'storage-bytes', 'zip-export'])
def test_malicious_files_are_refused_and_nothing_runs(case, tmp_path):
    marker = tmp_path / 'marker'
    src = tmp_path / ('evil.pth' if case == 'zip-export' else 'evil.pkl')
    source = SOURCE.format(marker=str(marker))
    g = Discriminator()  # Any persistent object will do: the refusal comes first.
    if case == 'global':
        write_pickle(src, {'G_ema': g, 'x': Payload(marker)}, source)
        expect = r'names the global (posix|os)\.system'
    elif case == 'unknown-class':
        write_pickle(src, {'G_ema': g}, source, class_names={Discriminator: 'Payload'})
        expect = "class 'Payload', which is not a StyleGAN2-ADA network class"
    elif case == 'storage-bytes':
        write_pickle(src, {'G_ema': g, 'x': StorageBytes(_payload_bytes(marker))}, source)
        expect = 'a tensor storage in it is not plain tensor data'
    else:
        torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': Payload(marker)}, src)
        expect = 'arbitrary code'
    with pytest.raises(UnsafeCheckpointError, match=expect) as err:
        sg2.convert_stylegan2(str(src), str(tmp_path / 'out'))
    assert str(src) in str(err.value) and 'Nothing from it was executed' in str(err.value)
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_resize_is_torchvisions_antialiased_bilinear():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = F.interpolate((x[:, :, 2:22, 2:22] + 1) / 2, size=(8, 8), mode='bilinear', antialias=True)
    ours = flax_sg2.to_images(x.numpy().transpose(0, 2, 3, 1), crop=20, size=8)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def _run_launcher(argv, capsys):
    """launch/convert.py's main in-process; returns (status, captured stdout/stderr)."""
    capsys.readouterr()
    status = in_process.call_launcher('convert', argv)
    return status, capsys.readouterr()


def test_launcher(converted, tmp_path, capsys):
    dst = tmp_path / 'prior'
    status, out = _run_launcher(
        ['--kind=stylegan2_ada', f'--src={converted["pkl"]}', f'--dst={dst}'], capsys
    )
    assert status == 0, out.err[-2000:]
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report['kind'] == 'stylegan2_ada' and report['spec'] == converted['prior'].spec
    assert priors.load_prior(str(dst)).kind == 'stylegan2'
    missing = tmp_path / 'ffhq.pkl'
    status, out = _run_launcher(
        ['--kind=stylegan2_ada', f'--src={missing}', f'--dst={tmp_path / "new"}'], capsys
    )
    errors = [line for line in out.err.splitlines() if line.startswith('error:')]
    assert status == 1 and len(errors) == 1 and 'Traceback' not in out.err
    assert f'StyleGAN2-ADA generator not found: {missing}' in errors[0]
    assert not (tmp_path / 'new').exists()
