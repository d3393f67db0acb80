"""Task files: the distribution a learned attacker is meta-pretrained on, and the tasks kept out of it.

A *task* is one (dataset, target architecture, target defense, training stage, threat): the attacker
must perturb that dataset's inputs against a model of that architecture, trained by that defense for
that many steps, within that threat's set. A task file (YAML, read with ``yaml.safe_load``) names the
axes whose product is the training distribution, and an explicit ``heldout`` part — datasets,
architectures, defenses and threats (budgets) that no training task uses::

    name: sensors
    domain: sensors            # every dataset must belong to it; models must take its input rank
    train:
      datasets: [watch, basic-motions, japanese-vowels]
      models: [fcn-small, resnet1d]
      defenses: [standard, fast]   # how targets are trained: plain CE, or FGSM+random start on a random threat
      stages: [30, 150]            # target-training steps at which a frozen copy becomes a task
      threats: [linf:0.5, l2:3, "spike:5,2"]  # quote a threat holding a comma
    heldout:
      datasets: [gun-point]
      models: [inception-time]
      threats: [linf:1]
    meta: {algorithm: reptile, meta_iters: 300, ...}   # optional; see MetaSettings

Held-out tasks vary one held-out axis at a time (the other axes at their first training value, the
last training stage) and add one task with every held-out value at once, so each unseen factor is
measured alone and together. Every error is one line; an unknown name lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from pathlib import Path
from typing import Any

import yaml

from metaat.threats import ThreatModel, parse_threats

DEFENSES = ("standard", "fast")
ALGORITHMS = ("reptile", "fomaml")
ADAPT_STEPS = (0, 1, 5)


@dataclasses.dataclass(frozen=True)
class TaskAxes:
    """Values of each task axis (``stages`` only in ``train``; held-out tasks use its last stage)."""

    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    defenses: tuple[str, ...] = ()
    stages: tuple[int, ...] = ()
    threats: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MetaSettings:
    """How the attacker is meta-trained and measured (all optional in the file)."""

    algorithm: str = "reptile"
    meta_iters: int = 200
    inner_steps: int = 4
    inner_lr: float = 1e-3
    meta_lr: float = 0.5
    batch_size: int = 64
    attacker_steps: int = 1
    random_start: bool = True
    width: int = 16
    depth: int = 3
    target_lr: float = 1e-3
    n: int = 2000  # training points per dataset (targets and meta-batches)
    eval_n: int = 200  # evaluation points per held-out task
    eval_split: str = "val"  # "train" carves the first eval_n points out of the training split
    adapt_steps: tuple[int, ...] = ADAPT_STEPS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"meta.algorithm must be one of {', '.join(ALGORITHMS)}; got {self.algorithm!r}")
        for name in ("meta_iters", "inner_steps", "batch_size", "attacker_steps", "width", "n", "eval_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"meta.{name} must be an integer >= 1, got {value!r}")
        if self.depth < 2:
            raise ValueError(f"meta.depth must be >= 2, got {self.depth}")
        for name in ("inner_lr", "meta_lr", "target_lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"meta.{name} must be a finite number > 0, got {value!r}")
        if self.eval_split not in ("train", "val", "test"):
            raise ValueError(f"meta.eval_split must be one of train, val, test; got {self.eval_split!r}")
        if not self.adapt_steps or any(not isinstance(k, int) or k < 0 for k in self.adapt_steps):
            raise ValueError(f"meta.adapt_steps must be integers >= 0, got {list(self.adapt_steps)}")


@dataclasses.dataclass(frozen=True, order=True)
class TaskId:
    """One task: the target (dataset, architecture, defense, stage) and the threat."""

    dataset: str
    model: str
    defense: str
    stage: int
    threat: str

    @property
    def target(self) -> tuple[str, str, str]:
        return (self.dataset, self.model, self.defense)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.model}/{self.defense}@{self.stage}/{self.threat}"


@dataclasses.dataclass(frozen=True)
class TaskFile:
    name: str
    domain: str
    train: TaskAxes
    heldout: TaskAxes
    meta: MetaSettings = MetaSettings()

    def train_tasks(self) -> list[TaskId]:
        """Every training task: the product of the training axes."""
        t = self.train
        product = itertools.product(t.datasets, t.models, t.defenses, t.stages, t.threats)
        return [TaskId(*values) for values in product]

    def heldout_tasks(self) -> list[TaskId]:
        """One held-out axis at a time (the others at their first training value), then all at once."""
        t, h = self.train, self.heldout
        base = TaskId(t.datasets[0], t.models[0], t.defenses[0], t.stages[-1], t.threats[0])
        tasks: list[TaskId] = []
        for axis, field in (
            ("datasets", "dataset"),
            ("models", "model"),
            ("defenses", "defense"),
            ("threats", "threat"),
        ):
            tasks += [dataclasses.replace(base, **{field: value}) for value in getattr(h, axis)]
        corner = {
            f: getattr(h, a)[0]
            for a, f in (("datasets", "dataset"), ("models", "model"), ("defenses", "defense"), ("threats", "threat"))
            if getattr(h, a)
        }
        if len(corner) > 1:
            tasks.append(dataclasses.replace(base, **corner))
        return list(dict.fromkeys(tasks))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list):
        raise ValueError(f"{where} must be a list, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ValueError(f"{where} must hold names or numbers, got {item!r}")
        out.append(str(item))
    if len(set(out)) != len(out):
        raise ValueError(f"{where} lists a value twice: {out}")
    return tuple(out)


def _check_keys(node: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise ValueError(f"{where} must be a mapping, got {type(node).__name__}")
    unknown = sorted(str(k) for k in node if k not in valid)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    return node


def _axes(node: Any, where: str, heldout: bool) -> TaskAxes:
    keys = ("datasets", "models", "defenses", "threats") + (() if heldout else ("stages",))
    node = _check_keys(node if node is not None else {}, keys, where)
    stages: tuple[int, ...] = ()
    if not heldout:
        raw = node.get("stages")
        if not isinstance(raw, list) or not raw or any(isinstance(s, bool) or not isinstance(s, int) for s in raw):
            raise ValueError(f"{where}.stages must be a non-empty list of integers, got {raw!r}")
        stages = tuple(raw)
        if any(s < 0 for s in stages) or list(stages) != sorted(set(stages)):
            raise ValueError(f"{where}.stages must be increasing, distinct and >= 0; got {list(stages)}")
    threats = _names(node.get("threats"), f"{where}.threats")
    try:
        threats = (
            tuple(str(t) for t in parse_threats(list(threats))) if threats else ()
        )  # canonical: linf:1.0 == linf:1
    except (ValueError, KeyError) as err:
        raise ValueError(f"{where}.threats: {str(err).splitlines()[0]}") from None
    return TaskAxes(
        datasets=_names(node.get("datasets"), f"{where}.datasets"),
        models=_names(node.get("models"), f"{where}.models"),
        defenses=_names(node.get("defenses"), f"{where}.defenses"),
        stages=stages,
        threats=threats,
    )


def _check_names(tf: TaskFile) -> None:
    """Datasets exist and belong to the domain; models exist and take the domain's input rank."""
    import metaat.data as datasets
    import metaat.models as models
    from metaat.data.base import DOMAIN_RANKS
    from metaat.models.base import MODELS

    if tf.domain not in DOMAIN_RANKS:
        raise ValueError(f"unknown domain {tf.domain!r}; valid domains: {', '.join(DOMAIN_RANKS)}")
    rank = DOMAIN_RANKS[tf.domain]
    for part, axes in (("train", tf.train), ("heldout", tf.heldout)):
        for name in axes.datasets:
            info = datasets.info(name)  # unknown: KeyError listing the valid names
            if info.domain != tf.domain:
                in_domain = [n for n in datasets.available() if datasets.info(n).domain == tf.domain]
                raise ValueError(
                    f"{part}.datasets: {name!r} is a {info.domain} dataset, not {tf.domain}; "
                    f"{tf.domain} datasets: {', '.join(in_domain)}"
                )
        for name in axes.models:
            factory = MODELS.get(name)
            if int(getattr(factory, "input_rank", 2)) != rank:
                fits = [n for n in models.available() if int(getattr(MODELS.get(n), "input_rank", 2)) == rank]
                raise ValueError(
                    f"{part}.models: {name!r} does not take {tf.domain} inputs; use one of {', '.join(fits)}"
                )
        bad = [d for d in axes.defenses if d not in DEFENSES]
        if bad:
            raise ValueError(f"{part}.defenses: unknown {', '.join(bad)}; valid defenses: {', '.join(DEFENSES)}")


