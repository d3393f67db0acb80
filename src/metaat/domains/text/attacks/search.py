"""What every text attack shares: the edit space of a threat, batched scoring, the base class,
and the worst case over several attacks.

The text attacks follow metaat's attack contract (``attack(model, ids, y) -> adv_ids``; the model is
passed at call time; the input is never modified; eval mode and no parameter gradients while
attacking; randomness from an explicit ``torch.Generator``; the result lies in the threat's set).
They minimise the model's probability of the true class and stop on an example as soon as its
prediction is wrong. A *query* is one text scored by the model (one row of a forward pass); a
gradient ranking costs one forward and one backward pass, counted as one query.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from metaat.attacks.base import Attack, AttackConfig, attack_mode
from metaat.domains.text.space import TextSpace, active_space
from metaat.domains.text.threats import typo_distance, typo_eligible, typo_variants
from metaat.runtime import make_generator
from metaat.threats import ThreatModel

TEXT_KINDS = ("syn", "nbr", "typo")


class EditSpace:
    """The edits ``syn:k`` / ``nbr:k`` / ``typo:k`` allow, one position at a time, and their cost."""

    def __init__(self, threat: ThreatModel, space: TextSpace) -> None:
        if threat.norm not in TEXT_KINDS:
            raise ValueError(f"text attacks take syn:k, nbr:k or typo:k threats; got {threat}")
        self.kind = threat.norm
        self.budget = int(threat.eps)
        self.space = space
        self._variants: dict[int, tuple[int, ...]] = {}
        self._costs: dict[tuple[int, int], float] = {}

    def candidates(self, original: int, current: int) -> tuple[int, ...]:
        """Ids that may stand at a position holding ``current`` whose clean id is ``original``."""
        if self.kind in ("syn", "nbr"):
            table = self.space.substitutes(original) if self.kind == "syn" else self.space.neighbours(original)
            return tuple(int(s) for s in table if int(s) != current)
        if original in (0, 1) or not typo_eligible(self.space.vocab.word(original)):
            return ()
        found = self._variants.get(current)
        if found is None:
            vocab = self.space.vocab
            found = tuple(vocab.id(w) for w in typo_variants(vocab.word(current)))
            self._variants[current] = found
        return tuple(c for c in found if c != original)

    def position_cost(self, original: int, new: int) -> float:
        """What changing ``original`` to ``new`` costs (1 per synonym; character edits per typo);
        memoised per pair, since the searches ask for the same pairs many times."""
        if original == new:
            return 0.0
        found = self._costs.get((original, new))
        if found is None:
            found = self._pair_cost(original, new)
            self._costs[(original, new)] = found
        return found

    def _pair_cost(self, original: int, new: int) -> float:
        if self.kind in ("syn", "nbr"):
            return 1.0 if self.space.allowed(original, new, self.kind) else math.inf
        vocab = self.space.vocab
        if new in (0, 1):
            return math.inf
        return typo_distance(vocab.word(original), vocab.word(new))

    def cost(self, original: np.ndarray, adv: np.ndarray) -> float:
        """Total cost of one adversarial row against its clean row (summed over changed positions
        in position order)."""
        if original.shape != adv.shape:
            raise ValueError(f"rows differ in length: {original.shape} vs {adv.shape}")
        changed = np.flatnonzero(original != adv).tolist()
        return float(sum(self.position_cost(int(original[t]), int(adv[t])) for t in changed))

    def editable(self, original: np.ndarray) -> list[int]:
        """Positions with at least one candidate."""
        return [t for t, tok in enumerate(original.tolist()) if tok != 0 and self.candidates(tok, tok)]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def true_class_prob(model: nn.Module, ids: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``p(y | ids)`` for each row ``(N,)`` (no gradients), in chunks of ``batch_size``."""
    out = []
    dev = model_device(model)
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            logits = model(ids[start : start + batch_size].to(dev)).cpu()
            out.append(logits.softmax(dim=1).gather(1, y[start : start + batch_size, None]).squeeze(1))
    return torch.cat(out) if out else torch.zeros(0)


def score_rows(model: nn.Module, rows: torch.Tensor, label: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p(label) (N,), prediction != label (N,))`` for rows ``(N, L)`` of one example's variants."""
    probs, wrong = [], []
    dev = model_device(model)
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            logits = model(rows[start : start + batch_size].to(dev)).cpu()
            probs.append(logits.softmax(dim=1)[:, label])
            wrong.append(logits.argmax(dim=1) != label)
    return torch.cat(probs), torch.cat(wrong)


