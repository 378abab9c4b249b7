"""The demo pipeline (`make demo`, `launch/demo.py`): the whole TL-DMI story in one run.

`run(config, workdir)` (config: `configs/demo.py`) runs, each stage in its own sub-workdir:

1. `pretrain/`: the demo CNN pre-trained on the public classes (Fashion-MNIST 5-9);
2. `eval_model/`: the evaluation model, another architecture, on the private classes 0-4;
3. `sweep/`: the targets (no defense; TL-DMI fine-tuned from each depth of
   `config.tldmi_depths`, initialised from `pretrain/`), the GMI prior on the public
   classes, every target attacked and evaluated (`tldmi_jax.pipelines.sweep`);
4. `fisher/`: per-layer Fisher information of the no-defense target, classification task
   (private images) vs MI task (its reconstructions);
5. `report.md` and `report.html` (self-contained: images inline), `summary.json`, and
   `grids/<target>__<attack>.png`: each private class as a row, real private images on the
   left, the reconstructions of every seed on the right.

Every stage resumes from its sub-workdir and a finished stage is skipped, so rerunning the
command after an interruption redoes only what was unfinished. With `config.runlocal` and
no `config.data.root`, small generated idx files are written to `workdir/runlocal_data`.
"""

import base64
import csv
import html
import json
import os
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from tldmi_jax import reconstructions
from tldmi_jax.analysis import fisher
from tldmi_jax.data import builders, fashion_mnist_mi, preprocess, testing
from tldmi_jax.evaluation import attack_acc
from tldmi_jax.pipelines import sweep
from tldmi_jax.reporting import grids
from tldmi_jax.train import classifier
from tldmi_jax.utils import atomic, metrics
from tldmi_jax.utils import workdir as workdir_lib

DATASET = 'fashion_mnist_mi'
TIMINGS = 'timings.json'  # Seconds per stage, summed over every invocation.


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(config.to_dict())


def _stage(config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, root):
    """A copy of a stage config with the demo's seed and data root."""
    out = _copy(stage)
    out.seed = config.seed
    if 'data' in out:
        out.data.root = root
    return out