def _check_heldout(train: TaskAxes, heldout: TaskAxes) -> None:
    """A held-out value must never appear in training; the held-out part must hold something."""
    for axis in ("datasets", "models", "defenses", "threats"):
        seen = sorted(set(getattr(train, axis)) & set(getattr(heldout, axis)))
        if seen:
            raise ValueError(f"heldout.{axis}: {', '.join(seen)} also in train.{axis}; a held-out task must be unseen")
    if not any(getattr(heldout, a) for a in ("datasets", "models", "defenses", "threats")):
        raise ValueError("heldout must name at least one dataset, model, defense or threat never trained on")


def parse_task_file(raw: Any, source: str = "task file", *, check_names: bool = True) -> TaskFile:
    """A validated :class:`TaskFile` from a parsed YAML mapping (``check_names``: look names up in the registries)."""
    node = _check_keys(raw, ("name", "domain", "train", "heldout", "meta"), source)
    for key in ("name", "domain", "train", "heldout"):
        if key not in node:
            raise ValueError(f"{source}: missing key {key!r}")
    train = _axes(node["train"], "train", heldout=False)
    for axis in ("datasets", "models", "defenses", "threats"):
        if not getattr(train, axis):
            raise ValueError(f"train.{axis} must list at least one value")
    heldout = _axes(node["heldout"], "heldout", heldout=True)
    _check_heldout(train, heldout)
    meta_node = _check_keys(node.get("meta") or {}, tuple(f.name for f in dataclasses.fields(MetaSettings)), "meta")
    if "adapt_steps" in meta_node:
        meta_node = {**meta_node, "adapt_steps": tuple(meta_node["adapt_steps"] or ())}
    try:
        meta = MetaSettings(**meta_node)
    except TypeError as err:
        raise ValueError(f"meta: {err}") from None
    tf = TaskFile(name=str(node["name"]), domain=str(node["domain"]), train=train, heldout=heldout, meta=meta)
    if check_names:
        try:
            _check_names(tf)
        except KeyError as err:
            raise ValueError(str(err.args[0] if err.args else err).splitlines()[0]) from None
    return tf


def load_task_file(path: str | os.PathLike[str], *, check_names: bool = True) -> TaskFile:
    """Read and validate a task file; every problem is a one-line ``ValueError`` naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no task file at {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{p}: not a readable YAML task file ({str(err).splitlines()[0]})") from None
    try:
        return parse_task_file(raw, str(p), check_names=check_names)
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(str(p)) else f"{p}: {message}") from None


def threat_for(text: str, box: tuple[float, float]) -> ThreatModel:
    """The task's threat with the dataset's input box."""
    return ThreatModel.parse(text).with_box(*box)
