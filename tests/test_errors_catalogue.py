"""The bad-input catalogue: every case stops with one clear `error:` line and no partial output.

Each case runs a launcher on a command line (`cli.call` in this process, or a real
subprocess for a few) and checks: the exit status (1, or 2 for a bad command line), exactly
one stderr line starting with `error:`, which is the last non-empty line and contains the
case's expected text, no `Traceback` (that needs `--verbose`), no exception reported after
it (e.g. orbax's 'Event loop is closed' after a failed read), and no partial output (the
workdir is absent or empty, or for a failure in the middle of a run, no bad checkpoint).

`docs/errors.md` is generated from `CASES`: `python tests/test_errors_catalogue.py`
rewrites it, and `test_docs_are_up_to_date` fails when it is stale.
"""

import dataclasses
import errno
import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'errors.md')
CELEBA = 'configs/celeba.py'
RUNLOCAL = 'configs/celeba.py:runlocal'
ATTACK = 'configs/attack_celeba.py'


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where a case's inputs and outputs live (a fresh `tmp` per case)."""

    tmp: str
    target: str  # A 4-class vgg16_tiny trainer-style dir at 32 px.
    prior: str  # A tiny GMI prior at 32 px.
    attack: str  # An attack dir with four 32 px reconstructions.

    @property
    def workdir(self) -> str:
        return os.path.join(self.tmp, 'wd')


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: how to trigger it, the error line it must give and what to do."""

    id: str
    input: str  # The bad input, in words.
    command: str  # The command shape, for the docs.
    expect: str  # A stable part of the error line.
    fix: str  # What to do.
    launcher: str
    args: Callable[[Paths], list[str]]
    status: int = 1
    setup: Callable[[Paths], None] | None = None
    patch: Callable[[Paths, pytest.MonkeyPatch], None] | None = None
    outputs: Callable[[Paths], None] | None = None  # None: the workdir stays absent/empty.
    subprocess: bool = False


# --------------------------------------------------------------------------- setups


def _fake_celeba(p: Paths) -> str:
    from tldmi_jax.data import testing

    root = os.path.join(p.tmp, 'celeba')
    testing.write_fake_celeba(root)
    return root


def _celeba_args(root: str) -> Callable[[Paths], list[str]]:
    def args(p: Paths) -> list[str]:
        data_root = root if os.path.isabs(root) else os.path.join(p.tmp, root)
        return [
            f'--config={CELEBA}',
            f'--workdir={p.workdir}',
            f'--config.data.root={data_root}',
            f'--config.data.data_dir={os.path.join(p.tmp, "tfds")}',
        ]

    return args


def _missing_image(p: Paths) -> None:
    root = _fake_celeba(p)
    with open(os.path.join(root, 'trainset.txt'), 'a') as f:
        f.write('missing_000.jpg 0\n')


def _undecodable_image(p: Paths) -> None:
    root = _fake_celeba(p)
    with open(os.path.join(root, 'img_align_celeba', '000001.jpg'), 'wb') as f:
        f.write(b'this is not a JPEG')


def _fake_fashion(p: Paths) -> None:
    from tldmi_jax.data import testing

    testing.write_fake_fashion_mnist(os.path.join(p.tmp, 'fashion'), train_per_class=8)


def _truncated_target(p: Paths) -> None:
    copy = os.path.join(p.tmp, 'truncated')
    shutil.copytree(p.target, copy)
    files = [
        os.path.join(d, f)
        for d, _, names in os.walk(os.path.join(copy, 'model_final'))
        for f in names
    ]
    largest = max(files, key=os.path.getsize)
    with open(largest, 'r+b') as f:
        f.truncate(os.path.getsize(largest) // 2)


def _pickle_with_code(p: Paths) -> None:
    with open(os.path.join(p.tmp, 'evil.pth'), 'wb') as f:
        pickle.dump({'fc.weight': _RunsCode(os.path.join(p.tmp, 'marker'))}, f, protocol=2)


class _RunsCode:
    """Unpickles as a call to `os.system` (which must never happen)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _file_in_the_way(p: Paths) -> None:
    with open(os.path.join(p.tmp, 'file'), 'w') as f:
        f.write('a file where the workdir should go\n')


def _other_run(p: Paths) -> None:
    from tldmi_jax import config_lib

    config = config_lib.load_config_file(RUNLOCAL, ROOT)
    config.optim.lr = 0.5
    os.makedirs(p.workdir)
    with open(os.path.join(p.workdir, 'config.json'), 'w') as f:
        f.write(config_lib.config_to_json(config))


def _random_bytes(p: Paths) -> None:
    with open(os.path.join(p.tmp, 'model.pth'), 'wb') as f:
        f.write(bytes(range(7, 250)) * 16)


def _runlocal_run(p: Paths) -> str:
    """`W` as a runlocal train left it: its config and a recorded (empty) set of inputs."""
    from tldmi_jax import config_lib

    os.makedirs(p.workdir)
    with open(os.path.join(p.workdir, 'config.json'), 'w') as f:
        f.write(config_lib.config_to_json(config_lib.load_config_file(RUNLOCAL, ROOT)))
    with open(os.path.join(p.workdir, 'inputs.json'), 'w') as f:
        json.dump({'workdir': p.workdir, 'inputs': {}}, f)
    return p.workdir


SHORT = ('--config.total_steps=2', '--config.checkpoint_every_steps=2')


