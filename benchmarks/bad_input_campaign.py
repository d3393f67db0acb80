"""A hostile-user campaign against the ``metaat`` command: bad arguments for every command, damaged
files, bad data, the sensor and text domains, held folders and killed runs.

Every case runs ``python -m metaat.cli ...`` in a fresh process inside a scratch world (tiny trained
runs for images, sensors and text, a saved attacker, an evaluation state, damaged copies, a plugin
registering bad datasets) and records the command, its exit code, the last line of its stderr,
whether a traceback reached the user and whether any file that existed before changed. A case
expects either an error (non-zero exit, one line on stderr, no traceback, no file changed) or a
success (exit 0, no traceback, no file changed); any other outcome is a finding.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bad_input_campaign.py \\
        --out benchmarks/results/bad_input_campaign.json      # about 10 minutes on 2 busy cores
    python benchmarks/bad_input_campaign.py --only sensor     # the cases whose id holds "sensor"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = [sys.executable, "-m", "metaat.cli"]
TINY = ["--train-subset", "32", "--batch-size", "16", "--epochs", "1", "--eval-n", "0", "--threads", "1", "--quiet"]
IMG = ["--data", "synthetic", "--model", "mlp", *TINY]
WATCH = ["--data", "watch", "--model", "fcn-small", *TINY]
MR = ["--data", "mr", "--model", "word-cnn", *TINY]
MP = ["--data", "synthetic", "--n", "200", "--model", "mlp", "--threat", "linf:0.2", "--stages", "5"]
MP += ["--iters", "2", "--inner-steps", "1", "--batch-size", "32", "--hidden", "4", "--threads", "1", "--device", "cpu"]
TASKS = """name: tiny
domain: images
train: {datasets: [synthetic], models: [mlp], defenses: [standard], stages: [5], threats: [linf:0.1]}
heldout: {threats: [linf:0.2]}
meta: {meta_iters: 2, inner_steps: 1, batch_size: 32, width: 4, n: 100, eval_n: 20, eval_split: train,
       adapt_steps: [0, 1]}
"""
PLUGIN = """
import numpy as np
from metaat.data.base import DATASETS, Dataset, DatasetInfo

class Bad(Dataset):
    def __init__(self, how, domain="images"):
        size = 100 if domain == "sensors" else 12
        box = (-8.0, 8.0) if domain == "sensors" else (0.0, 1.0)
        self.info = DatasetInfo(f"bad-{how}", 10, 1 if domain == "images" else 6, size, tuple("abcdefghij"),
                                box=box, domain=domain)
        self.how, self.shape = how, (64, 1, 12, 12) if domain == "images" else (64, 6, 100)
    def arrays(self, split, data_dir):
        rng = np.random.default_rng(0)
        x, y = rng.random(self.shape, dtype=np.float32), rng.integers(0, 10, 64)
        if self.how.startswith("nan"): x[3, 0, 5] = np.nan
        if self.how == "labels": y[5] = 10
        if self.how == "neglabels": y[5] = -1
        if self.how == "shape": x = x[:, :, :10]
        if self.how == "range": x[2] += 3.0
        if self.how == "empty": x, y = x[:0], y[:0]
        return x, y

for how in ("nan", "labels", "neglabels", "shape", "range", "empty"):
    DATASETS.register(f"bad-{how}", help=how)(lambda how=how: Bad(how))
