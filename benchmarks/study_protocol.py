"""study.py's selection protocol: validation points held out of training, the split that chose each row,
and robust accuracy as a worst case over the attack's own randomness.

    python benchmarks/study.py --holdout 5000 --split val --chosen-on none --methods max,msd,mng
    python benchmarks/study.py --holdout 5000 --split test --chosen-on val --methods metaat --suite apgd-worst

``--holdout H`` holds the last H of Fashion-MNIST's 60,000 training images out of training for every row
(``TrainConfig.train_holdout``; the per-epoch monitor reads them too, never the test points). ``--split
val`` scores the ``--n`` held-out images from ``--val-start`` on (validation points: recipes, options and
defaults are chosen on them); ``--split test`` (the default) scores test points from ``--test-start`` (by
default 9,000, the full protocol's slice), read once per final candidate. ``--chosen-on`` says, in every
record of a holdout study, on which split the row and its options were chosen: ``val`` (this study's
validation records), ``test`` (test points: a recipe chosen before this protocol existed) or ``none`` (a
baseline with its paper's settings, nothing chosen on this data).

A holdout study is a study of its own: its default name is ``fmnist_holdout<H>`` (``fmnist_quick_holdout<H>``
with ``--quick``), its records say ``train_holdout``, ``split`` and ``chosen_on`` and are keyed by them, and
a results file whose records were trained with another holdout (the existing studies: none) is refused.
Without ``--holdout`` nothing changes: the same runs, records, keys and state files as before.

``--suite apgd-worst`` scores a row with the ``apgd`` suite, read back from that suite's state file when it
has run on the same points, plus an extra pass (APGD-CE with 5 random restarts, then APGD-T, a second seed)
on every point it left robust, and reports the per-point AND (:mod:`metaat.eval.worst`); its records keep
the first pass's numbers (``first_pass``) and ``extra_broken``, the points the extra pass broke per threat
and for the union.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

SPLITS = ("test", "val")
CHOSEN_ON = ("val", "test", "none")
WORST = "apgd-worst"
SUITES = ("quick", "apgd", "standard", WORST)
HOLDOUT_TEST_START = 9000  # a holdout study's test points: the full protocol's slice, so its records pair with it


def add_options(p: argparse.ArgumentParser) -> None:
    """The protocol's command-line options."""
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="hold the last N training images out of training for every row (validation points); a study of "
        "its own (default name fmnist_holdout<N>)",
    )
    p.add_argument("--split", default="test", choices=SPLITS, help="score test points, or (with --holdout) val points")
    p.add_argument("--val-start", type=int, default=0, help="first validation point scored (--split val)")
    p.add_argument(
        "--chosen-on",
        default=None,
        choices=CHOSEN_ON,
        help="the split on which the rows and their options were chosen (required with --holdout; recorded)",
    )


def holdout_of(args: argparse.Namespace) -> int:
    return int(getattr(args, "holdout", 0) or 0)


def split_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "split", None) or "test")


def default_study(quick: bool, holdout: int) -> str:
    """The results name when ``--study`` is not given."""
    base = "fmnist_quick" if quick else "fmnist_study"
    return base if not holdout else ("fmnist_quick" if quick else "fmnist") + f"_holdout{holdout}"


def default_test_start(args: argparse.Namespace) -> int | None:
    """A holdout study's default first test point (None: the study's own default)."""
    return HOLDOUT_TEST_START if holdout_of(args) else None


def point_slice(args: argparse.Namespace) -> tuple[str, int]:
    """(split, first point) this invocation scores."""
    split = split_of(args)
    return split, int(args.val_start if split == "val" else args.test_start)


def point_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The fields a record carries about its points and its training data (the key reads them too).
    Without a holdout: ``test_start`` only, as every record before this protocol."""
    holdout = holdout_of(args)
    if not holdout:
        return {"test_start": args.test_start}
    split, start = point_slice(args)
    return {"train_holdout": holdout, "split": split, ("val_start" if split == "val" else "test_start"): start}


def protocol_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """The part of a record's key the protocol adds: (split, held-out images, first validation point)."""
    return r.get("split", "test"), r.get("train_holdout") or 0, r.get("val_start", 0)


