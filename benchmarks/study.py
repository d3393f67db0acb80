"""The Fashion-MNIST study: every defense side by side, resumable per (method, seed).

    python benchmarks/study.py                      # the full study (make bench), piece by piece
    python benchmarks/study.py --quick              # minutes: a few methods on a subset (make bench-quick)
    python benchmarks/study.py --methods pgd-linf,metaat --seeds 0,1 --epochs 5
    python benchmarks/study.py --methods sat-pgd10 --seeds 2   # a preset: the row that trains it
    python benchmarks/study.py --plan               # what is done, part-trained and left; runs nothing
    python benchmarks/study.py --threads 1 & python benchmarks/study.py --threads 1   # two workers

Each row (``ROWS``) trains one preset, ``configs/presets/<preset>.yaml``, whose name says what it trains
and never changes meaning. Each (row, seed) trains its preset, with the study's epochs, subset and seed,
into ``benchmarks/runs/<study>/<row>/seed<k>`` (killed runs resume from their last checkpoint), is
evaluated with the reference package's APGD-CE + APGD-T per threat (``--suite apgd``; ``--suite
standard`` for headline rows) on ``--n`` test points, and appends one record to
``benchmarks/results/<study>.json`` as soon as it finishes, naming its row (``method``) and its preset
(``preset``). Finished records are kept; rerunning skips them; records are never renamed.
``make_tables.py`` turns the records into the study's tables and plot. ``--holdout``, ``--split val``,
``--chosen-on`` and ``--suite apgd-worst``, the selection protocol, are described in ``study_protocol.py``.

Several processes can work through the same list on one machine: each (method, seed) is claimed
with an exclusive ``flock`` on ``runs/<study>/<method>/seed<k>.lock`` (a claimed piece is skipped by
the others; the lock goes when its process ends, however it ends), and the records file is
rewritten under ``runs/<study>/records.lock``, so no worker's record can overwrite another's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import study_protocol as protocol  # benchmarks/ is on the path when run as a script
import yaml
from unseen_summary import summary as unseen_summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs"
# Copies of each finished piece's small files (evaluation state, training log, summary, config) are
# kept in the repository under results/evidence/: the run folders (models included) are not, and a
# machine can be replaced (one was, and the first twelve records' per-point flags went with it).
EVIDENCE_FILES = ("metrics.jsonl", "summary.json", "config.yaml", "environment.json")
# Unfinished pieces outlive the machine too: ``--park`` copies each one's run folder (its latest
# checkpoint or, once trained, its final model, with the evaluation state and logs) into the repository
# under parked/, and a worker that finds no run folder for a piece resumes from that copy. A piece's
# parked copy goes once its record is written.
PARKED = ROOT / "benchmarks" / "parked"

LINF, L2, L1 = "linf:0.1", "l2:1.5", "l1:10"
UNSEEN_N = 200  # test points for the unseen-attack column (unseen_summary.py)
TEST_SIZE = 10_000  # Fashion-MNIST's test split
# Where each study's evaluated test points start. metaat's recipe was chosen on the reduced study
# (fmnist_small: test points 0-299), and the calibration, probes, demo and per-epoch monitor read the
# first test points too; the full protocol is scored on the last 1,000, which none of them touched.
TEST_START = {"fmnist_study": 9000}
ALL = (LINF, L2, L1)

PRESETS = ROOT / "configs" / "presets"
# configs/presets/default.yaml: a link to the preset of metaat's default recipe (its options are the defense's
# defaults). A change of default adds a preset and moves this link; no preset and no record is renamed.
DEFAULT_LINK = "default.yaml"
# The fields a preset spells out, every one of them, so that a changed default can never change what it trains;
# everything else (subset, seed, threads, device, per-epoch monitor, checkpoints) is the runner's business.
RECIPE_FIELDS = (
    "data", "model", "defense", "threats", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
    "schedule", "grad_clip", "clean_ratio", "fo_overfit_guard", "fo_overfit_drop", "options",
)  # fmt: skip

# Study row -> the preset it trains (configs/presets/<preset>.yaml); a record names its row (``method``) and
# its preset (``preset``). A row's preset never changes. A new row is named after its preset; the rows below
# whose names differ from their presets' are the rows that had records before presets existed, and they keep
# their names because their records do (several may train one preset). Their history (metaat-v1, -v2, -v3:
# earlier defaults and the ablations run on them) is in CHANGELOG.md and the study's documentation.
ROWS: dict[str, str] = {
    "standard": "standard",
    "fast": "fast-fgsm-linf",
    "pgd-linf": "pgd10-linf",
    "pgd-l2": "pgd10-l2",
    "pgd-l1": "pgd10-l1",
    "trades": "trades-beta6-pgd10-linf",
    "sat": "sat-pgd10",
    "avg": "avg-pgd10",
    "max": "max-pgd10",
    "msd": "msd10",
    "eat": "eat-pgd10-linf-l1",  # the paper trains on the two extreme norms only
    "mng": "mng-beta12-pgd10-input-generator",  # the paper's generator: it sees x and noise
    "mng-noise": "mng-beta12-pgd10-noise-generator",  # the released code's generator: noise only
    "l2l": "l2l-1step",
    "mat": "mat-bank16-2steps",
    # a fairness control: SAT with metaat's L1 prior (L1 drawn twice as often)
    "sat-l1x2": "sat-pgd10-l1x2",
    "metaat": "metaat-learned-refine3-adaptive-l1x2-js",
    "metaat-no-l1-prior": "metaat-learned-refine3-adaptive-js",
    "metaat-no-adaptive": "metaat-learned-refine3-uniform-l1x2-js",
    "metaat-no-consistency": "metaat-learned-refine3-adaptive-l1x2",
    "metaat-no-learned": "metaat-pgdstart-refine3-adaptive-l1x2-js",
    "metaat-v3": "metaat-learned-refine3-pgd5-every4-distill-adaptive-l1x2-js",
    "metaat-v3-no-l1-prior": "metaat-learned-refine3-pgd5-every4-distill-adaptive-js",
    "metaat-v3-no-adaptive": "metaat-learned-refine3-pgd5-every4-distill-uniform-l1x2-js",
    "metaat-v3-no-consistency": "metaat-learned-refine3-pgd5-every4-distill-adaptive-l1x2",
    "metaat-v2": "metaat-pgdstart-refine3-pgd5-every4-adaptive-l1x2-js",
    "metaat-v2-no-l1-prior": "metaat-pgdstart-refine3-pgd5-every4-adaptive-js",
    "metaat-v2-no-adaptive": "metaat-pgdstart-refine3-pgd5-every4-uniform-l1x2-js",
    "metaat-v2-no-consistency": "metaat-pgdstart-refine3-pgd5-every4-adaptive-l1x2",
    "metaat-v2-no-pgd": "metaat-pgdstart-refine3-adaptive-l1x2-js",
    "metaat-v2-refine9": "metaat-pgdstart-refine9-pgd5-every4-adaptive-l1x2-js",
    "metaat-v1": "metaat-learned-refine3-pgd5-every4-distill-adaptive-js",
    "metaat-v1-no-refine": "metaat-learned-refine0-pgd5-every4-distill-adaptive-js",
    "metaat-v1-refine2": "metaat-learned-refine2-pgd5-every4-distill-adaptive-js",
    "metaat-v1-refine4": "metaat-learned-refine4-pgd5-every4-distill-adaptive-js",
    "metaat-v1-extreme": "metaat-learned-refine3-pgd5-every4-distill-adaptive-js-linf-l1",
    "metaat-v1-no-pgd": "metaat-learned-refine3-adaptive-js",
    "metaat-v1-no-adaptive": "metaat-learned-refine3-pgd5-every4-distill-uniform-js",
    "metaat-v1-no-consistency": "metaat-learned-refine3-pgd5-every4-distill-adaptive",
    "metaat-v1-l1focus": "metaat-learned-refine1-3-6-pgd5-every4-distill-adaptive-js",
    # its record's 2 passes per example say it trained without the consistency term
    "metaat-v1-no-refine-no-pgd": "metaat-learned-refine0-adaptive",
    "metaat-v1-no-refine-plain": "metaat-learned-refine0-pgd5-every4-adaptive",
    "metaat-v1-no-refine-pgd2": "metaat-learned-refine0-pgd5-every2-distill-adaptive-js",
    # rows named after their presets
    **{
        preset: preset
        for preset in (
            "metaat-learned-refine3-pgd5-every4-adaptive-l1x2-js",
            "metaat-learned-refine3-pgd5-every4-distill-lookahead-adaptive-l1x2-js",
            # the cheaper inner maximisation levers (one lever each, against metaat's default)
            "metaat-learned-refine0-free4-adaptive-l1x2-js",
            "metaat-learned-refine3-l1top20-adaptive-l1x2-js",
        )
    },
}
QUICK_METHODS = ("standard", "pgd-linf", "sat", "metaat")
# the full study (make bench): every defense, metaat's default and the ablations of it, and three rows of
# earlier defaults: metaat-v3 (today's default plus PGD-5 every 4th batch, distilled into the attacker),
# metaat-v2 (plain PGD steps with those batches: the row the learned start was chosen against) and
# metaat-v2-refine9 (1 + 9 PGD steps, SAT's cost: do the recipe's extras add anything once its attack is as
# strong as PGD-10?). Ordered by what a partly finished study most needs: metaat and the target baselines
# first (sat-l1x2, SAT with metaat's L1 prior, says whether the recipe adds anything beyond the prior), the
# four cheap rows (standard, fast, l2l, mat: 1-3 passes) next, then the other defenses and the ablations.
# Every other row runs only when named.
PRIORITY = (
    "metaat", "metaat-v3", "max", "sat", "sat-l1x2", "standard", "fast", "l2l", "mat", "metaat-v2", "metaat-v2-refine9",
    "msd", "avg", "mng", "pgd-linf", "pgd-l2", "pgd-l1", "eat", "trades",
)  # fmt: skip
FULL_METHODS = PRIORITY + (
    "mng-noise", "metaat-no-l1-prior", "metaat-no-adaptive", "metaat-no-consistency", "metaat-no-learned",
)  # fmt: skip


def preset_path(name: str) -> Path:
    """``configs/presets/<name>.yaml``; ``KeyError`` listing the presets when there is none."""
    path = PRESETS / f"{name}.yaml"
    if name == DEFAULT_LINK.removesuffix(".yaml") or not path.is_file():
        raise KeyError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    return path


def preset_names() -> list[str]:
    """Every preset in ``configs/presets`` (the default link is not one of its own)."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml") if p.name != DEFAULT_LINK)