DATASETS.register("bad-nan-signal", help="nan signal")(lambda: Bad("nan-signal", "sensors"))
"""


@dataclass
class Case:
    id: str
    kind: str  # argument | file | data | sensors | text | fault
    args: list[str]
    expect: str = "error"  # error | ok
    env: dict[str, str] = field(default_factory=dict)


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "METAAT_PLUGINS": "bad_data_plugin", "PYTHONPATH": str(cwd)}
    return subprocess.run(
        PY + args, cwd=cwd, env={**full, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def build_world(w: Path) -> None:
    """The scratch world every case runs in (and may not change)."""
    (w / "bad_data_plugin.py").write_text(PLUGIN)

    def make(args: list[str]) -> None:
        if (w / args[-1]).exists():  # a world half-built by an earlier call
            return
        r = run(args, w)
        if r.returncode != 0:
            raise SystemExit(f"setup failed: metaat {' '.join(args)}\n{r.stderr}")

    make(["train", *IMG, "--out", "run"])
    make(["train", *WATCH, "--out", "wrun"])
    make(["train", *MR, "--out", "trun"])
    (w / "ev").mkdir(exist_ok=True)
    make(
        [
            "eval",
            "run",
            "--data",
            "synthetic",
            "--n",
            "16",
            "--suite",
            "quick",
            "--no-unseen",
            "--state",
            "ev/state.json",
        ]
    )
    make(["meta-pretrain", *MP, "--out", "att"])
    make(
        [
            "attack",
            "--model",
            "run",
            "--data",
            "synthetic",
            "--n",
            "16",
            "--attack",
            "fgsm",
            "--save",
            "set.safetensors",
        ]
    )
    weights = w / "run" / "final" / "model.safetensors"
    for name, damage in (("trunc", "truncate"), ("flip", "flip")):
        shutil.copytree(w / "run" / "final", w / f"{name}-model")
        data = bytearray((w / f"{name}-model" / "model.safetensors").read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) - 100] ^= 0xFF
        (w / f"{name}-model" / "model.safetensors").write_bytes(bytes(data))
    (w / "garbage.safetensors").write_bytes(os.urandom(256))
    (w / "empty.safetensors").write_bytes(b"")
    (w / "trunc-set.safetensors").write_bytes((w / "set.safetensors").read_bytes()[:300])
    shutil.copytree(w / "att", w / "att-trunc")
    gen = w / "att-trunc" / "generator.safetensors"
    gen.write_bytes(gen.read_bytes()[:200])
    for name, edit in (
        ("badcfg", lambda t: "epochs: [1,\n"),
        ("editcfg", lambda t: re.sub(r"(?m)^lr: .*$", "lr: 0.5", t)),
    ):
        shutil.copytree(w / "run", w / f"{name}-run")
        cfg = w / f"{name}-run" / "config.yaml"
        cfg.write_text(edit(cfg.read_text()))
    state = (w / "ev" / "state.json").read_text()
    for name, text in (("trunc", state[: len(state) // 2]), ("edit", state.replace('"clean": "', '"clean": "1', 1))):
        shutil.copytree(w / "ev", w / f"ev-{name}")
        (w / f"ev-{name}" / "state.json").write_text(text)
    (w / "ev-bad-report").mkdir()
    (w / "ev-bad-report" / "report.json").write_text('{"format": "metaat-report", "clean": "x"')
    tasks = {"tasks.yaml": TASKS, "tasks-yaml.yaml": "train: [1,\n", "tasks-key.yaml": TASKS + "extra: 1\n"}
    tasks["tasks-domain.yaml"] = TASKS.replace("domain: images", "domain: audio")
    tasks["tasks-threat.yaml"] = TASKS.replace("threats: [linf:0.1]", "threats: [spike:0,2]")
    tasks["tasks-list.yaml"] = "- 1\n"
    for name, text in tasks.items():
        (w / name).write_text(text)
    for name, text in (("bad.yaml", "epochs: [1,\n"), ("list.yaml", "- 1\n"), ("key.yaml", "epoch: 3\n")):
        (w / name).write_text(text)
    (w / "notes").mkdir()
    (w / "notes" / "todo.txt").write_text("not a run\n")
    (w / "a-file").write_text("x")
    (w / "empty").mkdir()
    (w / "sensors").mkdir()
    (w / "sensors" / "watch.npz").write_bytes(b"PK\x03\x04 damaged")
    del weights


def cases() -> list[Case]:
    A = ["attack", "--model", "run", "--data", "synthetic", "--n", "16"]
    WA = ["attack", "--model", "wrun", "--data", "watch", "--n", "8"]
    TA = ["attack", "--model", "trun", "--data", "mr", "--n", "8"]
    E = ["eval", "run", "--data", "synthetic", "--n", "16", "--suite", "quick", "--no-unseen"]
    T = ["train", *IMG]
    C = Case
    out = [
        # -- arguments, every command ----------------------------------------------------------
        C("top-unknown-command", "argument", ["trian"]),
        C("list-unknown-family", "argument", ["list", "thing"]),
        C("list-no-family", "argument", ["list"]),
        C("attack-no-model", "argument", ["attack", "--data", "synthetic"]),
        C("attack-n-text", "argument", [*A, "--n", "abc"]),
        C("attack-n-negative", "argument", [*A, "--n", "-5"]),
        C("attack-start-negative", "argument", [*A, "--start", "-1"]),
        C("attack-seed-negative", "argument", [*A, "--seed", "-1"]),
        C("attack-threads-zero", "argument", [*A, "--threads", "0"]),
        C("attack-batch-zero", "argument", [*A, "--batch-size", "0"]),
        C("attack-unknown", "argument", [*A, "--attack", "pgdd"]),
        C("attack-threat-syntax", "argument", [*A, "--threat", "linf:"]),
        C("attack-threat-nan", "argument", [*A, "--threat", "linf:nan"]),
        C("attack-threat-inf", "argument", [*A, "--threat", "l2:inf"]),
        C("attack-option-unknown", "argument", [*A, "-o", "stepz=3"]),
        C("attack-option-type", "argument", [*A, "-o", "steps=abc"]),
        C("attack-option-negative", "argument", [*A, "-o", "steps=-3"]),
        C("attack-learned-no-generator", "argument", [*A, "--attack", "learned"]),
        C("attack-spatial-threat", "argument", [*A, "--attack", "spatial", "--threat", "linf:0.1"]),
        C("attack-transfer-clash", "argument", [*A, "--transfer", "set.safetensors"]),
        C("train-epochs-zero", "argument", [*T, "--epochs", "0", "--out", "o1"]),
        C("train-lr-nan", "argument", [*T, "--lr", "nan", "--out", "o2"]),
        C("train-lr-negative", "argument", [*T, "--lr", "-0.1", "--out", "o3"]),
        C("train-batch-zero", "argument", [*T, "--batch-size", "0", "--out", "o4"]),
        C("train-optimizer", "argument", [*T, "--optimizer", "rmsprop", "--out", "o5"]),
        C("train-schedule", "argument", [*T, "--schedule", "linear", "--out", "o6"]),
        C("train-clean-ratio", "argument", [*T, "--clean-ratio", "2", "--out", "o7"]),
        C("train-subset-zero", "argument", [*T, "--train-subset", "0", "--out", "o8"]),
        C("train-tracker", "argument", [*T, "--tracker", "wandb", "--out", "o9"]),
        C("train-preset-unknown", "argument", ["train", "--preset", "fastest"]),
        C("train-config-and-preset", "argument", ["train", "--preset", "default", "--config", "bad.yaml"]),
        C("train-defense-option", "argument", [*T, "--defense", "trades", "-o", "betta=3", "--out", "o10"]),
        C("train-defense-option-type", "argument", [*T, "--defense", "trades", "-o", "beta=abc", "--out", "o11"]),
        C("train-resume-change-lr", "argument", ["train", "--resume", "run", "--lr", "0.3"]),
        C("train-resume-and-preset", "argument", ["train", "--resume", "run", "--preset", "default"]),
        C("train-resume-other-out", "argument", ["train", "--resume", "run", "--out", "elsewhere"]),
        C("eval-no-target", "argument", ["eval"]),
        C("eval-missing-target", "argument", ["eval", "nothing-here"]),
        C("eval-suite", "argument", [*E, "--suite", "full"]),
        C("eval-n-zero", "argument", [*E, "--n", "0"]),
        C("eval-threat-duplicate", "argument", [*E, "--threat", "linf:0.1", "--threat", "linf:0.1"]),
        C("compare-nothing", "argument", ["compare"]),
        C("compare-missing", "argument", ["compare", "nothing-here"]),
        C("demo-epochs-negative", "argument", ["demo", "--epochs", "-1", "--out", "d1"]),
        C("demo-suite", "argument", ["demo", "--suite", "full", "--out", "d2", "--epochs", "1"]),
        C("meta-algorithm", "argument", ["meta-pretrain", *MP, "--algorithm", "maml", "--out", "m1"]),
        C("meta-stages", "argument", ["meta-pretrain", *MP, "--stages", "5,x", "--out", "m2"]),
        C("meta-iters-zero", "argument", ["meta-pretrain", *MP, "--iters", "0", "--out", "m3"]),
        C("meta-resume-no-tasks", "argument", ["meta-pretrain", *MP, "--resume", "--out", "m4"]),
        C("meta-tasks-and-n", "argument", ["meta-pretrain", "--tasks", "tasks.yaml", "--n", "10", "--out", "m5"]),
        C("meta-empty-data", "argument", ["meta-pretrain", *MP, "--data", "", "--out", "m6"]),
        # -- damaged files ------------------------------------------------------------------------
        C("attack-truncated-model", "file", ["attack", "--model", "trunc-model", "--data", "synthetic", "--n", "8"]),
        C("attack-flipped-model", "file", ["attack", "--model", "flip-model", "--data", "synthetic", "--n", "8"]),
        C("attack-garbage-model", "file", ["attack", "--model", "garbage.safetensors", "--data", "synthetic"]),
        C("attack-empty-model", "file", ["attack", "--model", "empty.safetensors", "--data", "synthetic"]),
        C("attack-truncated-generator", "file", [*A, "--attack", "learned", "--generator", "att-trunc"]),
        C("attack-transfer-truncated", "file", ["attack", "--model", "run", "--transfer", "trunc-set.safetensors"]),
        C("attack-save-existing", "file", [*A, "--attack", "fgsm", "--save", "set.safetensors"]),
        C("eval-truncated-model", "file", ["eval", "trunc-model", "--data", "synthetic", "--n", "8", "--out", "x1"]),
        C("eval-flipped-model", "file", ["eval", "flip-model", "--data", "synthetic", "--n", "8", "--out", "x2"]),
        C("eval-bad-config-run", "file", ["eval", "badcfg-run", "--n", "8", "--suite", "quick", "--no-unseen"]),
        C("eval-state-truncated", "file", ["eval", "run", *E[2:], "--state", "ev-trunc/state.json"]),
        C("eval-state-edited", "file", ["eval", "run", *E[2:], "--state", "ev-edit/state.json"]),
        C(
            "eval-state-other-settings",
            "file",
            ["eval", "run", *E[2:], "--seed", "5", "--state", "ev/state.json"],
        ),
        C("compare-bad-report", "file", ["compare", "ev-bad-report"]),
        C("compare-not-a-run", "file", ["compare", "notes"]),
        C("train-config-bad-yaml", "file", ["train", "--config", "bad.yaml"]),
        C("train-config-list", "file", ["train", "--config", "list.yaml"]),
        C("train-config-key", "file", ["train", "--config", "key.yaml"]),
        C("train-config-missing", "file", ["train", "--config", "none.yaml"]),
        C("train-resume-bad-config", "file", ["train", "--resume", "badcfg-run", "--quiet"]),
        C("train-resume-edited-config", "file", ["train", "--resume", "editcfg-run", "--quiet"]),
        C("train-out-file", "file", [*T, "--out", "a-file"]),
        C("train-out-notes", "file", [*T, "--out", "notes"]),
        C("train-out-run", "file", [*T, "--out", "run"]),
        C("demo-fresh-notes", "file", ["demo", "--out", "notes", "--fresh"]),
        C("demo-fresh-file", "file", ["demo", "--out", "a-file", "--fresh"]),
        C("meta-out-file", "file", ["meta-pretrain", *MP, "--out", "a-file"]),
        C("meta-out-attacker", "file", ["meta-pretrain", *MP, "--out", "att"]),
        C("meta-out-notes", "file", ["meta-pretrain", *MP, "--out", "notes"]),
        C("meta-tasks-yaml", "file", ["meta-pretrain", "--tasks", "tasks-yaml.yaml", "--out", "m7"]),
        C("meta-tasks-key", "file", ["meta-pretrain", "--tasks", "tasks-key.yaml", "--out", "m8"]),
        C("meta-tasks-domain", "file", ["meta-pretrain", "--tasks", "tasks-domain.yaml", "--out", "m9"]),
        C("meta-tasks-threat", "file", ["meta-pretrain", "--tasks", "tasks-threat.yaml", "--out", "m10"]),
        C("meta-tasks-list", "file", ["meta-pretrain", "--tasks", "tasks-list.yaml", "--out", "m11"]),
        C("meta-tasks-missing", "file", ["meta-pretrain", "--tasks", "none.yaml", "--out", "m12"]),
        C("meta-resume-other-tasks", "file", ["meta-pretrain", "--tasks", "tasks.yaml", "--resume", "--out", "att"]),
        # -- bad data (a plugin's datasets) ------------------------------------------------------
        C("data-nan-train", "data", ["train", "--data", "bad-nan", "--model", "mlp", *TINY, "--out", "b1"]),
        C("data-labels-train", "data", ["train", "--data", "bad-labels", "--model", "mlp", *TINY, "--out", "b2"]),
        C("data-neglabels-train", "data", ["train", "--data", "bad-neglabels", "--model", "mlp", *TINY, "--out", "b3"]),
        C("data-shape-train", "data", ["train", "--data", "bad-shape", "--model", "mlp", *TINY, "--out", "b4"]),
        C("data-range-train", "data", ["train", "--data", "bad-range", "--model", "mlp", *TINY, "--out", "b5"]),
        C("data-empty-train", "data", ["train", "--data", "bad-empty", "--model", "mlp", *TINY, "--out", "b6"]),
        C("data-nan-attack", "data", ["attack", "--model", "run", "--data", "bad-nan", "--n", "8"]),
        C("data-labels-attack", "data", ["attack", "--model", "run", "--data", "bad-labels", "--n", "8"]),
        C("data-shape-eval", "data", ["eval", "run", "--data", "bad-shape", "--n", "8", "--out", "b7"]),
        C("data-nan-signal-train", "data", ["train", "--data", "bad-nan-signal", "--model", "fcn-small", *TINY]),
        C("data-nan-eval", "data", ["eval", "run", "--data", "bad-nan", "--n", "8", "--suite", "quick", "--out", "b8"]),
        # -- sensors ------------------------------------------------------------------------------
        C("sensor-attack-spike", "sensors", [*WA, "--threat", "spike:3,2"], expect="ok"),
        C("sensor-attack-drift", "sensors", [*WA, "--attack", "drift-search", "--threat", "drift:0.5"], expect="ok"),
        C("sensor-attack-default", "sensors", WA, expect="ok"),
        C("sensor-spike-zero-k", "sensors", [*WA, "--threat", "spike:0,2"]),
        C("sensor-spike-one-arg", "sensors", [*WA, "--threat", "spike:3"]),
        C("sensor-spike-text", "sensors", [*WA, "--threat", "spike:a,b"]),
        C("sensor-drift-negative", "sensors", [*WA, "--threat", "drift:-1"]),
        C("sensor-drift-two", "sensors", [*WA, "--threat", "drift:1,2"]),
        C("sensor-syn-on-watch", "sensors", [*WA, "--threat", "syn:1"]),
        C(
            "sensor-save",
            "sensors",
            [*WA, "--attack", "spike-search", "--threat", "spike:3,2", "--save", "s.safetensors"],
        ),
        C("sensor-image-model", "sensors", ["attack", "--model", "run", "--data", "watch", "--n", "8"]),
        C("sensor-watch-model-on-images", "sensors", ["attack", "--model", "wrun", "--data", "synthetic", "--n", "8"]),
        C(
            "sensor-train-fcn-spike",
            "sensors",
            ["train", *WATCH, "--defense", "sat", "--threat", "spike:0,2", "--out", "s1"],
        ),
        C("sensor-train-text-model", "sensors", ["train", *WATCH[:2], "--model", "word-cnn", *TINY, "--out", "s2"]),
        C("sensor-train-fcn-syn", "sensors", ["train", *WATCH, "--threat", "syn:2", "--out", "s3"]),
        C("sensor-watch-damaged", "sensors", [*WA, "--data-dir", "sensors"]),
        C("sensor-eval-drift-negative", "sensors", ["eval", "wrun", "--n", "8", "--threat", "drift:-1", "--out", "s4"]),
        C(
            "sensor-train-fcn-ok",
            "sensors",
            [
                "train",
                *WATCH[:2],
                "--model",
                "fcn",
                *TINY,
                "--threat",
                "drift:0.5",
                "--defense",
                "sat",
                "-o",
                "steps=1",
                "--out",
                "s5",
            ],
            expect="ok",
        ),
        # -- text ----------------------------------------------------------------------------------
        C("text-attack-default", "text", TA, expect="ok"),
        C("text-attack-typo", "text", [*TA, "--threat", "typo:1", "--attack", "text-greedy"], expect="ok"),
        C("text-syn-zero", "text", [*TA, "--threat", "syn:0"]),
        C("text-syn-x", "text", [*TA, "--threat", "syn:x"]),
        C("text-typo-negative", "text", [*TA, "--threat", "typo:-1"]),
        C("text-pgd-syn", "text", [*TA, "--attack", "pgd", "--threat", "syn:2"]),
        C("text-linf-on-mr", "text", [*TA, "--threat", "linf:0.1"]),
        C("text-save", "text", [*TA, "--save", "t.safetensors"]),
        C("text-image-model", "text", ["attack", "--model", "run", "--data", "mr", "--n", "8", "--threat", "syn:1"]),
        C("text-train-defense-pgd-syn", "text", ["train", *MR, "--defense", "pgd", "--threat", "syn:2", "--out", "t1"]),
        C("text-train-linf", "text", ["train", *MR, "--threat", "linf:0.1", "--out", "t2"]),
        C(
            "text-train-bilstm-typo-neg",
            "text",
            ["train", *MR[:2], "--model", "bilstm", *TINY, "--threat", "typo:-1", "--out", "t3"],
        ),
        C(
            "text-train-charngram-syn-x",
            "text",
            ["train", *MR[:2], "--model", "charngram-cnn", *TINY, "--threat", "syn:x", "--out", "t4"],
        ),
        C("text-train-fcn-on-mr", "text", ["train", *MR[:2], "--model", "fcn-small", *TINY, "--out", "t5"]),
        C("text-train-bilstm-ok", "text", ["train", *MR[:2], "--model", "bilstm", *TINY, "--out", "t6"], expect="ok"),
        C("text-eval-syn-x", "text", ["eval", "trun", "--n", "8", "--threat", "syn:x", "--out", "t7"]),
        C(
            "text-mr-missing",
            "text",
            [*TA, "--data-dir", "empty"],
            env={"METAAT_DATA": "/nonexistent", "HOME": "/nonexistent"},
        ),
        C("text-meta-syn", "text", ["meta-pretrain", *MP[:6], "--threat", "syn:2", *MP[8:], "--out", "t8"]),
    ]
    return out


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".metaat.lock" and "__pycache__" not in p.parts
    }


def record(case: Case, w: Path, r: Any, before: dict[str, str], seconds: float) -> dict[str, Any]:
    after = hashes(w)
    changed = sorted(k for k in before if after.get(k) != before[k])
    lines = [line for line in (r.stderr or "").splitlines() if line.strip()]
    text = (r.stdout or "") + (r.stderr or "")
    traceback = "Traceback (most recent call last)" in text or bool(re.search(r"unexpected \w+.*traceback in", text))
    if traceback:
        verdict = "traceback"
    elif changed:
        verdict = "file damaged"
    elif case.expect == "error" and r.returncode == 0:
        verdict = "silently wrong"
    elif case.expect == "ok" and r.returncode != 0:
        verdict = "refused a valid command"
    elif case.expect == "error" and (len(lines) != 1 or not lines[0].startswith("error: ")):
        verdict = "unclear error"
    else:
        verdict = "ok"
    return {
        "id": case.id,
        "kind": case.kind,
        "command": "metaat " + " ".join(case.args),
        "env": case.env,
        "expect": case.expect,
        "exit": r.returncode,
        "stderr_last": lines[-1] if lines else "",
        "stderr_lines": len(lines),
        "traceback": traceback,
        "files_changed": changed,
        "seconds": round(seconds, 2),
        "verdict": verdict,
    }


def fault_cases(w: Path) -> list[dict[str, Any]]:
    """Held folders and killed runs: the second of two runs is refused; a kill -9 or SIGTERM resumes."""
    from metaat.runtime import FolderLock

    rows = []
    for cid, args in (
        ("fault-train-held", ["train", "--resume", "run", "--quiet"]),
        ("fault-meta-held", ["meta-pretrain", *MP, "--out", "att", "--overwrite"]),
        ("fault-eval-held", ["eval", "run", "--n", "16", "--suite", "quick", "--no-unseen"]),
    ):
        before = hashes(w)
        with FolderLock(w / ("att" if "meta" in cid else "run")):
            t0 = time.perf_counter()
            r = run(args, w)
        rows.append(record(Case(cid, "fault", args), w, r, before, time.perf_counter() - t0))
    for cid, sig in (("fault-kill9-resume", signal.SIGKILL), ("fault-sigterm-resume", signal.SIGTERM)):
        folder = f"k-{sig.name}"
        args = ["train", "--data", "synthetic", "--model", "mlp", "--train-subset", "512", "--batch-size", "16"]
        args += [
            "--epochs",
            "3",
            "--eval-n",
            "0",
            "--threads",
            "1",
            "--quiet",
            "--checkpoint-every",
            "5",
            "--out",
            folder,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(PY + args, cwd=w, env=env, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and not (w / folder / "checkpoint").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=120)
        before = hashes(w)
        t0 = time.perf_counter()
        r = run(["train", "--resume", folder, "--quiet"], w)
        row = record(Case(cid, "fault", ["train", "--resume", folder], expect="ok"), w, r, {}, time.perf_counter() - t0)
        row["killed_exit"] = proc.returncode
        row["files_changed"] = []  # a resume continues its own run: its files are meant to change
        del before
        rows.append(row)
    return rows


def write(args: argparse.Namespace, rows: list[dict[str, Any]], t0: float) -> dict[str, int]:
    import platform

    import torch

    verdicts = [r["verdict"] for r in rows]
    summary = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    result = {
        "command": getattr(args, "command", None)
        or "OMP_NUM_THREADS=1 python benchmarks/bad_input_campaign.py" + (f" --only {args.only}" if args.only else ""),
        "reruns": [r["id"] for r in rows if "before" in r],
        "findings_fixed": [r["id"] for r in rows if "before" in r and r["before"]["verdict"] != r["verdict"]],
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "cases": len(rows),
        "summary": summary,
        "tracebacks": sum(r["traceback"] for r in rows),
        "files_damaged": sum(bool(r["files_changed"]) for r in rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bad_input_campaign.json"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--only", default="", help="run only the cases whose id holds this text")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rerun cases' rows in --out (the old row kept as 'before')",
    )
    args = ap.parse_args()
    w = (args.work or Path(tempfile.mkdtemp(prefix="metaat-campaign-"))).resolve()
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (w / ".built").exists():
        build_world(w)
        (w / ".built").write_text("")
    rows: list[dict[str, Any]] = []
    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else None
    if previous is not None:
        rows = previous["rows"]
        args.command = previous["command"]

    def add(row: dict[str, Any]) -> None:  # the results file is rewritten after every case
        old = next((i for i, r in enumerate(rows) if r["id"] == row["id"]), None)
        if old is None:
            rows.append(row)
        else:
            rows[old] = {
                **row,
                "before": {k: rows[old][k] for k in ("exit", "stderr_last", "files_changed", "verdict")},
            }
        print(f"{row['verdict']:>14s}  {row['id']}: {row['stderr_last'][:150]}", flush=True)
        write(args, rows, t0)

    for case in cases():
        if args.only not in case.id:
            continue
        before = hashes(w)
        t1 = time.perf_counter()
        try:
            r = run(case.args, w, case.env, timeout=300)
        except subprocess.TimeoutExpired:
            r = subprocess.CompletedProcess(case.args, 124, "", "error: timed out after 300 s")
        add(record(case, w, r, before, time.perf_counter() - t1))
    if not args.only or args.only in "fault-":
        for row in fault_cases(w):
            add(row)
    summary = write(args, rows, t0)
    print(json.dumps(summary), f"{len(rows)} cases -> {args.out}")


if __name__ == "__main__":
    main()