def check_args(args: argparse.Namespace, records: list[dict[str, Any]], study: str) -> str | None:
    """What is wrong with this invocation's protocol options (None: nothing)."""
    holdout, split = holdout_of(args), split_of(args)
    if holdout < 0 or holdout >= 60_000:
        return f"--holdout {holdout}: hold out between 1 and 59,999 training images (0: none)"
    if split == "val" and not holdout:
        return "--split val needs --holdout N: the validation points are the last N training images"
    if split == "val" and (args.val_start < 0 or args.val_start + args.n > holdout):
        return f"--val-start {args.val_start} --n {args.n}: the validation points must lie in 0..{holdout - 1}"
    if holdout and args.chosen_on is None:
        return "a holdout study records which split chose each row: give --chosen-on val, test or none"
    if args.suite == WORST and args.union_only:
        return "--suite apgd-worst reads the apgd evaluation of every threat: drop --union-only"
    trained = sorted({int(r.get("train_holdout") or 0) for r in records} - {holdout})
    if trained:
        what = f"with the last {trained[0]} training images held out" if trained[0] else "on every training image"
        return f"study {study}'s records trained {what}, not {holdout}: a holdout study has its own --study"
    return None


def load_points(args: argparse.Namespace) -> tuple[Any, Any]:
    """The points this invocation scores: test points, or held-out training images."""
    import metaat.data as data

    split, start = point_slice(args)
    if split == "val":
        return data.load_holdout("fashion-mnist", "val", holdout_of(args), n=args.n, start=start)
    return data.load("fashion-mnist", "test", n=args.n, start=start)


def check_trained_holdout(run_dir: Path, args: argparse.Namespace) -> None:
    """``SystemExit`` when ``run_dir``'s model trained with another holdout than this study's."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    trained = int((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("train_holdout") or 0)
    if trained != holdout_of(args):
        raise SystemExit(f"[study] {run_dir} trained with train_holdout {trained}; this study: {holdout_of(args)}")


def check_trained_for_worst(run_dir: Path, args: argparse.Namespace) -> None:
    """``SystemExit`` when ``--suite apgd-worst`` finds no trained model: it scores trained models and
    trains none (a model trained again could differ from the one its ``apgd`` record scored)."""
    if args.suite == WORST and not (run_dir / "final").is_dir():
        raise SystemExit(
            f"[study] {run_dir}: no trained model (nor a parked one); --suite apgd-worst trains nothing: "
            "train and score it with --suite apgd first"
        )


def first_pass_matches(first_pass: dict[str, Any], apgd_records: list[dict[str, Any]]) -> bool | None:
    """Whether the worst case's first pass gave the numbers of the same piece's ``apgd`` record (None:
    there is no such record)."""
    if not apgd_records:
        return None
    r = apgd_records[-1]
    return bool(r["clean"] == first_pass["clean"] and r["robust"] == first_pass["robust"])


def record_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What a record says about the protocol besides its points: which split chose the row."""
    return {"chosen_on": args.chosen_on} if holdout_of(args) or args.chosen_on else {}


def evaluate_row(
    model: Any, x: Any, y: Any, threats: list[str], args: argparse.Namespace, seed: int, states: list[Path]
) -> tuple[Any, dict[str, Any]]:
    """(the evaluation's result, the record's extra fields). ``states``: the state files, the first
    pass's before the extra pass's for ``apgd-worst`` (``study.state_paths``)."""
    from metaat.eval import evaluate
    from metaat.eval.worst import evaluate_worst

    common: dict[str, Any] = {"seed": seed, "unseen": False, "checks": False, "batch_size": args.eval_batch}
    if args.suite != WORST:
        result = evaluate(
            model, x, y, threats, suite=args.suite, union_only=args.union_only, state_path=states[0], **common
        )
        return result, {}
    worst = evaluate_worst(model, x, y, threats, state_path=states[0], extra_state_path=states[1], **common)
    first = worst.first
    return worst.result, {
        "first_pass": {
            "suite": "apgd",
            "clean": first.clean,
            "robust": {**{t.split(":")[0]: first.robust[t] for t in threats}, "union": first.union},
        },
        "extra_broken": worst.extra_broken,
        "extra_attacked": worst.extra_attacked,
    }


def state_suites(suite: str) -> list[str]:
    """The suites whose state files an evaluation with ``suite`` writes, in order (``apgd-worst``: the
    ``apgd`` first pass, then its extra pass)."""
    return ["apgd", WORST] if suite == WORST else [suite]


def worst_union(state: dict[str, Any]) -> list[bool] | None:
    """Per point, robust under both passes, from a finished extra pass's state file (None: unfinished)."""
    section = (state.get("sections") or {}).get("worst_case")
    return None if section is None else [c == "1" for c in section["flags"]["union"]]