def data_root(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The idx directory; checks that the data loads before any stage starts.

    With `config.runlocal` and no `config.data.root`, writes small generated idx files to
    `workdir/runlocal_data` (once) and returns that directory.

    Raises:
      DataError: the data is missing or malformed; the message says how to get it.
    """
    root = config.data.get('root')
    if not root and config.runlocal:
        root = os.path.join(workdir, 'runlocal_data')
        if not os.path.isdir(root):
            with atomic.replacing_dir(root) as tmp:
                testing.write_fake_fashion_mnist(tmp, train_per_class=40, test_per_class=10)
    try:
        for split in fashion_mnist_mi.SPLITS:
            fashion_mnist_mi.load_fashion_mnist_mi(split, root)
    except builders.DataError as e:
        raise builders.DataError(
            f"{e}. The demo reads Fashion-MNIST from Debian's dataset-fashion-mnist package: "
            "run 'make demo-data' (or 'apt-get install dataset-fashion-mnist'), or pass "
            '--config.data.root=DIR with the four idx files.'
        ) from e
    return root


def _train(cfg: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
    """Trains a classifier in `path`, or reads its results when it has finished."""
    results = os.path.join(path, 'results.json')
    if os.path.exists(results):
        with open(results) as f:
            return json.load(f)
    return classifier.train_and_evaluate(cfg, path)


def target_names(config: ml_collections.ConfigDict) -> list[str]:
    """The sweep's target names: 'none', then 'tldmi_<depth>' per depth."""
    return ['none'] + [f'tldmi_{d}' for d in config.tldmi_depths]


def sweep_config(
    config: ml_collections.ConfigDict, workdir: str, root: str | None
) -> ml_collections.ConfigDict:
    """The defense x attack matrix of the demo, with every stage config inline."""
    st = config.stages
    targets = {}
    none = _stage(config, st.target, root)
    none.defense.name = 'none'
    targets['none'] = dict(train=none, label='no defense (all layers)', overrides={})
    for depth in config.tldmi_depths:
        cfg = _stage(config, st.target, root)
        cfg.defense.name = 'tldmi'
        cfg.defense.fine_tune_from = depth
        cfg.init.checkpoint = os.path.join(workdir, 'pretrain')
        label = f'TL-DMI: fine-tune {depth}+' if depth != 'head' else 'TL-DMI: fine-tune head'
        targets[f'tldmi_{depth}'] = dict(train=cfg, label=label, overrides={})
    for name in targets:
        targets[name]['checkpoint'] = ''
    sw = ml_collections.ConfigDict()
    sw.configs_dir = ''
    sw.stages = ml_collections.ConfigDict()
    sw.stages.gan = ml_collections.ConfigDict(
        {a: _stage(config, st.gan[a], root).to_dict() for a in config.attacks}
    )
    sw.stages.attack = ml_collections.ConfigDict(
        {a: _stage(config, st.attack[a], root).to_dict() for a in config.attacks}
    )
    sw.stages.evaluate = _stage(config, st.evaluate, root)
    sw.stages.distill = ''  # LOMMA is not part of the demo.
    sw.data = ml_collections.ConfigDict(dict(root=root, data_dir=None))
    sw.stage_overrides = ml_collections.ConfigDict(
        {'train': {}, 'gan': {}, 'distill': {}, 'attack': {}, 'evaluate': {}}
    )
    sw.targets = ml_collections.ConfigDict(targets)
    sw.attacks = list(config.attacks)
    sw.eval_model = ml_collections.ConfigDict(dict(checkpoint=os.path.join(workdir, 'eval_model')))
    sw.runlocal = False  # Every upstream artefact is real here.
    sw.overwrite = bool(config.get('overwrite', False))
    return sw


def _fisher(config, workdir: str, root) -> dict[str, Any]:
    path = os.path.join(workdir, 'fisher')
    done = os.path.join(path, 'fisher.json')
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    cfg = _stage(config, config.stages.fisher, root)
    cfg.runlocal = False
    cfg.target.checkpoint = os.path.join(workdir, 'sweep', 'targets', 'none')
    cfg.attack_dir = os.path.join(workdir, 'sweep', 'cells', f'none__{config.attacks[0]}', 'attack')
    return fisher.analyze(cfg, path)


def _real_images(root, per_class: int, seed: int) -> dict[int, np.ndarray]:
    """`per_class` private training images of each class, float [k, 32, 32, 1]."""
    source = fashion_mnist_mi.load_fashion_mnist_mi('private_train', root)
    prep = preprocess.get_preprocess(DATASET, 32)
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    out = {}
    for c in range(source.num_classes):
        idx = rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        out[c] = np.stack([np.asarray(prep(source[int(i)]['image']), np.float32) for i in idx])
    return out


def write_grid(path: str, attack_dir: str, real: dict[int, np.ndarray]) -> str:
    """One row per attacked class: real private images, then every seed's reconstruction."""
    recon, _ = reconstructions.load(attack_dir)
    order = np.lexsort((recon['seed'], recon['identity']))
    identity, images = recon['identity'][order], recon['images'][order]
    classes = np.unique(identity)
    per_row = max(int(np.sum(identity == c)) for c in classes)
    k = len(next(iter(real.values())))
    tiles, captions = [], []
    blank = np.ones_like(images[0])
    for c in classes:
        mine = images[identity == c]
        tiles += [*real[int(c)], blank, *mine, *[blank] * (per_row - len(mine))]
        captions += (
            [f'real {c}'] * k + [''] + [f'rec {c}'] * len(mine) + [''] * (per_row - len(mine))
        )
    return grids.save_grid(path, np.stack(tiles), ncol=k + 1 + per_row, captions=captions, scale=2)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def _per_reconstruction(workdir: str, target: str, attack: str) -> dict[str, np.ndarray] | None:
    """The cell's `per_reconstruction.csv` as columns (None when the cell has none)."""
    path = os.path.join(
        workdir, 'sweep', 'cells', f'{target}__{attack}', 'eval', 'per_reconstruction.csv'
    )
    if not os.path.exists(path):
        return None
    with open(path, newline='') as f:
        records = list(csv.DictReader(f))
    if not records:
        return None
    return {k: np.array([float(r[k]) for r in records]) for k in records[0]}


def interval_stats(workdir: str, rows: list[dict[str, Any]]) -> None:
    """Adds each finished row's 95 % intervals, in place (`top1_*`, `diff_*` keys).

    `top1_low`/`top1_high`: top-1 over the (class, seed) instances, classes as fixed strata
    (`attack_acc.stratified_interval`). `diff`, `diff_low`, `diff_high`: the paired
    difference to the no-defense row of the same attack (`attack_acc.paired_difference`:
    the same instance starts from the same latent in every target), negative = the defense
    lowered attack accuracy. The intervals cover the attack's seeds only, for these trained
    models: retraining a target with another seed moves its row by more than that.
    """
    cols = {}
    for r in rows:
        if r.get('status') == 'done':
            cols[(r['target'], r['attack'])] = _per_reconstruction(
                workdir, r['target'], r['attack']
            )
    for r in rows:
        mine = cols.get((r.get('target'), r.get('attack')))
        if mine is None:
            continue
        ci = attack_acc.stratified_interval(mine['acc@1'], mine['identity'])
        r['top1_low'], r['top1_high'], r['top1_n'] = ci['low'], ci['high'], ci['n']
        base = cols.get(('none', r['attack']))
        if base is not None and r['target'] != 'none':
            d = attack_acc.paired_difference(mine, base)
            r['diff'], r['diff_low'], r['diff_high'] = d['mean'], d['low'], d['high']


def _verdict(r: dict[str, Any]) -> str:
    """What the paired interval says: lowered, raised, or no clear change."""
    if r.get('diff_high') is not None and r['diff_high'] < 0:
        return 'lowered'
    if r.get('diff_low') is not None and r['diff_low'] > 0:
        return 'raised'
    return 'did not clearly change'


def demo_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The report's table: header row, then one row per cell (no top-5: 5 classes)."""
    out = [
        [
            'target',
            'trainable params',
            'natural acc',
            'attack',
            'top-1 [95 % CI]',
            'top-1 change vs no defense [95 % CI]',
            'KNN dist',
        ]
    ]
    for r in rows:
        top1 = '-'
        if r.get('attack/acc@1') is not None:
            top1 = f'{r["attack/acc@1"]:.3f}'
            if r.get('top1_low') is not None:
                top1 += f' [{r["top1_low"]:.2f}, {r["top1_high"]:.2f}]'
        diff = '-' if r.get('target') != 'none' else '(reference)'
        if r.get('diff') is not None:
            diff = f'{r["diff"]:+.3f} [{r["diff_low"]:+.2f}, {r["diff_high"]:+.2f}]'
        tp = r.get('trainable_params')
        out.append(
            [
                str(r.get('defense') or r.get('target', '')),
                f'{tp:,}' if isinstance(tp, int) else _fmt(tp),
                _fmt(r.get('target/natural_acc')),
                str(r.get('attack', '')).upper(),
                top1,
                diff,
                _fmt(r.get('attack/knn_dist'), 2),
            ]
        )
    return out


def headline(config: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """No defense vs TL-DMI for the first attack: the headline depth, then every depth."""
    attack = config.attacks[0]
    by_target = {r['target']: r for r in rows if r.get('attack') == attack}
    base = by_target.get('none', {})
    tl = by_target.get(f'tldmi_{config.headline_depth}', {})
    out = {
        'attack': attack,
        'tldmi_depth': config.headline_depth,
        'none/acc@1': base.get('attack/acc@1'),
        'tldmi/acc@1': tl.get('attack/acc@1'),
        'none/natural_acc': base.get('target/natural_acc'),
        'tldmi/natural_acc': tl.get('target/natural_acc'),
    }
    if out['none/acc@1'] is None or out['tldmi/acc@1'] is None:
        out['sentence'] = 'The headline comparison is incomplete: a cell failed (see the table).'
        return out
    change = out['tldmi/acc@1'] - out['none/acc@1']
    out['acc@1_drop'] = -change
    out['tldmi_lowered_attack_acc'] = change < 0
    out['acc@1_change_ci95'] = [tl.get('diff_low'), tl.get('diff_high')]
    out['verdict'] = _verdict(tl)
    n = base.get('top1_n')

    def interval(r):
        if r.get('diff_low') is None:
            return ''
        return f', 95 % CI [{r["diff_low"]:+.3f}, {r["diff_high"]:+.3f}]'

    depths = []
    for depth in config.tldmi_depths:
        r = by_target.get(f'tldmi_{depth}', {})
        if r.get('attack/acc@1') is not None:
            depths.append(
                f'{depth} {r["attack/acc@1"]:.3f} ({r["attack/acc@1"] - out["none/acc@1"]:+.3f}'
                f'{interval(r)}: {_verdict(r)}; KNN {_fmt(r.get("attack/knn_dist"), 2)})'
            )
    out['sentence'] = (
        f'TL-DMI (fine-tuning from {config.headline_depth}) {out["verdict"]} '
        f'{attack.upper()} attack accuracy: top-1 {out["none/acc@1"]:.3f} with no defense '
        f'vs {out["tldmi/acc@1"]:.3f} with TL-DMI ({change:+.3f}{interval(tl)}'
        + (f', paired over {n} class x seed instances' if n else '')
        + f'), at natural accuracy {_fmt(out["none/natural_acc"])} vs '
        f'{_fmt(out["tldmi/natural_acc"])} (seed {config.seed}).'
    )
    out['depth_sentence'] = (
        f'Every TL-DMI depth (first fine-tuned group: top-1, change vs no defense with its '
        f'95 % interval, what the interval says, KNN distance; no defense: KNN '
        f'{_fmt(base.get("attack/knn_dist"), 2)}): ' + '; '.join(depths) + '.'
    )
    return out


def _blocks(config, rows, fisher_result, grid_paths, prior_samples, hl, timings):
    """The report as a list of (kind, payload) blocks, rendered to Markdown and HTML."""
    blocks: list[tuple[str, Any]] = [
        ('h1', 'TL-DMI demo: Fashion-MNIST, classes 0-4 private, 5-9 public'),
        ('p', hl['sentence']),
        ('p', hl.get('depth_sentence', '')),
        (
            'p',
            f'Seed {config.seed}. Attacks: {", ".join(config.attacks)}; '
            f'{config.stages.attack[config.attacks[0]].attack.steps} latent updates per '
            f'instance, every private class attacked with '
            f'{config.stages.attack[config.attacks[0]].attack.num_seeds} seeds. The 95 % '
            'intervals are over these class x seed instances (classes as fixed strata); a '
            'change is paired: the same instance starts from the same latent for every '
            'target. They cover the attack seeds only, for these trained models, not the '
            'randomness of training. The evaluation model is a '
            f'{config.stages.eval_model.model.arch} trained on the private classes, not the '
            'target architecture. Compute time: '
            + ', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())
            + f' (total {sum(timings.values()) / 60:.1f} min, summed over resumed runs).',
        ),
        ('h2', 'Results'),
        ('table', demo_table(rows)),
        ('img', ('Utility vs privacy', 'sweep/utility_privacy.png')),
        ('h2', 'Fisher information per layer (no-defense target)'),
    ]
    if fisher_result:
        groups = fisher_result['groups']
        text = ', '.join(
            f'{g["group"]}: cls {g["classification_normalised"]:.2f} / MI {g["mi_normalised"]:.2f}'
            for g in groups
        )
        blocks.append(('p', f'Normalised (each task by its maximum): {text}.'))
        blocks.append(('img', ('Fisher information', 'fisher/fisher.png')))
    blocks.append(('h2', 'Reconstructions next to real private images'))
    blocks.append(
        (
            'p',
            'Each row is one private class: real private training images on the left, after '
            'the gap the reconstructions of every seed of the attack.',
        )
    )
    for title, path in grid_paths:
        blocks.append(('h3', title))
        blocks.append(('img', (title, path)))
    if prior_samples:
        blocks.append(('h2', 'Samples of the GMI prior (public classes only)'))
        blocks.append(('img', ('GMI prior samples', prior_samples)))
    return blocks


def _markdown(blocks) -> str:
    lines = []
    for kind, payload in blocks:
        if kind in ('h1', 'h2', 'h3'):
            lines += ['#' * int(kind[1]) + ' ' + payload, '']
        elif kind == 'p':
            lines += [payload, '']
        elif kind == 'table':
            head, *body = payload
            lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
            lines += ['| ' + ' | '.join(r) + ' |' for r in body] + ['']
        elif kind == 'img':
            lines += [f'![{payload[0]}]({payload[1]})', '']
    return '\n'.join(lines)


def _html(blocks, workdir: str) -> str:
    body = []
    for kind, payload in blocks:
        if kind in ('h1', 'h2', 'h3'):
            body.append(f'<{kind}>{html.escape(payload)}</{kind}>')
        elif kind == 'p':
            body.append(f'<p>{html.escape(payload)}</p>')
        elif kind == 'table':
            names, *table_rows = payload
            trs = ['<tr>' + ''.join(f'<th>{html.escape(c)}</th>' for c in names) + '</tr>']
            for r in table_rows:
                trs.append('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in r) + '</tr>')
            body.append('<table>' + ''.join(trs) + '</table>')
        elif kind == 'img':
            path = os.path.join(workdir, payload[1])
            if os.path.exists(path):
                with open(path, 'rb') as f:
                    data64 = base64.b64encode(f.read()).decode()
                body.append(
                    f'<p><img alt="{html.escape(payload[0])}" '
                    f'src="data:image/png;base64,{data64}"></p>'
                )
    style = (
        'body{font-family:sans-serif;max-width:70em;margin:2em auto;}'
        'table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}'
        'img{max-width:100%;image-rendering:pixelated}'
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>TL-DMI demo</title>'
        f'<style>{style}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n'
    )


def _prior_samples(workdir: str) -> str | None:
    sample_dir = os.path.join(workdir, 'sweep', 'priors', 'gmi', 'samples')
    if not os.path.isdir(sample_dir):
        return None
    steps = sorted(
        int(n[len('step_') : -len('.png')])
        for n in os.listdir(sample_dir)
        if n.startswith('step_') and n.endswith('.png')
    )
    return f'sweep/priors/gmi/samples/step_{steps[-1]}.png' if steps else None


def write_report(config, workdir: str, rows, fisher_result, root, timings: dict) -> dict:
    """Writes the grids, `report.md`, `report.html` and `summary.json`; returns the summary."""
    real = _real_images(root, config.report.real_per_class, config.seed)
    grid_paths = []
    for r in rows:
        if r.get('status') != 'done':
            continue
        name = f'{r["target"]}__{r["attack"]}'
        rel = os.path.join('grids', f'{name}.png')
        attack_dir = os.path.join(workdir, 'sweep', 'cells', name, 'attack')
        write_grid(os.path.join(workdir, rel), attack_dir, real)
        grid_paths.append((f'{r["defense"]}, {r["attack"].upper()}', rel))
    interval_stats(workdir, rows)
    hl = headline(config, rows)
    blocks = _blocks(config, rows, fisher_result, grid_paths, _prior_samples(workdir), hl, timings)
    atomic.write_text(os.path.join(workdir, 'report.md'), _markdown(blocks))
    atomic.write_text(os.path.join(workdir, 'report.html'), _html(blocks, workdir))
    summary = {'headline': hl, 'rows': rows, 'stage_seconds': timings}
    atomic.write_json(os.path.join(workdir, 'summary.json'), summary)
    return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the demo in `workdir`; returns `summary.json`'s content.

    Stage configs name their inputs by absolute path, so a rerun through a relative or an
    absolute `workdir` (the launcher, the notebook) resumes alike.
    """
    workdir = os.path.abspath(workdir)
    metrics.quiet_libraries()
    workdir_lib.prepare(config, workdir)
    generated = config.runlocal and not config.data.get('root')
    # Real data is checked before anything is written; runlocal writes its own files.
    root = None if generated else data_root(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    if generated:
        root = data_root(config, workdir)
    workdir_lib.save_config(config, workdir)
    st = config.stages
    stages = [
        ('pre-train on the public classes', 'pretrain'),
        ('evaluation model on the private classes', 'eval_model'),
        ('targets, GMI prior, attacks, evaluation', 'sweep'),
        ('Fisher information of the no-defense target', 'fisher'),
        ('report', 'report'),
    ]
    rows, fisher_result, summary = [], None, {}
    timings_path = os.path.join(workdir, TIMINGS)
    timings = {}
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            timings = json.load(f)
    tic = time.perf_counter()
    for i, (title, key) in enumerate(stages):
        print(f'[demo {i + 1}/{len(stages)}] {title} ({key}/)', flush=True)
        if i:  # Seconds spent in each stage, summed over every (resumed) invocation.
            prev = stages[i - 1][1]
            timings[prev] = timings.get(prev, 0.0) + time.perf_counter() - tic
            atomic.write_json(timings_path, timings)
        tic = time.perf_counter()
        logging.info('demo stage %d/%d: %s', i + 1, len(stages), title)
        if key == 'pretrain':
            res = _train(_stage(config, st.pretrain, root), os.path.join(workdir, key))
            print(f'  public pre-training accuracy: {res["target/natural_acc"]:.4f}')
        elif key == 'eval_model':
            res = _train(_stage(config, st.eval_model, root), os.path.join(workdir, key))
            print(f'  evaluation model accuracy (private test): {res["target/natural_acc"]:.4f}')
        elif key == 'sweep':
            rows = sweep.run(sweep_config(config, workdir, root), os.path.join(workdir, key))
            order = {t: i for i, t in enumerate(target_names(config))}  # none, then by depth
            rows.sort(key=lambda r: (order.get(r['target'], len(order)), r['attack']))
            failed = [f'{r["target"]} x {r["attack"]}' for r in rows if r['status'] != 'done']
            if failed:
                print(f'  failed cells (see sweep/results.md): {", ".join(failed)}')
        elif key == 'fisher':
            try:
                fisher_result = _fisher(config, workdir, root)
            except (FileNotFoundError, ValueError) as e:
                logging.error('Fisher analysis skipped: %s', e)
                print(f'  Fisher analysis skipped: {e}')
        else:
            summary = write_report(config, workdir, rows, fisher_result, root, timings)
    print(summary['headline']['sentence'])
    print(summary['headline'].get('depth_sentence', ''))
    print(f'report: {os.path.join(workdir, "report.md")} (and report.html)')
    return summary
