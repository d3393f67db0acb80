"""The bad-input matrix: what a hostile new user can do to ``metaat`` — bad arguments, damaged files,
bad data, odd models, faults — and what it must answer: a non-zero exit, exactly one line on stderr
naming the culprit, no traceback, and no file that existed before changed.

Each :class:`Case` is one row: ``kind`` (argument, file, data, model, fault), the command line (built
in a scratch folder holding a small saved model, a trained run and a few damaged files), the exit
code, and a regular expression the one line must match. Every run of the matrix hashes every file of
the scratch folder before and after the command.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import metaat.data as data
import metaat.models as models
from metaat import cli
from metaat.models import MODELS
from metaat.runtime import FolderInUseError, FolderLock

cli._load_command_modules()
torch.set_num_threads(1)

N = ["--n", "16"]
TINY_TRAIN = ["--data", "synthetic", "--model", "mlp", "--train-subset", "32", "--batch-size", "16", "--epochs", "1"]
TINY_TRAIN += ["--eval-n", "0", "--threads", "1", "--quiet"]


# -- odd models, registered for this module (a plugin would do the same) -------------------------------


class _Wrapped(nn.Module):
    """An MLP whose output is changed by ``how``: the odd models of the matrix."""

    def __init__(self, how: str, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.how = how
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    def forward(self, x: torch.Tensor) -> Any:
        out = self.net(x)
        if self.how == "nan":
            return out * float("nan")
        if self.how == "nan-away":  # finite on the clean test points, NaN anywhere else
            gap = (x.flatten(1)[:, None, :] - CLEAN.flatten(1)[None]).abs().amax(dim=2)  # (B, 16)
            off = gap.min(dim=1).values > 1e-6
            return torch.where(off[:, None], torch.full_like(out, float("nan")), out)
        if self.how == "tuple":
            return out, out
        if self.how == "3d":
            return out[:, :, None]
        if self.how == "int":
            return out.argmax(dim=1, keepdim=True).expand(-1, out.shape[1])
        return out


CLEAN = data.load("synthetic", "test", n=16)[0]


def _register(name: str, how: str) -> None:
    if name not in MODELS.available():
        MODELS.register(name, help=f"test model ({how})")(
            lambda num_classes, in_channels, image_size, how=how: _Wrapped(how, num_classes, in_channels, image_size)
        )


for _name, _how in [("t-nan", "nan"), ("t-nan-away", "nan-away"), ("t-tuple", "tuple"), ("t-3d", "3d")]:
    _register(_name, _how)
_register("t-int", "int")
if "t-huge" not in MODELS.available():

    @MODELS.register("t-huge", help="test model asking for an impossible allocation")
    def _huge(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return nn.Linear(1 << 22, 1 << 22)  # 2^44 floats: 64 TiB


class _BadData(data.Dataset):
    """Synthetic-sized images with one defect: a NaN pixel, or a label past the last class."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.info = data.DatasetInfo(f"t-{how}", 10, 1, 12, tuple("abcdefghij"))

    def arrays(self, split: str, data_dir: Path | None) -> tuple[Any, Any]:
        import numpy as np

        x, y = np.full((32, 1, 12, 12), 0.5, dtype=np.float32), np.arange(32) % 10
        if self.how == "nan-data":
            x[3, 0, 5, 5] = np.nan
        else:
            y[5] = 10
        return x, y


for _how in ("nan-data", "label-data"):
    if f"t-{_how}" not in data.DATASETS.available():
        data.DATASETS.register(f"t-{_how}", help=_how)(lambda how=_how: _BadData(how))


