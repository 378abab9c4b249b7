r"""The human evaluation: which reconstruction looks more like the person? (a local web app)

  python launch/userstudy.py --config=configs/userstudy.py --workdir=workdirs/study \
    --config.arms.none=workdirs/attack_none --config.arms.tldmi=workdirs/attack_tldmi \
    --config.data.name=facescrub_mi --config.data.root=/path/to/facescrub

The arms are attack workdirs on the same identities (`reconstructions.npz`), named by the
`--config.arms.NAME=DIR` flags (any names, two or more; the results report them in the order
given). The config argument `:arms=none+tldmi+bido` fixes names and order instead (it is
the default order `none+tldmi` when no arm flag is given). Each rater sees,
per identity, `study.references_per_trial` private images and one reconstruction per arm,
and picks the more similar one or "cannot tell".

`--config.mode`:

* `prepare`: freeze the study (images and a manifest with their hashes) in the workdir;
* `serve` (default): prepare when needed, then serve it on http://host:port/ (127.0.0.1
  by default; `--config.host=0.0.0.0` for a lab network). `--config.invite=alice,bob`
  prints each invited rater's personal link;
* `export`: answers and raters as CSV and JSON in WORKDIR/export/;
* `summary`: the counts, sign tests and intervals, per rater and pooled, in
  WORKDIR/results/ (summary.json, summary.md, chart.png; also on the /results page).

Variant `:runlocal` makes two tiny GMI attacks on generated data (a tiny target, a tiny
random prior, two attack seeds; they stand in for two defenses) and prepares a study over
them, in about half a minute on 2 CPU cores:

  python launch/userstudy.py --config=configs/userstudy.py:runlocal --workdir=/tmp/study
"""

import ml_collections

from tldmi_jax import config_lib

RUNLOCAL_ARMS = 'seed0+seed1'  # Two tiny attacks that differ only in their seed.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the user-study config for `arg` (see the module docstring)."""
    arg = config_lib.parse_arg(arg, runlocal=False, arms='')
    given = config_lib.command_line_keys('arms')  # --config.arms.NAME=DIR declares NAME.
    default = RUNLOCAL_ARMS if arg.runlocal else 'none+tldmi'
    names = [a.strip() for a in (arg.arms or ('' if given else default)).split('+') if a.strip()]
    names += [name for name in given if name not in names]
    placeholder = ml_collections.config_dict.placeholder
    config = ml_collections.ConfigDict()
    config.mode = 'serve'  # prepare | serve | export | summary
    config.seed = 0  # Identities, reference images, and (with the rater id) each plan.
    config.runlocal = False  # Make two tiny attack workdirs when the arms are unset.
    config.overwrite = False  # Replace a prepared study that has no answers yet.

    # --- arms: name -> attack workdir (reconstructions.npz) ---
    config.arm_order = '+'.join(names)  # The order of the arms in the results.
    config.arms = ml_collections.ConfigDict({name: placeholder(str) for name in names})

    # --- private reference images ---
    config.data = ml_collections.ConfigDict()
    config.data.name = 'celeba_mi'  # A tldmi_jax.data.DATASETS name (the private data).
    config.data.root = placeholder(str)  # Manual dir with the raw files.
    config.data.data_dir = placeholder(str)  # Where prepared array_record files go.
    config.data.kwargs = ml_collections.ConfigDict()  # Extra builder arguments (synthetic).
    config.data.split = 'private_train'  # The images the attacks tried to recover.

    # --- the study ---
    config.study = ml_collections.ConfigDict()
    config.study.title = 'Which image looks more like this person?'
    config.study.question = 'Which of these two images looks more like the person above?'
    config.study.references_per_trial = 5  # Private images of the identity on top.
    config.study.seeds_per_identity = 1  # Trials per identity and pair of arms (seed 0..).
    config.study.identities = 0  # 0: every identity all arms attacked; else a seeded sample.
    config.study.attention_rate = 0.1  # Attention checks per pair trial (at least 1 if > 0).
    config.study.min_attention = 1.0  # Raters below this attention accuracy are left out.
    config.study.reference_size = 0  # Reference image size (0: the reconstructions' size).
    config.study.display_size = 192  # Pixels an option image is shown at.

    # --- the server ---
    config.host = '127.0.0.1'  # 0.0.0.0 serves the lab network (no authentication!).
    config.port = 8765  # 0: any free port (printed).
    config.invite = ''  # Comma-separated rater ids whose links are printed.

    if arg.runlocal:
        config.runlocal = True
        config.data.name = 'synthetic'
        config.data.kwargs = ml_collections.ConfigDict(dict(num_classes=4, image_size=32))
        config.study.references_per_trial = 3
        config.study.seeds_per_identity = 2
        config.study.attention_rate = 0.25
    return config