def default_preset() -> str:
    """The preset that ``configs/presets/default.yaml`` links to: metaat's default recipe."""
    return (PRESETS / DEFAULT_LINK).resolve().stem


def load_preset(name: str) -> Any:
    """The ``TrainConfig`` of preset ``name``."""
    from metaat.train import TrainConfig

    return TrainConfig.from_yaml(preset_path(name))


@functools.cache
def read_preset(name: str) -> dict[str, Any]:
    """Preset ``name`` as written (a mapping of ``TrainConfig`` fields; radii spelled out)."""
    values = yaml.safe_load(preset_path(name).read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise ValueError(f"{preset_path(name)}: a preset is a mapping of config keys to values")
    return values


# row -> (defense, training threats, defense options), as its preset spells them
METHODS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    row: (read_preset(p)["defense"], tuple(read_preset(p)["threats"]), dict(read_preset(p)["options"]))
    for row, p in ROWS.items()
}


def rows_named(names: list[str]) -> tuple[list[str], list[str]]:
    """(rows, unknown names): each name is a row, or a preset that exactly one row trains."""
    rows, unknown = [], []
    for name in names:
        trained_by = [row for row, preset in ROWS.items() if preset == name]
        if name in ROWS:
            rows.append(name)
        elif len(trained_by) == 1:
            rows.append(trained_by[0])
        else:
            unknown.append(name if not trained_by else f"{name} (the preset of rows {', '.join(trained_by)}: name one)")
    return rows, unknown


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def claimed(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` for the block; yields False at once when another process
    holds it and ``wait`` is False. The kernel drops the lock when the holder exits, killed or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_path(study: str, method: str, seed: int) -> Path:
    """The folder (method, seed) of ``study`` trains into and keeps its evaluation state in."""
    return RUNS / study / method / f"seed{seed}"


def piece_lock(study: str, method: str, seed: int) -> Path:
    """The lock a worker holds while it trains and evaluates (method, seed): beside its run folder."""
    return run_path(study, method, seed).with_suffix(".lock")


def evidence_path(study: str, method: str, seed: int) -> Path:
    """Where the repository keeps (method, seed)'s evidence: the same file names as its run folder."""
    return RESULTS / "evidence" / study / method / f"seed{seed}"


def parked_path(study: str, method: str, seed: int) -> Path:
    """Where the repository keeps (method, seed)'s unfinished run folder between machines (``--park``)."""
    return PARKED / study / method / f"seed{seed}"


def park_one(study: str, method: str, seed: int) -> str:
    """Copy (method, seed)'s run folder into its parked copy: the top-level files (config, logs,
    evaluation states) and ``final/`` once trained, else the latest complete checkpoint (never
    ``checkpoint.prev/``). The copy is built beside the old one, verified (checkpoint and model
    digests, every evaluation state's own digest) and swapped in, so a parked copy is always whole.
    Returns what it did, in words."""
    from metaat.eval.state import read_state
    from metaat.models import load_model
    from metaat.train.checkpoint import checkpoint_dir, has_checkpoint, read_checkpoint

    src, dst = run_path(study, method, seed), parked_path(study, method, seed)
    trained = (src / "final").is_dir()
    if not trained and not has_checkpoint(src):
        return "nothing to park (no checkpoint yet)"
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for path in sorted(src.iterdir()):
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".tmp"):
                shutil.copyfile(path, tmp / path.name)
        if trained:
            shutil.copytree(src / "final", tmp / "final")
            load_model(tmp / "final")
            what = "trained model"
        else:
            shutil.copytree(checkpoint_dir(src), tmp / "checkpoint")
            state = read_checkpoint(tmp / "checkpoint").state
            what = f"checkpoint at epoch {int(state['epoch']) + 1}, step {state['step_in_epoch']}"
        for state_file in tmp.glob("eval-*.state.json"):
            read_state(state_file)
        old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"parked ({what})"


def restore_parked(study: str, method: str, seed: int) -> bool:
    """Before a piece starts: when its run folder holds neither a checkpoint nor a final model and the
    repository holds a parked copy, copy that in (training then resumes from it, and a trained model's
    evaluation from its state). A run folder of this machine's own is never overwritten."""
    from metaat.train.checkpoint import has_checkpoint

    src, dst = parked_path(study, method, seed), run_path(study, method, seed)
    if not src.is_dir() or (dst / "final").is_dir() or has_checkpoint(dst):
        return False
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return True


def drop_stale_parked(study: str, method: str, seed: int) -> bool:
    """Once (method, seed)'s record is written: remove its parked copy when that holds only a training
    checkpoint (superseded: the model is trained). A parked trained model stays, since the run folder
    serves every suite and another (a headline run of ``--suite standard``) may still evaluate it;
    ``git rm`` it once none does. Returns whether a copy went."""
    parked = parked_path(study, method, seed)
    if not parked.is_dir() or (parked / "final").is_dir():
        return False
    shutil.rmtree(parked)
    return True


def park(methods: list[str], seeds: list[int], args: argparse.Namespace, study: str, done: set[Any]) -> str:
    """``--park``: keep every unfinished piece of this selection that has trained at all in the
    repository (``park_one``), and drop the stale parked checkpoints of pieces now done (a parked
    trained model stays: ``drop_stale_parked``). A piece a worker holds is skipped: stop the workers
    first (SIGTERM: training saves a checkpoint as it stops)."""
    lines = []
    for method in methods:
        for seed in seeds:
            parked = parked_path(study, method, seed)
            if wanted_key(method, seed, args) in done:
                if drop_stale_parked(study, method, seed):
                    lines.append(f"{method} seed {seed}: done, parked checkpoint removed")
                elif parked.is_dir():
                    lines.append(f"{method} seed {seed}: done, parked trained model kept (other suites may need it)")
                continue
            if is_claimed(piece_lock(study, method, seed)):
                lines.append(f"{method} seed {seed}: a worker holds it, not parked (stop it first)")
            elif run_path(study, method, seed).is_dir():
                lines.append(f"{method} seed {seed}: {park_one(study, method, seed)}")
    return "\n".join(lines) or "nothing to park"


def run_dirs(study: str, method: str, seed: int) -> tuple[Path, Path]:
    """Where (method, seed)'s files are looked for, in order: its run folder, then its kept evidence."""
    return run_path(study, method, seed), evidence_path(study, method, seed)


def union_flags(state: dict[str, Any], threats: list[str], union_only: bool = False) -> list[bool]:
    """Per test point: clean-correct and robust under every threat. Full mode: each threat attacks
    every clean-correct point, in chunks, in order; ``union_only`` (the headline runs): each threat
    attacks only the points still robust after the threats before it."""
    clean = [c == "1" for c in state["clean"]]
    robust = list(clean)
    for threat in threats:
        pending = [i for i, ok in enumerate(robust if union_only else clean) if ok]
        chunks = state["threats"][threat]["chunks"]
        flags = "".join(chunks[str(k)] for k in range(len(chunks)))
        if len(flags) != len(pending):
            raise ValueError(f"{threat}: {len(flags)} flags for {len(pending)} pending points (unfinished?)")
        for i, f in zip(pending, flags, strict=True):
            robust[i] = robust[i] and f == "1"
    return robust


def finished_state_in(base: Path, r: dict[str, Any], suite: str = "apgd") -> tuple[dict[str, Any], list[bool]] | None:
    """Record ``r``'s evaluation state in ``base`` (a run folder or its evidence) and its per-point
    union (union-only when its fingerprint says so), or None when the file is absent or unfinished.
    A damaged or edited file raises."""
    from metaat.eval.state import read_state

    path = record_state_path(base, r, suite)
    if not path.is_file():
        return None
    state = read_state(path)
    fingerprint = state["fingerprint"]
    if "first_pass" in fingerprint:  # an apgd-worst extra pass: its final flags, once finished
        union = protocol.worst_union(state)
        return None if union is None else (state, union)
    try:
        return state, union_flags(state, list(fingerprint["threats"]), union_only=bool(fingerprint.get("union_only")))
    except (KeyError, ValueError):
        return None  # not finished


def reproduces(r: dict[str, Any], state: dict[str, Any], union: list[bool]) -> bool:
    """Whether a finished evaluation (``state`` and its per-point ``union``) is the one that made
    record ``r``: the same number of points, clean-correct points and union-robust points. A retrained
    model's evaluation, or one of another slice, is not."""
    n = len(union)
    clean = sum(c == "1" for c in state["clean"])
    return n == r["n"] and clean == round(r["clean"] * n) and sum(union) == round(r["robust"]["union"] * n)


def record_state_path(base: Path, r: dict[str, Any], suite: str) -> Path:
    """Where, in ``base`` (a run folder or its evidence), record ``r``'s ``suite`` evaluation state lies."""
    split = r.get("split", "test")
    return eval_state_path(base, suite, r["n"], int(r.get("val_start" if split == "val" else "test_start") or 0), split)


def keep_evidence(study: str, method: str, seed: int, states: list[Path], src: Path | None = None) -> list[Path]:
    """Copy (method, seed)'s evaluation ``states`` and the small run files of ``src`` (default: its run
    folder) into its evidence folder (atomically, a file at a time); returns what it copied. Each
    state file carries its own content digest, so a copy edited by hand is refused when read back."""
    src = src or run_path(study, method, seed)
    dst = evidence_path(study, method, seed)
    copied = []
    for path in [*states, *(src / name for name in EVIDENCE_FILES)]:
        if not path.is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        tmp = dst / f".{path.name}.{os.getpid()}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst / path.name)
        copied.append(dst / path.name)
    return copied


def eval_state_path(run_dir: Path, suite: str, n: int, test_start: int, split: str = "test") -> Path:
    """Where a run's resumable evaluation state lives; each slice of test (or validation) points has its own file."""
    points = f"{'val-' if split == 'val' else ''}{n}{f'-from{test_start}' if test_start else ''}"
    return run_dir / f"eval-{suite}-{points}.state.json"


def state_paths(run_dir: Path, args: argparse.Namespace) -> list[Path]:
    """The evaluation state files of this invocation's suite and points in ``run_dir`` (``apgd-worst``:
    its ``apgd`` first pass's, then its extra pass's)."""
    split, start = protocol.point_slice(args)
    return [eval_state_path(run_dir, s, args.n, start, split) for s in protocol.state_suites(args.suite)]


def is_claimed(path: Path) -> bool:
    """Whether another process holds ``path``'s lock now (creates nothing)."""
    if not path.is_file():
        return False
    with claimed(path, wait=False) as free:
        return not free


def add_record(out: Path, study: str, record: dict[str, Any]) -> None:
    """Append ``record`` (replacing one with its key) under the study's records lock."""
    with claimed(RUNS / study / "records.lock"):
        # a superseded record (kept with its reason) is history, never replaced
        old = load_records(out)
        records = [r for r in old if r.get("superseded") or record_key(r) != record_key(record)] + [record]
        atomic_write_json(out, {"study": study, "records": records})


def load_records(path: Path) -> list[dict[str, Any]]:
    """The study's records; a record with a ``superseded`` reason is kept as history but counts as not done."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.get("records", []))


def hardware_label(run_dir: Path, trained_on: str, evaluated_on: str, here: str) -> str:
    """Where a record ran: ``here``, or, when its model trained on another device (a GPU run evaluated on
    a CPU), both machines, the training one as the run's ``environment.json`` names it."""
    env = run_dir / "environment.json"
    if trained_on.split(":")[0] == evaluated_on.split(":")[0] or not env.is_file():
        return here
    return f"trained on {json.loads(env.read_text(encoding='utf-8'))['hardware']}, evaluated on {here}"


def row_config(method: str, seed: int, args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` (method, seed) trains: its row's preset, with what the study sets for every
    row alike (epochs, subset, seed, threads, device, the per-epoch monitor's points, checkpoints)."""
    return load_preset(ROWS[method]).replace(
        epochs=args.epochs,
        train_subset=args.train_subset,
        train_holdout=protocol.holdout_of(args),
        eval_n=200,
        checkpoint_every=100,  # a cut-off piece loses at most 100 steps (results are unchanged by it)
        seed=seed,
        threads=args.threads,
        device=args.device,
    )


def run_one(method: str, seed: int, args: argparse.Namespace, study: str) -> dict[str, Any]:
    import torch

    import metaat
    from metaat.attacks.base import auto_chunk
    from metaat.models import model_device, resolve_model
    from metaat.runtime import environment, hardware_summary, set_threads
    from metaat.train import train

    preset = ROWS[method]
    run_dir = run_path(study, method, seed)
    cfg = row_config(method, seed, args)
    set_threads(args.threads)
    if restore_parked(study, method, seed):
        print(f"[study] {method} seed {seed}: resuming from its parked copy", flush=True)
    resume = (run_dir / "checkpoint").is_dir() and not (run_dir / "final").is_dir()
    protocol.check_trained_holdout(run_dir, args)
    protocol.check_trained_for_worst(run_dir, args)
    t0 = time.perf_counter()
    if not (run_dir / "final").is_dir():
        outcome = train(cfg, run_dir, resume=resume, quiet=True)
        if outcome.status == "interrupted":  # SIGINT / SIGTERM: the checkpoint is saved, the worker ends
            raise SystemExit(f"[study] {method} seed {seed}: interrupted after a checkpoint; rerun to resume")
    train_wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    cost = summary["cost"]
    model = resolve_model(run_dir, device=args.device)
    x, y = protocol.load_points(args)
    result, extra = protocol.evaluate_row(model, x, y, list(ALL), args, seed, state_paths(run_dir, args))
    robust = {t.split(":")[0]: result.robust.get(t) for t in ALL}
    robust["union"] = result.union
    if args.suite == protocol.WORST:  # the apgd record of the same model and points, when there is one
        want = wanted_key(method, seed, argparse.Namespace(**{**vars(args), "suite": "apgd"}))
        apgd = [r for r in load_records(RESULTS / f"{study}.json") if record_key(r) == want and not r.get("superseded")]
        extra["first_pass"]["matches_apgd_record"] = protocol.first_pass_matches(extra["first_pass"], apgd)
    rerun = study_protocol_rerun(method, seed, args, study, model, x, y) if args.suite == "standard" else None
    n_unseen = min(args.n, UNSEEN_N)
    # headline records (the full standard suite, apgd-worst) hold the protocol's numbers only: the same
    # model's study record already has its unseen summary
    split, start = protocol.point_slice(args)
    unseen = (
        None
        if args.suite in ("standard", protocol.WORST)
        else unseen_summary(model.eval(), x[:n_unseen], y[:n_unseen], ALL, seed=seed, start=start)
    )
    if unseen is not None and split == "val":
        unseen["split"] = split
    epochs = int(summary.get("epochs_completed", args.epochs))
    hardware = hardware_label(run_dir, summary.get("device", args.device), args.device, hardware_summary())
    seconds = float(cost.get("attack_seconds", 0.0)) + float(cost.get("update_seconds", 0.0))
    return {
        "method": method,
        "preset": preset,
        "defense": cfg.defense,
        "options": dict(cfg.options),
        "train_threats": list(cfg.threats),
        "seed": seed,
        "epochs": epochs,
        "train_subset": args.train_subset,
        "clean": result.clean,
        "robust": robust,
        "upper_bound": {t.split(":")[0]: v for t, v in result.upper_bound.items()},
        "n": result.n,
        **protocol.point_fields(args),
        **protocol.record_fields(args),
        "suite": args.suite,
        "protocol": result.protocol,
        **extra,
        "unseen": unseen,
        **({"study_protocol_rerun": rerun} if rerun else {}),
        "passes_per_example": cost.get("passes_per_example"),
        "forward_per_example": cost.get("forward_per_example"),
        "backward_per_example": cost.get("backward_per_example"),
        "seconds_per_epoch": seconds / max(1, epochs),
        "eval_chunk": args.eval_batch or auto_chunk(model_device(model)),
        "eval_seconds": result.timings.get("total"),  # this process's share when the evaluation resumed
        # (every process's time, per threat: eval_threat_seconds; in all: evaluation_seconds())
        "eval_threat_seconds": result.timings.get("threats"),
        "train_wall_this_session": train_wall,
        "threads": torch.get_num_threads(),
        "device": summary.get("device", args.device),  # where it trained (the evaluation ran on args.device)
        "hardware": hardware,
        "metaat_version": metaat.__version__,
        "environment": environment(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def study_protocol_rerun(
    method: str, seed: int, args: argparse.Namespace, study: str, model: Any, x: Any, y: Any
) -> dict[str, Any] | None:
    """For a headline run: when the same model's study-protocol evaluation (``--suite apgd``, same
    points) has a record but no kept evidence of its per-point flags (a run folder lost and its model
    retrained, or a record made before evidence was kept), evaluate it into the run folder's state
    file — resuming a cut-off rerun, and at once when that file is already complete — and keep that
    as evidence, so that ``paired.py`` can set the two protocols side by side point by point. Returns
    the rerun's numbers beside the record's (equal when training reproduced the model and the
    attacks did the same); None when nothing needed doing. The record itself is never replaced."""
    from metaat.eval import evaluate

    apgd = argparse.Namespace(**{**vars(args), "suite": "apgd", "union_only": False})
    state = state_paths(run_path(study, method, seed), apgd)[0]
    if (evidence_path(study, method, seed) / state.name).is_file():
        return None
    want = wanted_key(method, seed, apgd)
    recorded = [r for r in load_records(RESULTS / f"{study}.json") if record_key(r) == want and not r.get("superseded")]
    if not recorded:
        return None
    print(f"[study] {method} seed {seed}: its study-protocol flags are gone; evaluating them again", flush=True)
    result = evaluate(
        model, x, y, list(ALL), suite="apgd", union_only=False, seed=seed, state_path=state, unseen=False, checks=False
    )
    keep_evidence(study, method, seed, [state])
    old = recorded[-1]
    names = [t.split(":")[0] for t in ALL]
    return {
        "clean": result.clean,
        "robust": {**{k: result.robust.get(t) for k, t in zip(names, ALL, strict=True)}, "union": result.union},
        "record_clean": old["clean"],
        "record_robust": old["robust"],
        "matches_record": result.clean == old["clean"] and result.union == old["robust"]["union"],
        "seconds": result.timings.get("total"),
    }


def record_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a record one piece of a study: the same key is never run twice."""
    fields = (r["method"], r["seed"], r["epochs"], r.get("train_subset"), r["n"], r.get("test_start", 0), r["suite"])
    return fields + protocol.protocol_key(r)


def done_keys(records: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """The keys of the finished pieces (a superseded record does not count)."""
    return {record_key(r) for r in records if not r.get("superseded")}


def wanted_key(method: str, seed: int, args: argparse.Namespace) -> tuple[Any, ...]:
    """The key of the record this invocation would write for (method, seed)."""
    fields = {
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "n": args.n,
        "suite": args.suite,
        **protocol.point_fields(args),
    }
    return record_key({"method": method, "seed": seed, **fields})


def progress(run_dir: Path) -> float:
    """Epochs a run has trained, counting the part of an epoch its last checkpoint holds
    (0 when it has not started)."""
    done = 0.0
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        # the highest epoch logged, so that an epoch logged twice around a resume counts once
        done = max((float(r.get("epoch", 0)) for r in records if r.get("type") == "epoch"), default=0.0)
    state = run_dir / "checkpoint" / "state.json"
    try:
        s = json.loads(state.read_text(encoding="utf-8")) if state.is_file() else {}
        steps = int(s.get("steps_per_epoch") or 0)
        if steps > 0:
            done = max(done, int(s.get("epoch", 0)) + int(s.get("step_in_epoch", 0)) / steps)
    except (ValueError, TypeError, AttributeError):
        pass  # a checkpoint being rewritten or damaged: the metrics log still counts
    return done


def eval_progress(state_path: Path) -> str:
    """How far a resumable evaluation has got, per threat: the share of the clean-correct points
    attacked so far. A union-only evaluation attacks each threat on the points every earlier threat
    left robust, so it shows counts, out of that many once the earlier threat is finished. Empty
    when there is no readable state yet."""
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        correct = str(state.get("clean") or "").count("1")
        union_only = bool(state["fingerprint"].get("union_only"))
        parts = []
        todo: int | None = correct or None  # points the next threat attacks, when known
        for threat in state["fingerprint"]["threats"]:
            chunks = state.get("threats", {}).get(threat, {}).get("chunks", {})
            done = sum(len(flags) for flags in chunks.values())
            name = str(threat).split(":")[0]
            if not union_only:
                parts.append(f"{name} {100 * done // correct} %" if correct else f"{name} {done} points")
                continue
            parts.append(f"{name} {done} of {todo} points" if todo is not None else f"{name} {done} points")
            todo = sum(str(flags).count("1") for flags in chunks.values()) if done and done == todo else None
        return ", ".join(parts)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


def known_passes() -> dict[str, float]:
    """Passes per example of each method, from any study's finished records (same options)."""
    out: dict[str, float] = {}
    for path in sorted(RESULTS.glob("*.json")):
        try:
            records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
        except (ValueError, AttributeError):
            continue
        for r in records if isinstance(records, list) else []:
            if isinstance(r, dict) and r.get("passes_per_example") and r.get("method") in METHODS:
                out.setdefault(r["method"], float(r["passes_per_example"]))
    # metaat's learned start and distillation cost no target pass (tests/test_meta_defenses.py), nor
    # does MNG-AC's generator input (image + noise, or noise only): a row not run yet takes the
    # passes of its twin that differs only there
    for method in METHODS:
        if method not in out:
            twin = next((m for m in out if _passes_key(m) == _passes_key(method)), None)
            if twin is not None:
                out[method] = out[twin]
    return out


# options that change no target pass count
PASS_FREE_OPTIONS: dict[str, frozenset[str]] = {
    "metaat": frozenset({"learned_start", "distill"}),
    "mng": frozenset({"generator"}),
}


@functools.cache
def _passes_key(method: str) -> tuple[str, tuple[str, ...], str]:
    """The row's configuration with every option resolved, less those that cost no pass (two rows
    that spell the same configuration differently get the same key)."""
    import metaat.defenses as defenses
    from metaat.train.resume import defense_config

    defense, threats, options = METHODS[method]
    free = PASS_FREE_OPTIONS.get(defense, frozenset())
    resolved = defense_config(defenses.create(defense, list(threats), **options))
    return defense, threats, json.dumps({k: v for k, v in resolved.items() if k not in free}, sort_keys=True)


def dry_run_passes(method: str, batches: int = 8, batch_size: int = 8) -> float:
    """Passes per example of ``method`` counted by the training loop's meter over ``batches`` steps
    on random 28x28 images and a small CNN: a pass count depends on the defense and its options, not
    on the model or the data. For the plan of a row that no record prices yet; batch-periodic parts
    (metaat-v3's PGD every 4th batch) average exactly when ``batches`` is a multiple of their period."""
    import torch
    from torch import nn

    import metaat.defenses as defenses
    from metaat.defenses.base import TrainContext
    from metaat.threats import parse_threats
    from metaat.train.cost import CostMeter

    defense_name, threats, options = METHODS[method]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 196, 10)
    )
    defense = defenses.create(defense_name, list(threats), **options)
    defense.setup(model, torch.device("cpu"), 10, (1, 28, 28))
    ctx = TrainContext(threats=parse_threats(list(threats)), generator=g, steps_per_epoch=batches)
    meter = CostMeter()
    handle = meter.attach(model.train())
    try:
        for step in range(batches):
            ctx.step = step
            x = torch.rand(batch_size, 1, 28, 28, generator=g)
            y = torch.randint(0, 10, (batch_size,), generator=g)
            loss, _ = defense(model, x, y, ctx)
            model.zero_grad()
            loss.backward()
            meter.train_examples += batch_size
    finally:
        handle.remove()
    return float(meter.passes_per_example)


def seconds_per_pass_epoch() -> float | None:
    """Median seconds per forward+backward pass over 60,000 images, from ``train_speed.json``
    (measured side by side, 2 threads, quiet machine)."""
    path = RESULTS / "train_speed.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8")).get("results", [])
    rates = sorted(r["seconds_per_60k_epoch"] / r["passes_per_example"] for r in rows if r.get("passes_per_example"))
    return rates[len(rates) // 2] if rates else None


def evaluation_seconds(record: dict[str, Any]) -> float:
    """A record's evaluation wall time in all: its ``eval_seconds`` is only the last process's share
    when the evaluation resumed, while ``eval_threat_seconds`` add up every process's time per threat
    (the unseen summary and checks are not in them), so the larger of the two."""
    threats = record.get("eval_threat_seconds") or {}
    return max(float(record.get("eval_seconds") or 0), sum(float(v) for v in threats.values()))


def eval_seconds(study: str, suite: str) -> list[float]:
    """Wall seconds of this study's evaluations with ``suite`` that ran here on the CPU in chunks of
    128 (GPU runs and records assembled from another machine's state are left out)."""
    path = RESULTS / f"{study}.json"
    if not path.is_file():
        return []
    records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
    seconds = [
        evaluation_seconds(r)
        for r in records
        if r.get("suite") == suite
        and not r.get("superseded")
        and r.get("eval_chunk", 128) == 128
        and not str(r.get("device", "cpu")).startswith("cuda")
    ]
    return sorted(s for s in seconds if s > 60)


def plan(methods: list[str], seeds: list[int], args: argparse.Namespace, study: str, done: set[Any]) -> str:
    """What is finished, what is part-trained, and the training left, in pass-epochs and hours."""
    passes = known_passes()
    dry = sorted({m for m in methods if m not in passes})
    passes.update({m: dry_run_passes(m) for m in dry})
    rate = seconds_per_pass_epoch()
    scale = (args.train_subset or 60000 - protocol.holdout_of(args)) / 60000
    lines = ["| method | seed | status | passes / example | training left (pass-epochs) |", "|---|---:|---|---:|---:|"]
    total, to_score = 0.0, 0
    for method in methods:
        for seed in seeds:
            run_dir = run_path(study, method, seed)
            parked = parked_path(study, method, seed)
            here = (run_dir / "final").is_dir() or (run_dir / "checkpoint").is_dir()
            if not here and parked.is_dir():  # what a worker here would resume from
                run_dir = parked
            running = is_claimed(piece_lock(study, method, seed))
            finished = wanted_key(method, seed, args) in done
            to_score += not finished
            if finished:
                status, left = "done", 0
            elif (run_dir / "final").is_dir():
                status, left = "evaluating now" if running else "trained, evaluation left", 0
                where = eval_progress(state_paths(run_dir, args)[-1])
                status += f" ({where})" if where else ""
            else:
                k = progress(run_dir)
                status, left = (f"{k:.2f} of {args.epochs} epochs" if k else "not started"), args.epochs - k
                status += ", training now" if running else ""
            if run_dir == parked and not finished:
                status += " (parked copy)"
            cost = passes[method] * left * scale
            total += cost
            shown = f"{passes[method]:.2f}" + (" (dry run)" if method in dry else "")
            lines.append(f"| {method} | {seed} | {status} | {shown} | {cost:.0f} |")
    hours = f", about {total * rate / 3600:.1f} h at 2 threads (train_speed.json's median rate)" if rate else ""
    note = (
        f"; passes of {', '.join(dry)} from a dry run (the training loop's meter over 8 batches of random"
        " images: no record prices them yet)"
        if dry
        else ""
    )
    lines.append(f"\ntraining left: {total:.0f} pass-epochs{hours}{note}; the evaluations come on top")
    secs = eval_seconds(study, args.suite)
    if to_score and secs:
        median = secs[len(secs) // 2]
        lines.append(
            f"evaluations left: {to_score} piece(s), about {to_score * median / 3600:.1f} h of one core "
            f"(the median {args.suite} evaluation of this study on the CPU took {median:,.0f} s, over {len(secs)} "
            f"record(s); pieces part-evaluated count whole)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few methods on a subset, minutes")
    p.add_argument(
        "--methods", default=None, help=f"comma-separated rows, or presets a row trains; rows: {', '.join(METHODS)}"
    )
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--n", type=int, default=1000, help="test points evaluated")
    p.add_argument(
        "--test-start",
        type=int,
        default=None,
        help="first test point evaluated (default: 9000 for fmnist_study, held out from all tuning, and for a "
        "holdout study; else 0)",
    )
    p.add_argument("--suite", default="apgd", choices=protocol.SUITES)
    p.add_argument("--union-only", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--eval-batch",
        type=int,
        default=None,
        help="points per attack chunk (default: 128 on cpu, 1024 on cuda); an evaluation resumes only with "
        "the chunk it began with",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (the study's rows so far) or cuda; the record says where it ran and make_tables.py names "
        "rows that ran on other hardware",
    )
    p.add_argument(
        "--study", default=None, help="results name (default fmnist_study, or fmnist_quick; fmnist_holdout<N>)"
    )
    protocol.add_options(p)
    p.add_argument("--plan", action="store_true", help="print what is done and what is left, run nothing")
    p.add_argument(
        "--park",
        action="store_true",
        help="copy the selection's unfinished run folders into benchmarks/parked/ (commit them) so another "
        "machine resumes them; drops the copies of finished pieces; trains nothing",
    )
    args = p.parse_args(argv)
    if args.quick:
        methods = list(QUICK_METHODS)
        args.seeds = "0"
        args.epochs = 1
        args.train_subset = args.train_subset or 5000
        args.n = min(args.n, 200)
        args.suite = "quick" if args.suite == "apgd" else args.suite
    else:
        methods = list(FULL_METHODS)
    unknown: list[str] = []
    if args.methods:
        methods, unknown = rows_named([m.strip() for m in args.methods.split(",") if m.strip()])
    if unknown:
        p.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)} (or a preset one row trains)")
    seeds = [int(s) for s in args.seeds.split(",")]
    study = args.study or protocol.default_study(args.quick, protocol.holdout_of(args))
    if args.test_start is None:
        args.test_start = protocol.default_test_start(args) or TEST_START.get(study, 0)
    if args.eval_batch is not None and args.eval_batch < 1:
        p.error(f"--eval-batch must be >= 1, got {args.eval_batch}")
    if args.n < 1 or args.test_start < 0 or args.test_start + args.n > TEST_SIZE:
        p.error(f"--test-start {args.test_start} --n {args.n}: the test points must lie in 0..{TEST_SIZE - 1}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{study}.json"
    records = load_records(out)
    problem = protocol.check_args(args, records, study)
    if problem:
        p.error(problem)

    done = done_keys(records)
    if args.plan:
        print(plan(methods, seeds, args, study, done))
        return 0
    if args.park:
        print(park(methods, seeds, args, study, done))
        return 0
    for method in methods:
        for seed in seeds:
            want = wanted_key(method, seed, args)
            states = state_paths(run_path(study, method, seed), args)
            state = states[-1]
            if want in done:
                print(f"[study] {method} seed {seed}: done, kept")
                # a record made before evidence was kept, its run folder still here (not retraining)
                kept = (evidence_path(study, method, seed) / state.name).is_file()
                if not kept and state.is_file() and (state.parent / "final").is_dir():
                    keep_evidence(study, method, seed, states)
                continue
            with claimed(piece_lock(study, method, seed), wait=False) as mine:
                if not mine:
                    print(f"[study] {method} seed {seed}: running in another process, skipped", flush=True)
                    continue
                if want in done_keys(load_records(out)):  # finished by another worker meanwhile
                    print(f"[study] {method} seed {seed}: done, kept")
                    continue
                print(f"[study] {method} seed {seed}: training + evaluating ...", flush=True)
                record = run_one(method, seed, args, study)
                add_record(out, study, record)
                keep_evidence(study, method, seed, states)
                drop_stale_parked(study, method, seed)
            rb = record["robust"]
            print(
                f"[study] {method} seed {seed}: clean {record['clean']:.3f} linf {rb['linf']:.3f} "
                f"l2 {rb['l2']:.3f} l1 {rb['l1']:.3f} union {rb['union']:.3f} "
                f"passes {record['passes_per_example']:.2f} s/epoch {record['seconds_per_epoch']:.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