def predicts(model: nn.Module, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes ``(N,)``."""
    out = []
    dev = model_device(model)
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            out.append(model(ids[start : start + batch_size].to(dev)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def deletion_importance(
    model: nn.Module, row: torch.Tensor, label: int, positions: list[int], batch: int
) -> torch.Tensor:
    """Drop in ``p(label)`` when each position is deleted (later tokens shift left), ``(len(positions),)``."""
    if not positions:
        return torch.zeros(0)
    variants = []
    for t in positions:
        variants.append(torch.cat([row[:t], row[t + 1 :], row.new_zeros(1)]))
    probs = true_class_prob(model, torch.stack(variants), torch.full((len(positions),), label), batch)
    base = true_class_prob(model, row[None], torch.tensor([label]), batch)
    return base - probs


def gradient_importance(model: nn.Module, row: torch.Tensor, label: int, positions: list[int]) -> torch.Tensor:
    """L2 norm of the loss gradient with respect to each position's embedding, ``(len(positions),)``."""
    dev = model_device(model)
    ids = row[None].to(dev)
    with torch.enable_grad():
        emb = model.embed(ids).detach().requires_grad_(True)  # type: ignore[operator]
        logits = model.forward_embedded(emb, ids)  # type: ignore[operator]
        loss = nn.functional.cross_entropy(logits, torch.tensor([label], device=dev))
        (grad,) = torch.autograd.grad(loss, emb)
    return grad[0].norm(dim=-1).cpu()[positions]


@dataclass(frozen=True)
class TextAttackConfig(AttackConfig):
    """Options every text attack has (``batch_size``: rows per forward pass when scoring candidates)."""

    batch_size: int | None = 512


@dataclass
class AttackResult:
    """Adversarial ids ``(B, L)`` and the queries spent on each example ``(B,)``."""

    adv: torch.Tensor
    queries: torch.Tensor


class TextAttack(Attack):
    """Base class of the text attacks: validation, attack mode, the edit space, query counting.

    ``space`` (a :class:`~metaat.domains.text.space.TextSpace`) defaults to the active one.
    """

    name: ClassVar[str] = "text-attack"
    config_class: ClassVar[type[AttackConfig]] = TextAttackConfig

    def __init__(self, threat: str | ThreatModel, space: TextSpace | None = None, **options: Any) -> None:
        super().__init__(threat, **options)
        if self.threat.norm not in TEXT_KINDS:
            raise ValueError(f"{self.name} takes syn:k, nbr:k or typo:k threats; got {self.threat}")
        self.space = space

    def _check(self, ids: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 2:
            raise ValueError(f"text attacks take int64 token ids (B, L); got {getattr(ids, 'dtype', type(ids))}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (ids.shape[0],):
            raise ValueError(f"y must be int64 labels of shape ({ids.shape[0]},)")

    def run(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> AttackResult:
        """Attack and also return the number of queries per example."""
        self._check(ids, y)
        gen = generator if generator is not None else make_generator(self.config.seed)
        edits = EditSpace(self.threat, self.space or active_space())
        clean = ids.detach().cpu()
        with attack_mode(model):
            adv, queries = self.search(model, clean.clone(), y.detach().cpu(), edits, gen)
        return AttackResult(adv.to(ids.device), queries)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.run(model, x, y, generator=generator).adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.run(model, x, y, generator=generator).adv

    @property
    def rows(self) -> int:
        return self.config.batch_size or 512

    @abstractmethod
    def search(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, edits: EditSpace, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(adv ids, queries per example)`` for CPU ids; the model is already in attack mode."""


@dataclass
class WorstCase:
    """Per-example result of :func:`worst_case`."""

    robust: torch.Tensor
    """``(B,)`` bool: correct on the clean text and under every attack."""
    adv: torch.Tensor
    """``(B, L)``: the first adversarial text found (the clean one where none was)."""
    queries: torch.Tensor
    """``(B,)``: queries spent on each example, all attacks together (clean prediction included)."""
    broken_by: list[str]
    """Per example, the attack that broke it first ('' when robust, 'clean' when misclassified clean)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "robust_accuracy": float(self.robust.float().mean()) if len(self.robust) else 0.0,
            "queries_total": int(self.queries.sum()),
            "queries_per_example": float(self.queries.float().mean()) if len(self.queries) else 0.0,
        }


def worst_case(
    model: nn.Module,
    ids: torch.Tensor,
    y: torch.Tensor,
    threat: str | ThreatModel,
    attacks: list[TextAttack],
    *,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> WorstCase:
    """Robustness per example as the AND over ``attacks`` (each one only attacks the examples still
    robust after the ones before it, AutoAttack's principle), and the total query count."""
    threat = ThreatModel.parse(threat)
    for attack in attacks:
        if attack.threat != threat:
            raise ValueError(f"attack {attack!r} is configured for {attack.threat}, not {threat}")
    gen = generator if generator is not None else make_generator(0)
    ids = ids.detach().cpu()
    y = y.detach().cpu()
    with attack_mode(model):
        robust = predicts(model, ids, batch_size) == y
    adv = ids.clone()
    queries = torch.ones(len(y), dtype=torch.long)
    broken = ["" if r else "clean" for r in robust.tolist()]
    for attack in attacks:
        todo = robust.nonzero().flatten()
        if len(todo) == 0:
            break
        result = attack.run(model, ids[todo], y[todo], generator=gen)
        queries[todo] += result.queries
        with attack_mode(model):
            fooled = predicts(model, result.adv, batch_size) != y[todo]
        for i, hit in zip(todo.tolist(), fooled.tolist(), strict=True):
            if hit:
                broken[i] = attack.name
        adv[todo[fooled]] = result.adv[fooled]
        robust[todo[fooled]] = False
    return WorstCase(robust, adv, queries, broken)


def options_of(attack: TextAttack) -> dict[str, Any]:
    """The attack's configuration as plain data (for reports)."""
    out = dataclasses.asdict(attack.config)
    out["threat"] = str(attack.threat)
    return {"name": attack.name, **out}