def _damaged_checkpoints(p: Paths) -> None:
    """A short run whose only checkpoint step lost half of its largest file."""
    from tldmi_jax import config_lib
    from tldmi_jax.train import classifier
    from tldmi_jax.utils import workdir

    config = config_lib.load_config_file(RUNLOCAL, ROOT)
    config.total_steps, config.checkpoint_every_steps = 2, 2
    classifier.train_and_evaluate(config, p.workdir)
    workdir.release_all()
    step = os.path.join(p.workdir, 'checkpoints', '2')
    files = [os.path.join(d, f) for d, _, names in os.walk(step) for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, 'r+b') as f:
        f.truncate(os.path.getsize(largest) // 2)


def _damaged_metrics(p: Paths) -> None:
    _runlocal_run(p)
    with open(os.path.join(p.workdir, 'metrics.jsonl'), 'w') as f:
        f.write('{"step": 10, "train/loss": 1.2}\n{"step": 20, "train/lo\x00\x00\n{"step": 30}\n')


def _damaged_reconstructions(p: Paths) -> None:
    shutil.copytree(p.attack, os.path.join(p.tmp, 'attack'))
    path = os.path.join(p.tmp, 'attack', 'reconstructions.npz')
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def _attack_of_another_target(p: Paths) -> None:
    """W holds an attack on the same command line whose target was another model then."""
    from tldmi_jax import config_lib

    config = config_lib.load_config_file(ATTACK, ROOT)
    config.target.checkpoint, config.prior.checkpoint = p.target, p.prior
    config.identities.count = 4
    os.makedirs(p.workdir)
    with open(os.path.join(p.workdir, 'config.json'), 'w') as f:
        f.write(config_lib.config_to_json(config))
    inputs = {
        'target.checkpoint': [{'path': p.target, 'sha256': 'of the target the run started'}],
    }
    with open(os.path.join(p.workdir, 'inputs.json'), 'w') as f:
        json.dump({'workdir': p.workdir, 'inputs': inputs}, f)


def _reconstructions_of_another_target(p: Paths) -> None:
    """An attack directory whose attack.json records another target's fingerprint."""
    shutil.copytree(p.attack, os.path.join(p.tmp, 'attack'))
    path = os.path.join(p.tmp, 'attack', 'attack.json')
    with open(path) as f:
        meta = json.load(f)
    meta['target'] = dict(meta['target'], fingerprint='0123456789abcdef', checkpoint='/old/target')
    with open(path, 'w') as f:
        json.dump(meta, f)


def _attack_of_other_identities(p: Paths) -> None:
    """An attack directory of identities 7-8 (the shared artefact attacked 0-3)."""
    from tldmi_jax import reconstructions

    ids = np.array([7, 8], np.int32)
    reconstructions.save(
        os.path.join(p.tmp, 'other'), np.zeros((2, 32, 32, 3)), ids, ids * 0, ids * 0
    )


def _userstudy(*flags: str, mode: str = 'prepare') -> Callable[[Paths], list[str]]:
    """launch/userstudy.py on the generated data; `{attack}`/`{tmp}` in flags are filled in."""

    def args(p: Paths) -> list[str]:
        filled = [f.format(attack=p.attack, tmp=p.tmp) for f in flags]
        return [
            '--config=configs/userstudy.py',
            f'--workdir={p.workdir}',
            f'--config.mode={mode}',
            '--config.data.name=synthetic',
            *filled,
        ]

    return args


def _kedmi_prior_of_seven_classes(p: Paths) -> None:
    from tldmi_jax import priors

    path = os.path.join(p.tmp, 'kedmi7')
    priors.save_prior(path, priors.make_prior('kedmi', num_classes=7, image_size=32, tiny=True))


# --------------------------------------------------------------------------- patches


def _oom(p: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    from tldmi_jax.train import classifier

    def make_train_step(*args, **kwargs):
        def step(state, batch):
            raise jax.errors.JaxRuntimeError(
                'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17.18GiB.'
            )

        return step

    monkeypatch.setattr(classifier, 'make_train_step', make_train_step)


def _partial_jax_environment(p: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
    monkeypatch.delenv('JAX_NUM_PROCESSES', raising=False)
    monkeypatch.delenv('JAX_PROCESS_ID', raising=False)


def _disk_full(p: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    from tldmi_jax.utils import checkpoint

    def save_state(mngr, step, state):
        path = os.path.join(p.workdir, 'checkpoints', str(step))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(checkpoint, 'save_state', save_state)


# --------------------------------------------------------------------------- output checks


def _workdir_clean(p: Paths) -> None:
    wd = p.workdir
    assert not os.path.exists(wd) or not os.listdir(wd), os.listdir(wd)


def _only_the_other_runs_config(p: Paths) -> None:
    assert os.listdir(p.workdir) == ['config.json']
    with open(os.path.join(p.workdir, 'config.json')) as f:
        assert json.load(f)['optim']['lr'] == 0.5


def _checkpoints_finite(p: Paths) -> None:
    from tldmi_jax.utils import checkpoint

    ckpt = os.path.join(p.workdir, 'checkpoints')
    steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
    assert steps, 'the last good checkpoint is kept'
    mngr = checkpoint.manager(ckpt, 2)
    tree = mngr.restore(steps[-1])
    mngr.close()
    for leaf in jax.tree.leaves(tree['params']):
        assert np.isfinite(leaf).all()
    assert not os.path.exists(os.path.join(p.workdir, 'model_final'))


def _no_checkpoint(p: Paths) -> None:
    assert not os.path.exists(os.path.join(p.workdir, 'model_final'))


def _user_workdir(p: Paths) -> None:
    """A finished trainer workdir with a user's notes in it."""
    shutil.copytree(p.target, os.path.join(p.tmp, 'run'))
    with open(os.path.join(p.tmp, 'run', 'notes.txt'), 'w') as f:
        f.write('my notes\n')


def _user_workdir_intact(p: Paths) -> None:
    run = os.path.join(p.tmp, 'run')
    assert sorted(os.listdir(run)) == ['config.json', 'model_final', 'notes.txt']
    assert open(os.path.join(run, 'notes.txt')).read() == 'my notes\n'
    assert os.listdir(os.path.join(run, 'model_final'))


def _other_run_and_notes(p: Paths) -> None:
    _other_run(p)
    with open(os.path.join(p.workdir, 'notes.txt'), 'w') as f:
        f.write('my notes\n')


def _other_run_and_notes_intact(p: Paths) -> None:
    assert sorted(os.listdir(p.workdir)) == ['config.json', 'notes.txt']


def _no_conversion(p: Paths) -> None:
    assert not os.path.exists(os.path.join(p.tmp, 'out'))
    assert not os.path.exists(os.path.join(p.tmp, 'marker')), 'the pickle ran code'


def _run_kept(*names: str) -> Callable[[Paths], None]:
    """The previous run's files are all still there, and nothing was added (empty dirs aside)."""

    def check(p: Paths) -> None:
        found = sorted(
            os.path.relpath(os.path.join(d, f), p.workdir)
            for d, _, files in os.walk(p.workdir)
            for f in files
        )
        for name in names:
            assert any(f == name or f.startswith(name + os.sep) for f in found), (name, found)
        assert all(any(f == n or f.startswith(n + os.sep) for n in names) for f in found), found

    return check


def _damaged_step_kept(p: Paths) -> None:
    assert os.listdir(os.path.join(p.workdir, 'checkpoints', '2')), 'nothing was deleted'
    assert os.path.exists(os.path.join(p.workdir, 'results.json'))


def _rl(*extra: str) -> Callable[[Paths], list[str]]:
    """`train.py` on the runlocal config with `extra` overrides."""
    return lambda p: [f'--config={RUNLOCAL}', f'--workdir={p.workdir}', *extra]


def _attack(*extra: str, target: str = 'target', prior: str = 'prior'):
    """`attack.py` (GMI unless overridden) on the fake target and prior."""

    def args(p: Paths) -> list[str]:
        t = p.target if target == 'target' else os.path.join(p.tmp, target)
        return [
            f'--config={ATTACK}',
            f'--workdir={p.workdir}',
            f'--config.target.checkpoint={t}',
            f'--config.prior.checkpoint={p.prior}',
            *extra,
        ]

    return args


def _evaluate(*extra: str, attack: str = ''):
    """`evaluate.py` on the fake target as evaluation model; `attack`: a directory under the
    case's tmp ('' for the shared reconstructions); `extra` may name `{p.target}`, `{p.tmp}`."""

    def args(p: Paths) -> list[str]:
        return [
            '--config=configs/evaluate_celeba.py',
            f'--workdir={p.workdir}',
            f'--config.attack_dir={os.path.join(p.tmp, attack) if attack else p.attack}',
            f'--config.eval_model.checkpoint={p.target}',
            *(x.format(p=p) for x in extra),
        ]

    return args


TRAIN = 'python launch/train.py --config=configs/celeba.py[:runlocal] --workdir=W'
ATTACK_CMD = (
    'python launch/attack.py --config=configs/attack_celeba.py --workdir=W '
    '--config.target.checkpoint=T --config.prior.checkpoint=P'
)

CASES = [
    Case(
        id='config-typo',
        input='a misspelt config field',
        command=f'{TRAIN} --config.optim.lrr=0.1',
        expect='--config.optim.lrr: no such config field \'lrr\'; did you mean "lr"?',
        fix='Spell the field as the config file does (the line suggests the nearest name).',
        launcher='train',
        args=_rl('--config.optim.lrr=0.1'),
        status=2,
        subprocess=True,
    ),
    Case(
        id='bad-config-value',
        input='a config value of the wrong type',
        command=f'{TRAIN} --config.optim.lr=fast',
        expect="flag --config.optim.lr=fast: could not convert string to float: 'fast'",
        fix='Give a value of the type the field has (a float here).',
        launcher='train',
        args=_rl('--config.optim.lr=fast'),
        status=2,
    ),
    Case(
        id='unknown-config-arg',
        input="an unknown ':arg' of a config file",
        command='python launch/train.py --config=configs/celeba.py:archh=ir152 --workdir=W',
        expect="Unknown config argument 'archh'; known: arch, defense, runlocal.",
        fix='Use one of the arguments listed (`:arch=ir152`).',
        launcher='train',
        args=lambda p: [f'--config={CELEBA}:archh=ir152', f'--workdir={p.workdir}'],
        status=2,
    ),
    Case(
        id='unknown-flag',
        input='a flag the launcher does not have',
        command=f'{TRAIN} --lr=0.1',
        expect="Unknown command line flag 'lr'",
        fix='Launchers take only --config, --workdir (and --verbose); set fields as --config.*.',
        launcher='train',
        args=_rl('--lr=0.1'),
        status=2,
    ),
    Case(
        id='missing-workdir',
        input='no --workdir',
        command='python launch/train.py --config=configs/celeba.py:runlocal',
        expect='--workdir is required',
        fix='Pass --workdir=DIR; every output goes under it.',
        launcher='train',
        args=lambda p: [f'--config={RUNLOCAL}'],
        status=2,
    ),
    Case(
        id='missing-data-dir',
        input='a data root that does not exist',
        command=f'{TRAIN} --config.data.root=/no/such/celeba',
        expect='celeba_mi manual directory: directory /no/such/celeba does not exist',
        fix='Point --config.data.root at the manual directory (see README, Data).',
        launcher='train',
        args=_celeba_args('/no/such/celeba'),
        subprocess=True,
    ),
    Case(
        id='empty-data-dir',
        input='an empty data root',
        command=f'{TRAIN} --config.data.root=EMPTY_DIR',
        expect='is empty (see the README, Data)',
        fix='Put img_align_celeba/ and the split files in the data root.',
        launcher='train',
        args=_celeba_args('empty'),
        setup=lambda p: os.makedirs(os.path.join(p.tmp, 'empty')),
    ),
    Case(
        id='split-file-missing-image',
        input='a split file naming an image that is not there',
        command=f'{TRAIN} --config.data.root=DIR',
        expect='celeba_mi private_train: image file',
        fix='Restore the image or remove its line from the split file (the line names both).',
        launcher='train',
        args=_celeba_args('celeba'),
        setup=_missing_image,
    ),
    Case(
        id='undecodable-image',
        input='an image file that does not decode',
        command=f'{TRAIN} --config.data.root=DIR',
        expect='does not decode (corrupt or not an image)',
        fix='Replace the named file with a valid image.',
        launcher='train',
        args=_celeba_args('celeba'),
        setup=_undecodable_image,
    ),
    Case(
        id='grayscale-for-rgb',
        input='grayscale images where the model expects RGB',
        command=(
            'python launch/train.py --config=configs/fashion_mnist.py --workdir=W '
            '--config.data.channels=3'
        ),
        expect='config.data.channels=3 but fashion_mnist_mi images have 1 channels',
        fix="Set --config.data.channels to the data's channels (1 for Fashion-MNIST).",
        launcher='train',
        args=lambda p: [
            '--config=configs/fashion_mnist.py:runlocal',
            f'--workdir={p.workdir}',
            f'--config.data.root={os.path.join(p.tmp, "fashion")}',
            '--config.data.channels=3',
        ],
        setup=_fake_fashion,
    ),
    Case(
        id='image-size-too-small',
        input='an image size the architecture cannot take',
        command=f'{TRAIN} --config.data.image_size=8',
        expect='config.data.image_size=8 is too small for vgg16_tiny',
        fix='Use the size the architecture is built for (named in the line). Images of '
        'another size in the data directory are resized, as in the original code.',
        launcher='train',
        args=_rl('--config.data.image_size=8'),
    ),
    Case(
        id='unknown-dataset',
        input='an unknown dataset name',
        command=f'{TRAIN} --config.data.name=imagenet',
        expect="unknown dataset 'imagenet'; valid:",
        fix='Use one of the datasets listed.',
        launcher='train',
        args=_rl('--config.data.name=imagenet'),
    ),
    Case(
        id='unknown-arch',
        input='an unknown architecture',
        command=f'{TRAIN} --config.model.arch=vgg19',
        expect="Unknown arch 'vgg19'; known:",
        fix='Use one of the architectures listed.',
        launcher='train',
        args=_rl('--config.model.arch=vgg19'),
    ),
    Case(
        id='unknown-defense',
        input='an unknown defense',
        command=f'{TRAIN} --config.defense.name=mixup',
        expect="Unknown defense 'mixup' in 'mixup'; valid:",
        fix="Use one of the defenses listed, or a '+'-joined combination.",
        launcher='train',
        args=_rl('--config.defense.name=mixup'),
    ),
    Case(
        id='unknown-attack',
        input='an unknown attack',
        command=(
            'python launch/attack.py --config=configs/attack_celeba.py:attack=brepmi,runlocal '
            '--workdir=W'
        ),
        expect="Unknown attack 'brepmi'; use one of",
        fix='Use one of the attacks listed.',
        launcher='attack',
        args=lambda p: [f'--config={ATTACK}:attack=brepmi,runlocal', f'--workdir={p.workdir}'],
    ),
    Case(
        id='freeze-rule-matches-nothing',
        input='a freeze rule that matches no parameter',
        command=(
            f'{TRAIN} --config.defense.name=tldmi '
            "--config.defense.rules='conv9/.*:frozen;.*:trainable'"
        ),
        expect="Freeze rules match no parameter: ['conv9/.*']",
        fix='Fix the regex; `launch/describe.py` prints the parameter groups and names.',
        launcher='train',
        args=_rl(
            '--config.defense.name=tldmi', '--config.defense.rules=conv9/.*:frozen;.*:trainable'
        ),
    ),
    Case(
        id='freeze-all-with-defense',
        input='a freeze spec that freezes everything while the defense needs gradients',
        command=f"{TRAIN} --config.defense.name=tldmi+mid --config.defense.rules='.*:frozen'",
        expect="defense 'tldmi+mid' trains through its loss, but the freeze spec",
        fix='Leave some parameters trainable (a later cut point, or a final `.*:trainable` rule).',
        launcher='train',
        args=_rl('--config.defense.name=tldmi+mid', '--config.defense.rules=.*:frozen'),
    ),
    Case(
        id='checkpoint-other-arch',
        input='a target checkpoint of another architecture',
        command=f'{ATTACK_CMD} --config.target.arch=ir152_tiny',
        expect='is not a ir152_tiny checkpoint with 4 classes: Cannot load params;',
        fix='Give the architecture the checkpoint was trained with (or a trainer workdir, '
        'whose config.json names it).',
        launcher='attack',
        args=_attack('--config.target.arch=ir152_tiny'),
    ),
    Case(
        id='truncated-checkpoint',
        input='a truncated (damaged) checkpoint',
        command=ATTACK_CMD,
        expect='is not a readable orbax model checkpoint',
        fix='Re-copy or retrain the checkpoint; the named directory is damaged.',
        launcher='attack',
        args=_attack(target='truncated'),
        setup=_truncated_target,
    ),
    Case(
        id='prior-wrong-kind',
        input='a prior of the wrong kind for the attack',
        command=(
            'python launch/attack.py --config=configs/attack_celeba.py:attack=kedmi '
            '--workdir=W --config.target.checkpoint=T --config.prior.checkpoint=GMI_PRIOR'
        ),
        expect='Attack kedmi needs a kedmi prior;',
        fix='Train the prior the attack needs (launch/train_gan.py :prior=KIND).',
        launcher='attack',
        args=_attack('--config.attack.name=kedmi'),
    ),
    Case(
        id='identities-beyond-classes',
        input="attacked identities beyond the target's classes",
        command=f'{ATTACK_CMD} --config.identities.first=2 --config.identities.count=8',
        expect='Identities 4..9 are outside the target classes 0..3.',
        fix='Attack identities 0..K-1 of a K-class target (identities.first/count).',
        launcher='attack',
        args=_attack('--config.identities.first=2', '--config.identities.count=8'),
    ),
    Case(
        id='pickle-with-code',
        input='a PyTorch checkpoint whose pickle would run code',
        command='python launch/convert.py --kind=vgg16 --src=evil.pth --dst=OUT',
        expect='Refused to load',
        fix='Nothing in the file ran. Get a plain state dict (tensors only) from a trusted source.',
        launcher='convert',
        args=lambda p: [
            '--kind=vgg16',
            f'--src={os.path.join(p.tmp, "evil.pth")}',
            f'--dst={os.path.join(p.tmp, "out")}',
        ],
        setup=_pickle_with_code,
        outputs=_no_conversion,
    ),
    Case(
        id='convert-over-workdir',
        input='a converter output path that holds other files (a trainer workdir, `.`)',
        command='python launch/convert.py --kind=vgg16 --src=VGG16.tar --dst=A_TRAINER_WORKDIR',
        expect='refusing to replace',
        fix='Give a new or empty --dst (an earlier conversion is replaced); nothing was changed.',
        launcher='convert',
        args=lambda p: [
            '--kind=vgg16',
            f'--src={os.path.join(p.tmp, "VGG16.tar")}',
            f'--dst={os.path.join(p.tmp, "run")}',
        ],
        setup=_user_workdir,
        outputs=_user_workdir_intact,
    ),
    Case(
        id='overwrite-with-user-files',
        input='`overwrite=True` on a workdir that also holds files this library did not write',
        command=f'{TRAIN} --config.overwrite=True (W holds another run and notes.txt)',
        expect='but it also holds files this library did not write (notes.txt)',
        fix='Move your files out of the workdir (or choose another --workdir); nothing was '
        'deleted.',
        launcher='train',
        args=_rl('--config.overwrite=True'),
        setup=_other_run_and_notes,
        outputs=_other_run_and_notes_intact,
    ),
    Case(
        id='nan-loss',
        input='a loss that becomes NaN or inf',
        command=f'{TRAIN} --config.optim.lr=1e12',
        expect='non-finite',
        fix='Lower --config.optim.lr (the line gives the step and the last finite metrics; '
        'the last good checkpoint is kept), then rerun with --config.overwrite=True or a new '
        'workdir.',
        launcher='train',
        args=_rl(
            '--config.optim.lr=1e12',
            '--config.checkpoint_every_steps=1',
            '--config.log_every_steps=1',
        ),
        outputs=_checkpoints_finite,
    ),
    Case(
        id='disk-full',
        input='disk full while saving (simulated ENOSPC)',
        command=TRAIN,
        expect='disk full while writing',
        fix='Free space (or use another --workdir) and rerun the same command: it resumes.',
        launcher='train',
        args=_rl(),
        patch=_disk_full,
        outputs=_no_checkpoint,
    ),
    Case(
        id='out-of-memory',
        input='out of device memory (simulated RESOURCE_EXHAUSTED)',
        command=TRAIN,
        expect='out of device memory',
        fix='Use the smaller batch the line suggests (attacks: --config.identities.batch_size).',
        launcher='train',
        args=_rl(),
        patch=_oom,
        outputs=_no_checkpoint,
    ),
    Case(
        id='workdir-not-writable',
        input='a workdir that cannot be written',
        command='python launch/train.py --config=configs/celeba.py:runlocal --workdir=FILE/wd',
        expect='workdir not writable:',
        fix='Choose a writable --workdir (or fix its permissions).',
        launcher='train',
        args=lambda p: [f'--config={RUNLOCAL}', f'--workdir={os.path.join(p.tmp, "file", "wd")}'],
        setup=_file_in_the_way,
        outputs=lambda p: None,
    ),
    Case(
        id='workdir-other-config',
        input='a workdir that holds a run with another config',
        command=f'{TRAIN} (W holds a run with --config.optim.lr=0.5)',
        expect='holds a run with a different config (optim.lr: 0.5 -> 0.01);',
        fix='Rerun with the same config to resume, choose another --workdir, or pass '
        '--config.overwrite=True to delete that run.',
        launcher='train',
        args=_rl(),
        setup=_other_run,
        outputs=_only_the_other_runs_config,
    ),
    Case(
        id='too-many-devices',
        input='more devices requested than present',
        command=f'{TRAIN} --config.devices=64',
        expect='config.devices=64 but',
        fix='Use --config.devices=0 (all) or at most the count in the line.',
        launcher='train',
        args=_rl('--config.devices=64'),
    ),
    Case(
        id='distributed-environment-partial',
        input='a multi-process run with only some of its JAX_* variables set',
        command=f'JAX_COORDINATOR_ADDRESS=host:1234 {TRAIN} --config.distributed=True',
        expect='--config.distributed=True: JAX_NUM_PROCESSES, JAX_PROCESS_ID not set; set all '
        'of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID',
        fix='Set the three variables in every process (docs/scaling.md), or none of them on '
        'Slurm or Cloud TPU.',
        launcher='train',
        args=_rl('--config.distributed=True'),
        patch=_partial_jax_environment,
    ),
    Case(
        id='empty-workdir',
        input='an empty --workdir',
        command='python launch/train.py --config=configs/celeba.py:runlocal --workdir=',
        expect='--workdir is empty; give the directory the run writes to',
        fix='Pass --workdir=DIR; every output goes under it.',
        launcher='train',
        args=lambda p: [f'--config={RUNLOCAL}', '--workdir='],
        status=2,
    ),
    Case(
        id='batch-size-zero',
        input='a batch size of 0',
        command=f'{TRAIN} --config.batch_size=0',
        expect='config.batch_size=0: must be an integer >= 1',
        fix='Every numeric field is checked before anything is written; use a value in the '
        'range the line gives.',
        launcher='train',
        args=_rl('--config.batch_size=0'),
    ),
    Case(
        id='total-steps-negative',
        input='a negative step count (it wrote an untrained model as final)',
        command=f'{TRAIN} --config.total_steps=-5',
        expect='config.total_steps=-5: must be an integer >= 0',
        fix='Use total_steps >= 1, or 0 to train for config.epochs.',
        launcher='train',
        args=_rl('--config.total_steps=-5'),
    ),
    Case(
        id='freeze-layers-negative',
        input='a negative freeze index other than -1 (it became the official index silently)',
        command=f'{TRAIN} --config.defense.name=tldmi --config.defense.freeze_layers=-5',
        expect="config.defense.freeze_layers=-5: must be -1 (the architecture's official index) "
        'or an integer >= 0',
        fix="Give the original's child index k >= 0, or -1 for the architecture's official one.",
        launcher='train',
        args=_rl('--config.defense.name=tldmi', '--config.defense.freeze_layers=-5'),
    ),
    Case(
        id='seed-negative',
        input='a negative seed',
        command=f'{TRAIN} --config.seed=-1',
        expect='config.seed=-1: must be an integer >= 0',
        fix='Use a seed >= 0.',
        launcher='train',
        args=_rl('--config.seed=-1'),
    ),
    Case(
        id='n-critic-zero',
        input='zero critic steps per generator step',
        command=(
            'python launch/train_gan.py --config=configs/gan_celeba.py:runlocal --workdir=W '
            '--config.n_critic=0'
        ),
        expect='config.n_critic=0: must be an integer >= 1',
        fix='Use n_critic >= 1 (the originals: 5).',
        launcher='train_gan',
        args=lambda p: [
            '--config=configs/gan_celeba.py:runlocal',
            f'--workdir={p.workdir}',
            '--config.n_critic=0',
        ],
    ),
    Case(
        id='attack-lr-nan',
        input='a NaN attack learning rate (it wrote all-NaN reconstructions)',
        command=f'{ATTACK_CMD} --config.attack.lr=nan',
        expect='config.attack.lr=nan: must be a finite number > 0',
        fix='Give a finite positive rate, or leave it unset for the attack module default.',
        launcher='attack',
        args=_attack('--config.attack.lr=nan'),
    ),
    Case(
        id='attack-steps-zero',
        input='zero attack steps (it wrote unoptimised samples)',
        command=f'{ATTACK_CMD} --config.attack.steps=0',
        expect='config.attack.steps=0: must be an integer >= 1',
        fix='Use steps >= 1, or leave it unset for the attack module default.',
        launcher='attack',
        args=_attack('--config.attack.steps=0'),
    ),
    Case(
        id='num-seeds-zero',
        input='zero seeds per identity',
        command=f'{ATTACK_CMD} --config.attack.num_seeds=0',
        expect='config.attack.num_seeds=0: must be an integer >= 1',
        fix='Use num_seeds >= 1, or leave it unset for the attack module default.',
        launcher='attack',
        args=_attack('--config.attack.num_seeds=0'),
    ),
    Case(
        id='identities-batch-zero',
        input='zero identities per batch',
        command=f'{ATTACK_CMD} --config.identities.batch_size=0',
        expect='config.identities.batch_size=0: must be an integer >= 1',
        fix='Use identities.batch_size >= 1 (the original: 60).',
        launcher='attack',
        args=_attack('--config.identities.batch_size=0'),
    ),
    Case(
        id='input-changed',
        input='a resumed run whose input changed (a target retrained in place)',
        command=f'{ATTACK_CMD} (W holds the same attack, started on another T)',
        expect='input changed since the run started: target.checkpoint (',
        fix='Restore the input, or pass --config.overwrite=True to delete that run and start '
        'afresh; resuming would mix outputs of both versions.',
        launcher='attack',
        args=_attack('--config.identities.count=4'),
        setup=_attack_of_another_target,
        outputs=_run_kept('config.json', 'inputs.json'),
    ),
    Case(
        id='checkpoints-damaged',
        input='a run whose every checkpoint step is damaged (truncated file)',
        command=f'{TRAIN} (W/checkpoints/2 truncated)',
        expect='/wd/checkpoints: every step is damaged or unreadable (steps 2; ',
        fix='Pass --config.overwrite=True to delete them and start afresh, or restore the '
        'directory. A damaged newest step alone is moved aside (STEP.damaged) with a warning and '
        'the run resumes from the newest readable one.',
        launcher='train',
        args=_rl(*SHORT),
        setup=_damaged_checkpoints,
        outputs=_damaged_step_kept,
    ),
    Case(
        id='metrics-line-damaged',
        input='a damaged line inside metrics.jsonl (a torn last line is dropped silently)',
        command=f'{TRAIN} (W/metrics.jsonl line 2 damaged)',
        expect='/wd/metrics.jsonl, line 2: damaged record (',
        fix='Delete or repair the named line (or restore the file), then rerun the same command.',
        launcher='train',
        args=_rl(),
        setup=_damaged_metrics,
        outputs=_run_kept('config.json', 'inputs.json', 'metrics.jsonl'),
    ),
    Case(
        id='reconstructions-damaged',
        input='a damaged reconstructions.npz',
        command=(
            'python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=W '
            '--config.attack_dir=A --config.eval_model.checkpoint=E'
        ),
        expect='/attack/reconstructions.npz: cannot read the reconstructions (damaged or '
        'truncated archive',
        fix='Rerun the attack that wrote them (its workdir resumes and rewrites the file).',
        launcher='evaluate',
        args=_evaluate(attack='attack'),
        setup=_damaged_reconstructions,
    ),
    Case(
        id='reconstructions-of-another-target',
        input='reconstructions made against another target than the one given (evaluate, fisher)',
        command=(
            'python launch/fisher.py --config=configs/fisher_celeba.py --workdir=W '
            '--config.attack_dir=A --config.target.checkpoint=OTHER_TARGET'
        ),
        expect='was made against another target (fingerprint 0123456789abcdef, /old/target)',
        fix='Give the target the attack inverted (attack.json names it), or rerun the attack '
        'against this one.',
        launcher='fisher',
        args=lambda p: [
            '--config=configs/fisher_celeba.py',
            f'--workdir={p.workdir}',
            f'--config.attack_dir={os.path.join(p.tmp, "attack")}',
            f'--config.target.checkpoint={p.target}',
        ],
        setup=_reconstructions_of_another_target,
    ),
    Case(
        id='evaluate-reconstructions-of-another-target',
        input='the same, given to evaluate.py',
        command=(
            'python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=W '
            '--config.attack_dir=A --config.eval_model.checkpoint=E '
            '--config.target.checkpoint=OTHER_TARGET'
        ),
        expect='was made against another target (fingerprint 0123456789abcdef, /old/target)',
        fix='As above.',
        launcher='evaluate',
        args=_evaluate('--config.target.checkpoint={p.target}', attack='attack'),
        setup=_reconstructions_of_another_target,
    ),
    Case(
        id='kedmi-prior-other-classes',
        input='a KEDMI prior trained against a target of another class count',
        command=(
            'python launch/attack.py --config=configs/attack_celeba.py:attack=kedmi '
            '--workdir=W --config.target.checkpoint=T --config.prior.checkpoint=KEDMI_7'
        ),
        expect='was trained for a target with 7 classes, but the target has 4',
        fix='Train the KEDMI/PLG-MI prior against this target (launch/train_gan.py '
        '--config.target.checkpoint=T).',
        launcher='attack',
        args=lambda p: [
            f'--config={ATTACK}:attack=kedmi',
            f'--workdir={p.workdir}',
            f'--config.target.checkpoint={p.target}',
            f'--config.prior.checkpoint={os.path.join(p.tmp, "kedmi7")}',
        ],
        setup=_kedmi_prior_of_seven_classes,
    ),
    Case(
        id='fewer-classes-than-the-data',
        input='`model.num_classes` smaller than the classes of the data',
        command=f'{TRAIN} --config.model.num_classes=2',
        expect='config.model.num_classes=2 but synthetic has 4 classes (labels 0..3)',
        fix="Set it to at least the data's classes, or 0 to take them from the data.",
        launcher='train',
        args=_rl('--config.model.num_classes=2'),
    ),
    Case(
        id='prior-as-classifier',
        input='a GAN prior directory given where a classifier checkpoint is expected',
        command=f'{TRAIN} --config.init.checkpoint=PRIOR_DIR',
        expect='is a GAN prior (it holds prior.json), not a classifier checkpoint',
        fix='Give a trainer workdir or its model_best / model_final directory.',
        launcher='train',
        args=lambda p: [
            f'--config={RUNLOCAL}',
            f'--workdir={p.workdir}',
            f'--config.init.checkpoint={p.prior}',
        ],
    ),
    Case(
        id='unknown-prior-kind',
        input='an unknown prior kind (under runlocal it used to train a tiny target first)',
        command=(
            'python launch/train_gan.py --config=configs/gan_celeba.py:runlocal --workdir=W '
            '--config.prior.kind=stylegan'
        ),
        expect="Unknown prior kind 'stylegan'; known: gmi, kedmi, plgmi",
        fix='Use gmi, kedmi or plgmi.',
        launcher='train_gan',
        args=lambda p: [
            '--config=configs/gan_celeba.py:runlocal',
            f'--workdir={p.workdir}',
            '--config.prior.kind=stylegan',
        ],
    ),
    Case(
        id='prior-size-unbuildable',
        input='an image size the prior family cannot build (it left config.json behind)',
        command=(
            'python launch/train_gan.py --config=configs/gan_celeba.py:runlocal --workdir=W '
            '--config.data.image_size=48'
        ),
        expect='image_size must be 4 * 2**n with n >= 1, got 48',
        fix='Use 16, 32, 64, ... (the originals use 64).',
        launcher='train_gan',
        args=lambda p: [
            '--config=configs/gan_celeba.py:runlocal',
            f'--workdir={p.workdir}',
            '--config.data.image_size=48',
        ],
    ),
    Case(
        id='missing-inception-checkpoint',
        input='a FID Inception checkpoint path that does not exist (it failed after the features)',
        command=(
            'python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=W '
            '--config.attack_dir=A --config.eval_model.checkpoint=E '
            '--config.fid.inception_checkpoint=MISSING'
        ),
        expect='Model checkpoint not found: ',
        fix="Convert pytorch-fid's weights once (launch/convert.py --kind=fid_inception) and "
        'give that directory, or leave the field empty to skip FID.',
        launcher='evaluate',
        args=_evaluate('--config.fid.inception_checkpoint={p.tmp}/no_inception'),
    ),
    Case(
        id='missing-face-model-checkpoint',
        input="a FaceNet checkpoint path (PPA's delta_face) that does not exist",
        command=(
            'python launch/evaluate.py --config=configs/evaluate_ppa.py --workdir=W '
            '--config.attack_dir=A --config.eval_model.checkpoint=E '
            '--config.face_model.checkpoint=MISSING'
        ),
        expect='config.face_model.checkpoint: Model checkpoint not found: ',
        fix="Convert facenet-pytorch's 20180402-114759-vggface2.pt once (launch/convert.py "
        '--kind=facenet_vggface2) and give that directory, or leave the field empty to skip '
        'delta_face.',
        launcher='evaluate',
        args=_evaluate('--config.distance=ppa', '--config.face_model.checkpoint={p.tmp}/no_face'),
    ),
    Case(
        id='not-a-pytorch-checkpoint',
        input='a file that is not a PyTorch checkpoint given to the converter',
        command='python launch/convert.py --kind=vgg16 --src=RANDOM_BYTES --dst=OUT',
        expect='is not a PyTorch checkpoint: it is neither a zip archive (torch.save) nor a pickle',
        fix='Give the .pth/.tar file torch.save wrote.',
        launcher='convert',
        args=lambda p: [
            '--kind=vgg16',
            f'--src={os.path.join(p.tmp, "model.pth")}',
            f'--dst={os.path.join(p.tmp, "out")}',
        ],
        setup=_random_bytes,
        outputs=_no_conversion,
    ),
    Case(
        id='eval-size-mismatch',
        input="an evaluation image size that differs from the evaluation model's",
        command=(
            'python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=W '
            '--config.attack_dir=A --config.eval_model.checkpoint=E '
            '--config.eval_model.image_size=64'
        ),
        expect='config.eval_model.image_size=64 but',
        fix='Leave --config.eval_model.image_size=0: reconstructions are resized to the size '
        'the evaluation model was trained at.',
        launcher='evaluate',
        args=_evaluate('--config.eval_model.image_size=64'),
    ),
    Case(
        id='missing-attack-output',
        input='an attack directory without reconstructions',
        command=(
            'python launch/evaluate.py --config=configs/evaluate_celeba.py --workdir=W '
            '--config.attack_dir=EMPTY --config.eval_model.checkpoint=E'
        ),
        expect='No attack output:',
        fix='Point --config.attack_dir at a finished launch/attack.py workdir.',
        launcher='evaluate',
        args=_evaluate(attack='no_attack'),
    ),
    Case(
        id='sweep-piece-unknown',
        input='a sweep piece that is not in the plan',
        command='python launch/sweep.py --config=configs/sweep_celeba.py:runlocal --workdir=W '
        '--config.only=cell:nobody__gmi',
        expect="config.only='cell:nobody__gmi' is no piece of this sweep; use one of "
        'target:none, target:tldmi, eval_model',
        fix='Use a piece that --config.cells=plan lists.',
        launcher='sweep',
        args=lambda p: [
            '--config=configs/sweep_celeba.py:runlocal',
            f'--workdir={p.workdir}',
            '--config.only=cell:nobody__gmi',
        ],
    ),
    Case(
        id='sweep-piece-upstream-missing',
        input='a sweep piece run before the pieces it needs',
        command='python launch/sweep.py --config=configs/sweep_celeba.py:runlocal --workdir=W '
        '--config.only=cell:none__gmi',
        expect='cell:none__gmi needs target:none, prior:gmi, eval_model, which did not finish',
        fix='Run the pieces it names first (their --config.only= flags are in the line), or '
        'let plan_slurm.sh order them.',
        launcher='sweep',
        args=lambda p: [
            '--config=configs/sweep_celeba.py:runlocal',
            f'--workdir={p.workdir}',
            '--config.only=cell:none__gmi',
        ],
    ),
    Case(
        id='userstudy-one-arm',
        input='a user study with one arm',
        command='python launch/userstudy.py --config=configs/userstudy.py --workdir=W '
        '--config.arms.none=A',
        expect='a study compares at least two arms',
        fix='Give two or more attack workdirs, one --config.arms.NAME=DIR each.',
        launcher='userstudy',
        args=_userstudy('--config.arms.none={attack}'),
    ),
    Case(
        id='userstudy-arm-unset',
        input='an arm named in the config argument without its attack workdir',
        command='python launch/userstudy.py --config=configs/userstudy.py:arms=none+tldmi '
        '--workdir=W --config.arms.none=A',
        expect='arms without an attack workdir: tldmi; give --config.arms.tldmi=ATTACK_DIR',
        fix='Give the missing --config.arms.NAME=DIR, or leave the name out of :arms=.',
        launcher='userstudy',
        args=lambda p: [
            '--config=configs/userstudy.py:arms=none+tldmi',
            *_userstudy('--config.arms.none={attack}')(p)[1:],
        ],
    ),
    Case(
        id='userstudy-no-shared-identity',
        input='user-study arms that attacked different identities',
        command='python launch/userstudy.py --config=configs/userstudy.py --workdir=W '
        '--config.arms.none=A --config.arms.tldmi=OTHER',
        expect='the arms share no identity (none: [0, 1, 2, 3]; tldmi: [7, 8])',
        fix='Attack the same identities with every arm (the same identities.* config).',
        launcher='userstudy',
        args=_userstudy('--config.arms.none={attack}', '--config.arms.tldmi={tmp}/other'),
        setup=_attack_of_other_identities,
    ),
    Case(
        id='userstudy-not-prepared',
        input='exporting or summarising a study that was never prepared',
        command='python launch/userstudy.py --config=configs/userstudy.py --workdir=W '
        '--config.mode=export',
        expect='study/manifest.json does not exist; run launch/userstudy.py with --config.mode',
        fix='Prepare (or serve) the study in that workdir first, with its arms.',
        launcher='userstudy',
        args=_userstudy(mode='export'),
    ),
]


# --------------------------------------------------------------------------- running


@pytest.fixture(scope='module')
def artefacts(tmp_path_factory) -> dict[str, str]:
    """A fake 4-class target, a tiny GMI prior and four reconstructions (no training)."""
    from tldmi_jax import models, priors, reconstructions
    from tldmi_jax.utils import checkpoint

    base = tmp_path_factory.mktemp('artefacts')
    target = str(base / 'target')
    model = models.get_model('vgg16_tiny', 4)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    checkpoint.save_model(
        os.path.join(target, 'model_final'), variables['params'], variables['batch_stats']
    )
    with open(os.path.join(target, 'config.json'), 'w') as f:
        json.dump({'model': {'arch': 'vgg16_tiny'}, 'data': {'image_size': 32}}, f)
    prior = str(base / 'prior')
    priors.save_prior(prior, priors.make_prior('gmi', image_size=32, tiny=True))
    attack = str(base / 'attack')
    meta = {'attack': 'gmi', 'target': {'arch': 'vgg16_tiny'}, 'image_size': 32}
    zeros = np.zeros(4, np.int32)
    reconstructions.save(attack, np.zeros((4, 32, 32, 3)), np.arange(4), zeros, zeros, meta)
    return {'target': target, 'prior': prior, 'attack': attack}


def _launcher(name: str) -> str:
    return os.path.join(ROOT, 'launch', f'{name}.py')


def _in_process(case: Case, argv: list[str], capsys) -> tuple[int, str]:
    """Runs the launcher's `main` through `cli.call`; returns (status, stderr)."""
    from tests.launch import in_process  # Here: `python tests/test_errors_catalogue.py` works.

    capsys.readouterr()
    status = in_process.call_launcher(case.launcher, argv)
    return status, capsys.readouterr().err


def _subprocess(case: Case, argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, _launcher(case.launcher), *argv],
        cwd=ROOT,
        env=dict(os.environ),  # Compile settings: tests/conftest.py.
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stderr


def error_lines(stderr: str) -> tuple[list[str], str]:
    """The lines starting with 'error:', and the last non-empty line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if line.startswith('error:')], (lines or [''])[-1]


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, artefacts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # Config paths are relative to the repository.
    paths = Paths(str(tmp_path), **artefacts)
    if case.setup:
        case.setup(paths)
    if case.patch:
        case.patch(paths, monkeypatch)
    argv = case.args(paths)
    late = []  # Exceptions Python would print after the error line ('Exception ignored').
    monkeypatch.setattr(sys, 'unraisablehook', late.append)
    if case.subprocess:
        status, stderr = _subprocess(case, argv)
    else:
        # The collection below looks only at what this case made: a full collection of
        # the worker's heap took about 0.6 s per case.
        gc.freeze()
        try:
            status, stderr = _in_process(case, argv, capsys)
            time.sleep(0.05)  # Reads orbax left in flight finish on their own threads.
            gc.collect()
        finally:
            gc.unfreeze()
    errors, last = error_lines(stderr)
    assert status == case.status, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    assert last == errors[0], stderr[-3000:]
    assert case.expect in errors[0], errors[0]
    assert 'Traceback' not in stderr
    assert [(repr(u.exc_value)[:300], u.err_msg, repr(u.object)[:200]) for u in late] == []
    (case.outputs or _workdir_clean)(paths)


def test_verbose_prints_the_traceback_above_the_error_line(tmp_path):
    case = next(c for c in CASES if c.id == 'missing-data-dir')
    paths = Paths(str(tmp_path), '', '', '')
    status, stderr = _subprocess(case, [*case.args(paths), '--verbose'])
    errors, last = error_lines(stderr)
    assert status == 1
    assert 'Traceback' in stderr and 'DataError' in stderr
    assert len(errors) == 1 and last == errors[0] and case.expect in last


# One bad number per launcher: each stops at validation, before any compute or file.
BAD_NUMBERS = {
    'train': ('configs/celeba.py:runlocal', '--config.optim.lr=nan', 'config.optim.lr=nan'),
    'train_gan': ('configs/gan_celeba.py:runlocal', '--config.n_critic=0', 'config.n_critic=0'),
    'distill': (
        'configs/distill_celeba.py:runlocal',
        '--config.kd.temperature=0',
        'config.kd.temperature=0.0: must be a finite number > 0',
    ),
    'attack': ('configs/attack_celeba.py:runlocal', '--config.attack.lr=inf', 'attack.lr=inf'),
    'evaluate': (
        'configs/evaluate_celeba.py:runlocal',
        '--config.knn.chunk_size=0',
        'config.knn.chunk_size=0',
    ),
    'fisher': (
        'configs/fisher_celeba.py:runlocal',
        '--config.fisher.chunk_size=-1',
        'config.fisher.chunk_size=-1',
    ),
    'sweep': (
        'configs/sweep_celeba.py:table=paper,runlocal',
        '--config.targets.mid.overrides.defense.mid_beta=-1',
        'config.targets.mid.overrides.defense.mid_beta=-1.0: must be a finite number >= 0',
    ),
    'userstudy': (
        'configs/userstudy.py:runlocal',
        '--config.study.attention_rate=2',
        'config.study.attention_rate=2.0: must be a finite number in [0, 1]',
    ),
    'demo': (
        'configs/demo.py:runlocal',
        '--config.stages.attack.gmi.attack.steps=0',
        'config.stages.attack.gmi.attack.steps=0: must be an integer >= 1',
    ),
}


@pytest.mark.parametrize('launcher', sorted(BAD_NUMBERS))
def test_a_bad_number_stops_every_launcher_before_it_writes(
    launcher, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(ROOT)
    config, override, expect = BAD_NUMBERS[launcher]
    case = Case(
        id=launcher,
        input='',
        command='',
        expect=expect,
        fix='',
        launcher=launcher,
        args=lambda p: [],
    )
    workdir = str(tmp_path / 'wd')
    status, stderr = _in_process(
        case, [f'--config={config}', f'--workdir={workdir}', override], capsys
    )
    errors, last = error_lines(stderr)
    assert status == 1, stderr[-3000:]
    assert errors == [last] and expect in last, stderr[-3000:]
    assert 'Traceback' not in stderr
    assert not os.path.exists(workdir) and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- the docs

_INTRO = """\
# Errors and what to do

Every launcher (`launch/*.py`) reports a failure as **one line** on stderr that starts
with `error:`; it is the last line the run prints. The exit status is 1, or 2 for a bad
command line (an unknown flag, a misspelt config field, a value that does not parse).
There is no traceback unless `--verbose` is given, which prints it above the error line.
Inputs are checked before anything is written, so a bad input leaves no partial output:
no workdir is created (an existing one stays as it was). A failure in the middle of a run
(NaN loss, disk full, out of memory) keeps the last good checkpoint; rerunning the same
command resumes.

Every numeric config field is checked against its range before anything is written; the
line names the field, its value and the range (`config.attack.lr=nan: must be a finite
number > 0`). An unset placeholder (None) means the module default and is always allowed.

A workdir remembers the config of its run (`config.json`) and fingerprints of its inputs
(`inputs.json`: the target, prior, evaluation model, attack directory, ... the run read).
Rerunning with the same config and unchanged inputs resumes; a different config is refused
with the differing fields (old -> new), and a changed input with its field and path, unless
`--config.overwrite=True`, which deletes that run and starts afresh. One process at a time
runs in a workdir: a second one stops with the first one's pid. A workdir moved or copied
elsewhere resumes there.

This page is generated from the test table in `tests/test_errors_catalogue.py` (one test per
row checks the status, the single error line, the text below, that nothing is reported after
it and that no partial output is left): `python tests/test_errors_catalogue.py` rewrites it.
Cases that need two processes, a kill or a finished run have their own tests: a busy
workdir (a second launcher on it), a stale lock after `kill -9`, a moved or copied workdir
and a replaced attack target (`tests/launch/test_hardening.py`); a damaged newest checkpoint
step next to a readable older one (`tests/utils/test_checkpoint.py`); every launcher on a bad
number (`test_a_bad_number_stops_every_launcher_before_it_writes`, beside the table).

| id | bad input | command | the `error:` line contains | what to do |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def render() -> str:
    """docs/errors.md, from CASES."""
    rows = [
        f'| `{c.id}` | {_cell(c.input)} | `{_cell(c.command)}` | `{_cell(c.expect)}` '
        f'| {_cell(c.fix)} |'
        for c in CASES
    ]
    return _INTRO + '\n'.join(rows) + '\n'


def test_docs_are_up_to_date():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)
    with open(DOC) as f:
        assert f.read() == render(), 'stale: run python tests/test_errors_catalogue.py'


if __name__ == '__main__':
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, 'w') as f:
        f.write(render())
    print(f'wrote {DOC} ({len(CASES)} cases)')