# -- the scratch world ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with saved models (good, odd, wrong size), a trained run, a saved adversarial set,
    a non-run folder and damaged files."""
    root = tmp_path_factory.mktemp("bad-input")
    torch.manual_seed(0)
    models.save_model(models.create("mlp", 10, 1, 12, hidden=16), root / "model")
    models.save_model(models.create("mlp", 10, 1, 8, hidden=16), root / "model-8px")
    models.save_model(models.create("mlp", 3, 1, 12, hidden=16), root / "model-3cls")
    for name in ("t-nan", "t-nan-away", "t-tuple", "t-3d", "t-int"):
        models.save_model(models.create(name, 10, 1, 12), root / name)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run\n")
    (root / "exists.safetensors").write_bytes(b"keep me")
    (root / "bad.yaml").write_text("epochs: [1,\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown-key.yaml").write_text("epoch: 3\n")
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (root / "sensors").mkdir()
    (root / "sensors" / "watch.npz").write_bytes(b"PK\x03\x04 damaged")
    (root / "empty").mkdir()
    (root / "a-file").write_text("x")
    (root / "attacker").mkdir()  # what meta-pretrain leaves: only the names matter to its folder checks
    for name in ("generator.safetensors", "generator.json"):
        (root / "attacker" / name).write_text("{}")
    (root / "tasks.yaml").write_text("name: t\n")
    runner = CliRunner()
    made = runner.invoke(cli.app, ["train", *TINY_TRAIN, "--out", str(root / "run")])
    assert made.exit_code == 0, made.output
    saved = runner.invoke(
        cli.app,
        ["attack", "--model", str(root / "model"), "--data", "synthetic", *N, "--attack", "fgsm"]
        + ["--save", str(root / "set.safetensors")],
    )
    assert saved.exit_code == 0, saved.output
    signed = runner.invoke(
        cli.app,
        ["attack", "--model", str(root / "model"), "--data", "synthetic", *N, "--attack", "fgsm"]
        + ["--save", str(root / "signed.safetensors")],
        env={"METAAT_HMAC_KEY": "secret"},
    )
    assert signed.exit_code == 0, signed.output
    return root


def _tampered_set(root: Path) -> None:
    """The signed set with one image changed and its sha256 recomputed (a deliberate edit)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from metaat.attacks.transfer import META_KEY, TENSORS, tensors_digest

    with safe_open(str(root / "signed.safetensors"), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["x_adv"][0].zero_()
    meta["sha256"] = tensors_digest({k: tensors[k] for k in TENSORS}, meta)
    save_file(tensors, str(root / "tampered.safetensors"), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def _edited_run(root: Path) -> None:
    """A copy of the trained run whose config.yaml says another learning rate."""
    shutil.copytree(root / "run", root / "edited-run", dirs_exist_ok=True)
    cfg = root / "edited-run" / "config.yaml"
    cfg.write_text(re.sub(r"(?m)^lr: .*$", "lr: 0.5", cfg.read_text()))


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # argument | file | data | model | fault
    args: Callable[[Path], list[str]]
    culprit: str  # a regular expression the one error line must match
    code: int = 2
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    fault: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    hold: str | None = None  # a folder of the world whose lock another holder has during the command


def attack(model: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda r: ["attack", "--model", str(r / model), "--data", "synthetic", *N, *(e.format(r=r) for e in extra)]


def train(*extra: str) -> Callable[[Path], list[str]]:
    return lambda r: ["train", *TINY_TRAIN, *(e.format(r=r) for e in extra)]


MP = ["--data", "synthetic", "--n", "64", "--model", "mlp", "--stages", "2", "--iters", "1", "--threads", "1"]


def meta(*extra: str) -> Callable[[Path], list[str]]:
    return lambda r: ["meta-pretrain", *MP, *(e.format(r=r) for e in extra)]


def evaluate(model: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda r: (
        ["eval", str(r / model), "--data", "synthetic", *N, "--suite", "quick", "--no-unseen"]
        + [e.format(r=r) for e in extra]
    )


def _disk_full(mp: pytest.MonkeyPatch, root: Path) -> None:
    import metaat.train.entry as entry

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    mp.setattr(entry, "atomic_write_text", full)


def _read_only(mp: pytest.MonkeyPatch, root: Path) -> None:
    import metaat.train.entry as entry

    def denied(path: Path, text: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    mp.setattr(entry, "atomic_write_text", denied)


def _bug(mp: pytest.MonkeyPatch, root: Path) -> None:
    import metaat.train.entry as entry

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("division by zero")

    mp.setattr(entry, "environment", broken)


def _cpu_allocator(mp: pytest.MonkeyPatch, root: Path) -> None:
    import metaat.data as datasets

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: 9 TB")

    mp.setattr(datasets, "load", refuse)
    mp.setattr(datasets, "load_holdout", refuse)  # what training reads its data with


CASES = [
    # -- arguments ---------------------------------------------------------------------------------
    Case("attack-empty-attack", "argument", attack("model", "--attack", ""), r"--attack is empty"),
    Case("attack-empty-threat", "argument", attack("model", "--threat", ""), r"--threat is empty"),
    Case("attack-empty-data", "argument", lambda r: ["attack", "--model", str(r / "model"), "--data", ""], r"--data"),
    Case("attack-unknown-attack", "argument", attack("model", "--attack", "pgdd"), r"pgdd.*(valid|known)"),
    Case("attack-bad-threat", "argument", attack("model", "--threat", "linf:abc"), r"linf:abc|eps"),
    Case("attack-negative-eps", "argument", attack("model", "--threat", "linf:-1"), r"eps must be"),
    Case("attack-unknown-norm", "argument", attack("model", "--threat", "l3:1"), r"l3"),
    Case("attack-option-no-eq", "argument", attack("model", "-o", "steps"), r"--option must look like key=value"),
    Case("attack-option-yaml", "argument", attack("model", "-o", "steps=[1,"), r"--option 'steps=\[1,'.*YAML"),
    Case("attack-option-empty-key", "argument", attack("model", "-o", "=3"), r"has no key"),
    Case("attack-option-unknown", "argument", attack("model", "-o", "stepz=3"), r"stepz"),
    Case("attack-device", "argument", attack("model", "--device", "tpu"), r"unknown device 'tpu'"),
    Case("attack-save-suffix", "argument", attack("model", "--save", "out.pt"), r"--save writes a \.safetensors"),
    Case("train-empty-data", "argument", lambda r: ["train", "--data", "", "--out", str(r / "x")], r"--data is empty"),
    Case("train-empty-threat", "argument", train("--threat", "", "--out", "{r}/x"), r"--threat is empty"),
    Case("train-option-yaml", "argument", train("-o", "beta=: :", "--out", "{r}/x"), r"--option 'beta=: :'"),
    Case("train-negative-epochs", "argument", train("--epochs", "-1", "--out", "{r}/x"), r"epochs"),
    Case("train-unknown-defense", "argument", train("--defense", "pgdx", "--out", "{r}/x"), r"pgdx"),
    Case("eval-empty-threat", "argument", evaluate("model", "--threat", ""), r"--threat is empty"),
    Case("eval-empty-data", "argument", lambda r: ["eval", str(r / "model"), "--data", ""], r"--data is empty"),
    Case("eval-bad-suite", "argument", evaluate("model", "--suite", "fast"), r"unknown suite 'fast'"),
    # sensor threat syntax (spike:k,a and drift:b) and the sensor attacks
    Case("threat-spike-no-amp", "argument", attack("model", "--threat", "spike:5"), r"spike"),
    Case("threat-spike-zero-k", "argument", attack("model", "--threat", "spike:0,2"), r"spike"),
    Case("threat-spike-text", "argument", attack("model", "--threat", "spike:a,b"), r"spike"),
    Case("threat-drift-negative", "argument", attack("model", "--threat", "drift:-1"), r"drift"),
    Case("threat-drift-two", "argument", attack("model", "--threat", "drift:1,2"), r"drift"),
    Case("attack-spike-on-linf", "argument", attack("model", "--attack", "spike-search"), r"spike"),
    Case("attack-drift-on-l2", "argument", attack("model", "--attack", "drift-search", "--threat", "l2:1"), r"drift"),
    # text threat syntax (syn:k, typo:k, nbr:k) and the text attacks
    Case("threat-syn-zero", "argument", attack("model", "--threat", "syn:0"), r"syn"),
    Case("threat-typo-negative", "argument", attack("model", "--threat", "typo:-1"), r"typo:-1"),  # not an emoji
    Case("threat-typo-fraction", "argument", attack("model", "--threat", "typo:1.5"), r"typo"),
    Case("threat-nbr-text", "argument", attack("model", "--threat", "nbr:x"), r"nbr"),
    Case(
        "attack-text-greedy-on-images", "argument", attack("model", "--attack", "text-greedy"), r"text-greedy|syn|typo"
    ),
    Case("attack-pgd-on-syn", "argument", attack("model", "--attack", "pgd", "--threat", "syn:2"), r"word edits"),
    Case(
        "attack-linf-on-text",
        "argument",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "mr", "--threat", "linf:0.1"],
        r"linf:0\.1 is a continuous threat, but mr is a text dataset",
    ),
    Case(
        "train-linf-on-text",
        "argument",
        train("--data", "mr", "--threat", "linf:0.1", "--out", "{r}/x"),
        r"mr is a text",
    ),
    Case(
        "train-sensor-model-on-text",
        "argument",
        train("--data", "mr", "--model", "fcn-small", "--out", "{r}/x"),
        r"model 'fcn-small' cannot be built for mr \(text data\)",
    ),
    Case(
        "train-syn-on-sensors",
        "argument",
        train("--data", "watch", "--threat", "syn:1", "--out", "{r}/x"),
        r"syn:1.*watch",
    ),
    Case(
        "eval-syn-on-images",
        "argument",
        evaluate("model", "--threat", "syn:1"),
        r"syn:1 is a set of word edits.*synthetic",
    ),
    Case(
        "attack-save-sensors",
        "argument",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "watch", "--save", str(r / "w.safetensors")],
        r"--save keeps image examples.*watch is a sensors dataset",
    ),
    Case("meta-word-edits", "argument", meta("--threat", "syn:2", "--out", "{r}/m"), r"syn:2 is a set of word edits"),
    Case("meta-resume-without-tasks", "argument", meta("--resume", "--out", "{r}/m"), r"--resume needs --tasks"),
    Case(
        "meta-tasks-with-n",
        "argument",
        lambda r: ["meta-pretrain", "--tasks", str(r / "tasks.yaml"), "--n", "9", "--out", str(r / "m")],
        r"--n cannot be combined with --tasks",
    ),
    # -- files -------------------------------------------------------------------------------------
    Case("attack-save-exists", "file", attack("model", "--save", "{r}/exists.safetensors"), r"already exists"),
    Case(
        "attack-save-spatial",
        "file",
        attack("model", "--attack", "spatial", "--save", "{r}/spatial.safetensors"),
        r"--save keeps examples of an attack bounded by a threat model; spatial takes none",
    ),
    Case("attack-model-missing", "file", attack("nothing-here"), r"nothing-here"),
    Case("attack-model-garbage", "file", attack("garbage.safetensors"), r"garbage"),
    Case("train-config-yaml", "file", lambda r: ["train", "--config", str(r / "bad.yaml")], r"bad\.yaml.*YAML"),
    Case("train-config-list", "file", lambda r: ["train", "--config", str(r / "list.yaml")], r"list\.yaml"),
    Case("train-config-key", "file", lambda r: ["train", "--config", str(r / "unknown-key.yaml")], r"epoch"),
    Case("train-out-not-a-run", "file", train("--out", "{r}/notes"), r"notes.*not a metaat run.*--force"),
    Case("train-out-is-a-file", "file", train("--out", "{r}/a-file"), r"a-file.*is a file"),
    Case("train-out-holds-a-run", "file", train("--out", "{r}/run"), r"already holds a run"),
    Case("meta-out-is-a-file", "file", meta("--out", "{r}/a-file"), r"a-file.*it is a file"),
    Case(
        "meta-out-holds-an-attacker", "file", meta("--out", "{r}/attacker"), r"already holds an attacker.*--overwrite"
    ),
    Case(
        "meta-out-not-an-attacker", "file", meta("--out", "{r}/notes"), r"notes.*not a metaat attacker folder.*--force"
    ),
    Case(
        "demo-fresh-not-a-run",
        "file",
        lambda r: ["demo", "--out", str(r / "notes"), "--fresh"],
        r"notes.*not a metaat run",
    ),
    Case("train-resume-nothing", "file", lambda r: ["train", "--resume", str(r / "empty")], r"empty"),
    Case(
        "train-resume-edited-config",
        "file",
        lambda r: ["train", "--resume", str(r / "edited-run"), "--quiet"],
        r"config\.yaml was edited.*lr: checkpoint",
        setup=_edited_run,
    ),
    Case(
        "transfer-garbage",
        "file",
        lambda r: ["attack", "--model", str(r / "model"), "--transfer", str(r / "garbage.safetensors")],
        r"garbage\.safetensors",
    ),
    Case(
        "transfer-tampered-with-key",
        "file",
        lambda r: ["attack", "--model", str(r / "model"), "--transfer", str(r / "tampered.safetensors")],
        r"tampered\.safetensors.*not trusted: its hmac_sha256 does not match METAAT_HMAC_KEY",
        setup=_tampered_set,
        env={"METAAT_HMAC_KEY": "secret"},
    ),
    Case(
        "transfer-unsigned-with-key",
        "file",
        lambda r: ["attack", "--model", str(r / "model"), "--transfer", str(r / "set.safetensors")],
        r"set\.safetensors.*not signed",
        env={"METAAT_HMAC_KEY": "secret"},
    ),
    # -- data --------------------------------------------------------------------------------------
    Case(
        "attack-n-zero",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "synthetic", "--n", "0"],
        r"n",
    ),
    Case("attack-start-past-end", "data", attack("model", "--start", "10000000"), r"start"),
    Case(
        "attack-unknown-data", "data", lambda r: ["attack", "--model", str(r / "model"), "--data", "mnistt"], r"mnistt"
    ),
    Case(
        "sensor-watch-missing",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "watch", "--data-dir", str(r / "empty")],
        r"watch\.npz not found in .*empty",
        env={"METAAT_DATA": "/nonexistent", "HOME": "/nonexistent-home"},
    ),
    Case(
        "sensor-watch-too-few",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "watch"],
        r"n=1000.*watch test split holds only|watch\.npz not found",
    ),
    Case(
        "sensor-watch-damaged",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "watch", "--data-dir", str(r / "sensors")],
        r"watch\.npz",
    ),
    Case(
        "text-mr-missing",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "mr", "--data-dir", str(r / "empty")],
        r"mr|movie|token|shape",
        env={"METAAT_DATA": "/nonexistent"},
    ),
    Case(
        "attack-nan-data",
        "data",
        lambda r: ["attack", "--model", str(r / "model"), "--data", "t-nan-data", "--n", "8"],
        r"dataset t-nan-data \(test split\): x has 1 NaN",
    ),
    Case(
        "train-label-data", "data", train("--data", "t-label-data", "--out", "{r}/x"), r"t-label-data.*labels must lie"
    ),
    Case("eval-wrong-size-model", "data", evaluate("model-8px"), r"1x8x8 inputs.*synthetic has 1x12x12"),
    # -- models ------------------------------------------------------------------------------------
    Case("attack-all-nan", "model", attack("t-nan"), r"non-finite logits.*16 of 16 points \(indices 0, 1"),
    Case("attack-tuple-output", "model", attack("t-tuple"), r"one tensor of logits.*tuple"),
    Case("attack-3d-output", "model", attack("t-3d"), r"logits of shape \(batch, classes\)"),
    Case("attack-too-few-classes", "model", attack("model-3cls"), r"3 classes|only 3"),
    Case("attack-wrong-image-size", "model", attack("model-8px"), r"shape"),
    Case("attack-wrong-device", "model", attack("model", "--device", "cuda:0"), r"cuda:0.*CUDA is not available"),
    Case("eval-all-nan", "model", evaluate("t-nan"), r"non-finite logits.*16 of 16 points \(indices 0, 1"),
    Case("train-impossible-model", "model", train("--model", "t-huge", "--out", "{r}/huge"), r"memory", code=1),
    # -- faults ------------------------------------------------------------------------------------
    Case("train-disk-full", "fault", train("--out", "{r}/full"), r"no space left.*full", code=1, fault=_disk_full),
    Case("train-read-only", "fault", train("--out", "{r}/ro"), r"permission denied.*ro", code=1, fault=_read_only),
    Case(
        "train-allocator",
        "fault",
        train("--out", "{r}/mem"),
        r"not enough memory.*can't allocate",
        code=1,
        fault=_cpu_allocator,
    ),
    Case(
        "train-unexpected-bug",
        "fault",
        train("--out", "{r}/bug"),
        r"unexpected ZeroDivisionError.*traceback in .*\.log",
        code=1,
        fault=_bug,
    ),
    Case(
        "train-folder-locked",
        "fault",
        lambda r: ["train", "--resume", str(r / "run"), "--quiet"],
        r"in use by another metaat process \(pid \d+",
        hold="run",
    ),
    Case(
        "eval-run-folder-locked",
        "fault",
        lambda r: ["eval", str(r / "run"), "--data", "synthetic", *N, "--suite", "quick", "--no-unseen"],
        r"run is in use by another metaat process \(pid \d+",
        hold="run",
    ),
    Case(
        "meta-folder-locked",
        "fault",
        meta("--out", "{r}/attacker", "--overwrite"),
        r"attacker is in use by another metaat process \(pid \d+",
        hold="attacker",
    ),
]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".metaat.lock"
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit_and_changes_no_file(
    case: Case, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.setup is not None:
        case.setup(world)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.fault is not None:
        case.fault(monkeypatch, world)
    before = _hashes(world)
    with FolderLock(world / case.hold) if case.hold else contextlib.nullcontext():
        result = CliRunner().invoke(cli.app, case.args(world))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert re.search(case.culprit, lines[0]), lines[0]
    print(f"{case.id}: {lines[0]}")  # pytest -rP shows every answer
    after = _hashes(world)
    assert {k: after.get(k) for k in before} == before  # no file that existed was changed or removed


def test_the_matrix_covers_every_kind() -> None:
    assert {c.kind for c in CASES} == {"argument", "file", "data", "model", "fault"}
    assert len({c.id for c in CASES}) == len(CASES)


# -- beyond one line: what must not silently go wrong --------------------------------------------------


def test_a_model_nan_away_from_the_clean_points_is_counted_broken_and_flagged(world: Path) -> None:
    """argmax of a NaN row is a class (often 0): such points used to count as robust."""
    result = CliRunner().invoke(cli.app, attack("t-nan-away", "--attack", "fgsm", "--json")(world))
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["robust"] == 0.0 and report["clean"] > 0
    assert report["nonfinite_adversarial"] == 16


def test_the_finite_outputs_check_flags_nan_inside_the_ball_that_every_other_check_passes() -> None:
    import metaat.eval as E

    torch.manual_seed(0)
    model = _Wrapped("nan-away", 10, 1, 12)
    with torch.no_grad():
        y = model(CLEAN).argmax(dim=1)  # every clean point right: a perfect score to fake
    r = E.evaluate(
        model, CLEAN, y, ["linf:0.05"], suite="quick", checks=E.CheckConfig(n=16, steps=3, square_queries=10)
    )
    assert r.clean == 1.0 and r.robust["linf:0.05"] == 0.0  # NaN outputs count as broken, not as class 0
    status = {c.name: c.status for c in r.checks}
    assert status["finite-outputs"] == "flagged"
    assert status["gradients"] == status["large-eps"] == status["logits"] == "passed"  # the hole it closes


def test_two_trainings_into_one_folder_the_second_is_refused_and_the_first_is_bit_identical(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    args = ["--data", "synthetic", "--model", "mlp", "--defense", "pgd", "--train-subset", "256"]
    args += ["--batch-size", "32", "--epochs", "2", "--eval-n", "0", "--threads", "1", "--quiet", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "metaat.cli", "train", *args, "--out", str(tmp_path / "shared")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = tmp_path / "shared" / ".metaat.lock"
        while first.poll() is None and not (tmp_path / "shared" / "config.yaml").exists():
            time.sleep(0.01)  # the first run has started training
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run (however slow the second's start is)
        try:
            assert first.poll() is None, "the first training ended before the second could start"
            t0 = time.perf_counter()
            second = CliRunner().invoke(cli.app, ["train", *args, "--out", str(tmp_path / "shared")])
            refused_in = time.perf_counter() - t0
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert refused_in < 20  # at once: data and model are built, nothing is trained or written
        assert second.exit_code == 2, second.output
        assert second.stderr.strip().splitlines() == [
            f"error: {tmp_path / 'shared'} is in use by another metaat process (pid {first.pid}, lock {lock}); "
            "wait for it to finish or choose another folder"
        ]
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    alone = CliRunner().invoke(cli.app, ["train", *args, "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 0, alone.output
    shared = load_file(str(tmp_path / "shared" / "checkpoint" / "model.safetensors"))
    single = load_file(str(tmp_path / "alone" / "checkpoint" / "model.safetensors"))
    assert shared.keys() == single.keys() and all(torch.equal(shared[k], single[k]) for k in shared)
    lines = (tmp_path / "shared" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "alone" / "metrics.jsonl").read_text().splitlines())


def test_a_killed_checkpoint_write_leaves_nothing_behind_at_the_next_start(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    (run / ".checkpoint.tmp-99999").mkdir()
    (run / ".checkpoint.tmp-99999" / "model.safetensors").write_bytes(b"half")
    (run / ".metrics.jsonl.abc.tmp").write_text("half")
    result = CliRunner().invoke(cli.app, ["train", "--resume", str(run), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]


def test_a_folder_that_is_not_a_run_is_used_with_force_and_its_files_are_kept(world: Path, tmp_path: Path) -> None:
    shutil.copytree(world / "notes", tmp_path / "notes")
    result = CliRunner().invoke(cli.app, ["train", *TINY_TRAIN, "--out", str(tmp_path / "notes"), "--force"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "notes" / "todo.txt").read_text() == "not a run\n"
    assert (tmp_path / "notes" / "checkpoint").is_dir()


def test_a_keyed_digest_catches_an_edit_whose_sha256_was_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from metaat.eval.state import EvalState, content_digest, read_state

    monkeypatch.setenv("METAAT_HMAC_KEY", "k1")
    state = EvalState.open(tmp_path / "s.json", {"model": "m"})
    state.clean = "0101"
    state.save()
    assert read_state(tmp_path / "s.json")["clean"] == "0101"
    data = json.loads((tmp_path / "s.json").read_text())
    data["clean"] = "1111"
    data["sha256"] = content_digest(data)  # what someone who knows the format can do
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"s\.json: not trusted: its hmac_sha256 does not match METAAT_HMAC_KEY"):
        read_state(tmp_path / "s.json")
    monkeypatch.setenv("METAAT_HMAC_KEY", "k2")
    state.save()  # re-signed with k2: valid for k2 only
    monkeypatch.setenv("METAAT_HMAC_KEY", "k1")
    with pytest.raises(ValueError, match="signed with another key"):
        read_state(tmp_path / "s.json")
    monkeypatch.delenv("METAAT_HMAC_KEY")
    assert read_state(tmp_path / "s.json")["clean"] == "0101"  # without a key: the sha256 still guards accidents


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong-size", r"expects inputs of shape \(1, 8, 8\) but the data has \(1, 12, 12\)"),
        ("tuple-output", r"one tensor of logits; it returned tuple"),
        ("3d-output", r"logits of shape \(batch, 10\).*\(2, 10, 1\)"),
        ("empty", r"no training data.*0 examples"),
    ],
)
def test_fit_refuses_data_and_models_that_cannot_train_before_writing_anything(
    case: str, message: str, tmp_path: Path
) -> None:
    import metaat.defenses as defenses
    from metaat.train import TrainConfig, fit

    x, y = data.load("synthetic", "train", n=8)
    model: nn.Module = {
        "wrong-size": lambda: models.create("mlp", 10, 1, 8, hidden=8),
        "tuple-output": lambda: _Wrapped("tuple", 10, 1, 12),
        "3d-output": lambda: _Wrapped("3d", 10, 1, 12),
        "empty": lambda: models.create("mlp", 10, 1, 12, hidden=8),
    }[case]()
    if case == "empty":
        x, y = x[:0], y[:0]
    cfg = TrainConfig(data="synthetic", model="mlp", defense="standard", epochs=1, eval_n=0, threads=1)
    with pytest.raises(ValueError, match=message):
        fit(
            model,
            defenses.create("standard", list(cfg.threats)),
            x,
            y,
            cfg,
            tmp_path / "run",
            quiet=True,
            num_classes=10,
        )
    assert not (tmp_path / "run").exists()


def test_a_signed_set_is_verified_with_the_key_and_still_read_without_it(world: Path) -> None:
    args = ["attack", "--model", str(world / "model"), "--transfer", str(world / "signed.safetensors"), "--json"]
    assert CliRunner().invoke(cli.app, args, env={"METAAT_HMAC_KEY": "secret"}).exit_code == 0
    other = CliRunner().invoke(cli.app, args, env={"METAAT_HMAC_KEY": "another"})
    assert other.exit_code == 2 and "signed with another key" in other.stderr
    assert CliRunner().invoke(cli.app, args, env={"METAAT_HMAC_KEY": ""}).exit_code == 0  # no key: sha256 only


def test_save_replaces_an_existing_file_only_with_overwrite(world: Path, tmp_path: Path) -> None:
    target = tmp_path / "adv.safetensors"
    target.write_bytes(b"old")
    args = attack("model", "--attack", "fgsm", "--save", str(target))(world)
    assert CliRunner().invoke(cli.app, args).exit_code == 2 and target.read_bytes() == b"old"
    assert CliRunner().invoke(cli.app, [*args, "--overwrite"]).exit_code == 0
    assert target.read_bytes() != b"old"


def test_meta_pretrain_replaces_an_attacker_only_with_overwrite_and_keeps_a_foreign_folder_with_force(
    world: Path, tmp_path: Path
) -> None:
    from metaat.meta.io import load_generator

    out, notes = tmp_path / "attacker", tmp_path / "notes"
    shutil.copytree(world / "notes", notes)
    assert CliRunner().invoke(cli.app, meta("--out", str(out))(world)).exit_code == 0
    first = (out / "generator.safetensors").read_bytes()
    again = CliRunner().invoke(cli.app, meta("--out", str(out), "--seed", "1")(world))
    assert again.exit_code == 2 and (out / "generator.safetensors").read_bytes() == first
    replaced = CliRunner().invoke(cli.app, meta("--out", str(out), "--seed", "1", "--overwrite")(world))
    assert replaced.exit_code == 0, replaced.output
    assert (out / "generator.safetensors").read_bytes() != first and load_generator(out) is not None
    forced = CliRunner().invoke(cli.app, meta("--out", str(notes), "--force")(world))
    assert forced.exit_code == 0, forced.output
    assert (notes / "todo.txt").read_text() == "not a run\n" and (notes / "generator.json").is_file()


def test_a_refused_or_failed_start_leaves_no_folder_and_no_lock(tmp_path: Path) -> None:
    from metaat.runtime import LOCK_FILE, owned_folder

    with pytest.raises(ZeroDivisionError), owned_folder(tmp_path / "new", written=lambda f: False):
        raise ZeroDivisionError
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError), owned_folder(tmp_path / "kept", written=lambda f: False):
        raise ValueError("refused")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / LOCK_FILE).exists()
    with owned_folder(tmp_path / "held", written=lambda f: True), pytest.raises(FolderInUseError, match="pid"):
        FolderLock(tmp_path / "held").acquire()  # a second holder is refused at once
