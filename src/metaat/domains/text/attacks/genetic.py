"""Genetic (population) attack: Alzantot et al. (EMNLP 2018), "Generating Natural Language
Adversarial Examples".

A population of ``population`` perturbed texts evolves for at most ``generations`` generations:

* ``perturb(text)``: pick a random editable position whose edit keeps the text in the set, score
  every allowed edit there and keep the one with the lowest true-class probability;
* fitness = ``1 - p(y)``; the fittest member survives unchanged (elitism); each other child takes
  every position from one of two parents (drawn with probability ``softmax(fitness / temperature)``),
  is repaired into the budget (surplus changed positions reverted to the clean word, at random), then
  perturbed;
* stop at the first member that is misclassified, or when ``max_queries`` is spent.

The language-model filter of the paper is left out (no language model here); the set itself
(synonyms or typos) is what keeps the text valid. Query budget: no mutation starts once
``max_queries`` texts are scored (default 5,000; each distinct text is scored once), so an example
costs at most ``max_queries`` plus one position's candidates plus one population.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, AttackConfig
from metaat.domains.text.attacks.search import EditSpace, TextAttack, TextAttackConfig, score_rows


@dataclass(frozen=True)
class GeneticConfig(TextAttackConfig):
    population: int = 20
    generations: int = 20
    temperature: float = 0.3
    max_queries: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.population < 2 or self.generations < 1 or self.max_queries < 1 or self.temperature <= 0:
            raise ValueError("population >= 2, generations >= 1, max_queries >= 1 and temperature > 0 are required")


class _Scorer:
    """Scores texts of one example, each distinct text once, counting queries."""

    def __init__(self, model: nn.Module, label: int, rows: int) -> None:
        self.model, self.label, self.rows = model, label, rows
        self.cache: dict[tuple[int, ...], tuple[float, bool]] = {}
        self.queries = 0

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [tuple(r.tolist()) for r in batch]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        fresh_keys: dict[tuple[int, ...], int] = {}
        for i in todo:
            fresh_keys.setdefault(keys[i], i)
        if fresh_keys:
            idx = list(fresh_keys.values())
            p, wrong = score_rows(self.model, batch[idx], self.label, self.rows)
            self.queries += len(idx)
            for j, i in enumerate(idx):
                self.cache[keys[i]] = (float(p[j]), bool(wrong[j]))
        p_all = torch.tensor([self.cache[k][0] for k in keys])
        w_all = torch.tensor([self.cache[k][1] for k in keys])
        return p_all, w_all


def _perturb(
    row: torch.Tensor,
    orig: torch.Tensor,
    edits: EditSpace,
    positions: list[int],
    score: _Scorer,
    gen: torch.Generator,
    limit: int,
) -> torch.Tensor:
    """One mutation: the best allowed edit at a random position that has one (none once ``limit``
    queries are spent)."""
    if score.queries >= limit:
        return row
    for t in torch.randperm(len(positions), generator=gen).tolist():
        pos = positions[t]
        rows = []
        for c in edits.candidates(int(orig[pos]), int(row[pos])):
            child = row.clone()
            child[pos] = c
            if edits.cost(orig.numpy(), child.numpy()) <= edits.budget:
                rows.append(child)
        if rows:
            batch = torch.stack(rows)
            p, fooled = score(batch)
            return batch[int((p - 2.0 * fooled.to(p.dtype)).argmin())]
    return row


@ATTACKS.register("text-genetic", help="Genetic population attack, Alzantot et al. 2018 (text; syn:k, nbr:k, typo:k)")
class GeneticAttack(TextAttack):
    name: ClassVar[str] = "text-genetic"
    config_class: ClassVar[type[AttackConfig]] = GeneticConfig

    def search(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, edits: EditSpace, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        assert isinstance(config, GeneticConfig)
        adv = ids.clone()
        queries = torch.zeros(len(y), dtype=torch.long)
        for b in range(len(y)):
            orig, label = ids[b], int(y[b])
            score = _Scorer(model, label, self.rows)
            limit = config.max_queries
            _, wrong = score(orig[None])
            positions = edits.editable(orig.numpy())
            if bool(wrong[0]) or not positions:
                queries[b] = score.queries
                continue
            pop = torch.stack(
                [_perturb(orig, orig, edits, positions, score, generator, limit) for _ in range(config.population)]
            )
            best = orig
            for _ in range(config.generations):
                p, fooled = score(pop)
                elite = int((p - 2.0 * fooled.to(p.dtype)).argmin())
                best = pop[elite]
                if bool(fooled[elite]) or score.queries >= config.max_queries:
                    break
                weights = ((1.0 - p) / config.temperature).softmax(dim=0)
                children = [pop[elite]]
                for _ in range(config.population - 1):
                    a, c = torch.multinomial(weights, 2, replacement=True, generator=generator).tolist()
                    take = torch.rand(orig.shape[0], generator=generator) < 0.5
                    child = torch.where(take, pop[a], pop[c])
                    child = _revert(child, orig, edits, generator)
                    children.append(_perturb(child, orig, edits, positions, score, generator, limit))
                pop = torch.stack(children)
            adv[b] = best
            queries[b] = score.queries
        return adv, queries


def _revert(child: torch.Tensor, orig: torch.Tensor, edits: EditSpace, gen: torch.Generator) -> torch.Tensor:
    """Revert random changed positions to the clean word until the child is within the budget."""
    child = child.clone()
    changed = (child != orig).nonzero().flatten()
    order = changed[torch.randperm(len(changed), generator=gen)].tolist()
    while order and edits.cost(orig.numpy(), child.numpy()) > edits.budget:
        t = order.pop()
        child[t] = orig[t]
    return child
