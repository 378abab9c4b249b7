"""Preparing a study: trials from the arms, hashed images, clear errors, tamper detection."""

import json
import os

import pytest

from tests.userstudy import fakes
from tldmi_jax.userstudy import manifest, stats


def test_trials_images_and_attention_pool(tmp_path):
    workdir, m = fakes.prepared(str(tmp_path), seeds_per_identity=2)
    assert m['identities'] == [0, 1, 2, 3]
    assert [a['name'] for a in m['arms']] == ['none', 'tldmi']
    assert len(m['trials']) == 4 * 2  # identities x seeds x one pair of arms
    assert len(m['attention']) == 4
    for t in m['trials']:
        assert t['arms'] == ['none', 'tldmi'] and len(t['references']) == 2
        assert m['images'][t['options']['none']]['arm'] == 'none'
        assert m['images'][t['options']['tldmi']]['seed'] == t['seed_index']
        assert {m['images'][r]['identity'] for r in t['references']} == {t['identity']}
    for a in m['attention']:  # The reference option is one of the shown references.
        assert a['options'][stats.REFERENCE] == a['references'][0]
    # Every image is a file named by its SHA-256, and the study verifies.
    for name, info in m['images'].items():
        assert name == f'{info["sha256"]}.png'
        assert os.path.isfile(os.path.join(workdir, manifest.IMAGE_DIR, name))
    assert manifest.load(workdir) == m
    manifest.verify(workdir, m)


def test_three_arms_give_every_pair(tmp_path):
    _, m = fakes.prepared(str(tmp_path), arms=('none', 'tldmi', 'bido'), identities=2)
    assert len(m['identities']) == 2
    pairs = [tuple(t['arms']) for t in m['trials']]
    assert pairs == [('none', 'tldmi'), ('none', 'bido'), ('tldmi', 'bido')] * 2


def test_same_inputs_same_study(tmp_path):
    _, a = fakes.prepared(str(tmp_path / 'a'))
    _, b = fakes.prepared(str(tmp_path / 'a'))
    assert a['study_hash'] == b['study_hash']


def test_edited_manifest_or_image_refused(tmp_path):
    workdir, m = fakes.prepared(str(tmp_path))
    path = os.path.join(workdir, manifest.MANIFEST)
    with open(path) as f:
        edited = json.load(f)
    edited['trials'] = edited['trials'][:1]
    with open(path, 'w') as f:
        json.dump(edited, f)
    with pytest.raises(manifest.StudyError, match='edited after it was prepared'):
        manifest.load(workdir)
    with open(path, 'w') as f:
        json.dump(m, f)
    name = m['trials'][0]['options']['none']
    with open(os.path.join(workdir, manifest.IMAGE_DIR, name), 'ab') as f:
        f.write(b'x')
    with pytest.raises(manifest.StudyError, match='missing or changed'):
        manifest.verify(workdir, manifest.load(workdir))


def test_bad_arms_named(tmp_path):
    a = fakes.attack_dir(str(tmp_path / 'a'))
    with pytest.raises(manifest.StudyError, match='at least two arms'):
        manifest.prepare(fakes.config({'none': a}), str(tmp_path / 's'))
    with pytest.raises(manifest.StudyError, match='--config.arms.tldmi=ATTACK_DIR'):
        manifest.prepare(fakes.config({'none': a, 'tldmi': ''}), str(tmp_path / 's'))
    with pytest.raises(manifest.StudyError, match="arm 'tldmi': No attack output"):
        manifest.prepare(fakes.config({'none': a, 'tldmi': str(tmp_path)}), str(tmp_path / 's'))
    other = fakes.attack_dir(str(tmp_path / 'b'), identities=(2, 3), seeds=1)
    with pytest.raises(manifest.StudyError, match=r"arm 'tldmi' has 1 reconstruction\(s\)"):
        manifest.prepare(
            fakes.config({'none': a, 'tldmi': other}, seeds_per_identity=2), str(tmp_path / 's')
        )
    disjoint = fakes.attack_dir(str(tmp_path / 'c'), identities=(9,))
    with pytest.raises(manifest.StudyError, match='share no identity'):
        manifest.prepare(fakes.config({'none': a, 'tldmi': disjoint}), str(tmp_path / 's'))
    x = fakes.attack_dir(str(tmp_path / 'x'), identities=(7,))
    y = fakes.attack_dir(str(tmp_path / 'y'), identities=(7,))
    with pytest.raises(manifest.StudyError, match='identity 7 has no image in synthetic'):
        manifest.prepare(fakes.config({'none': x, 'tldmi': y}), str(tmp_path / 's'))
    assert not manifest.exists(str(tmp_path / 's'))


def test_missing_study_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='mode=prepare'):
        manifest.load(str(tmp_path))
