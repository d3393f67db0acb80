"""Beam search over edits (Ebrahimi et al., ACL 2018, "HotFlip", beam variant; also TextAttack's
beam search): keep the ``beam_width`` texts with the lowest true-class probability; each step
expands every beam by every allowed single edit at the ``positions`` most important positions
(deletion ranking) and keeps the best. Runs ``k`` steps for ``syn:k`` / ``nbr:k`` / ``typo:k``, stops at
the first flip.

Query budget per example: ``1 + P + Σ_steps Σ_beams Σ_positions |candidates|`` with ``P`` the
editable positions ranked; at most ``1 + P + k · beam_width · positions · C`` with ``C`` the largest
candidate set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, AttackConfig
from metaat.domains.text.attacks.search import (
    EditSpace,
    TextAttack,
    TextAttackConfig,
    deletion_importance,
    score_rows,
)


@dataclass(frozen=True)
class BeamConfig(TextAttackConfig):
    beam_width: int = 4
    positions: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_width < 1 or self.positions < 1:
            raise ValueError(f"beam_width and positions must be >= 1; got {self.beam_width}, {self.positions}")


@ATTACKS.register("text-beam", help="Beam search over word edits (text; syn:k, nbr:k, typo:k)")
class BeamAttack(TextAttack):
    name: ClassVar[str] = "text-beam"
    config_class: ClassVar[type[AttackConfig]] = BeamConfig

    def search(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, edits: EditSpace, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        assert isinstance(config, BeamConfig)
        adv = ids.clone()
        queries = torch.zeros(len(y), dtype=torch.long)
        for b in range(len(y)):
            orig, label = ids[b], int(y[b])
            p0, wrong = score_rows(model, orig[None], label, self.rows)
            queries[b] += 1
            if bool(wrong[0]):
                continue
            editable = edits.editable(orig.numpy())
            importance = deletion_importance(model, orig, label, editable, self.rows)
            queries[b] += len(editable)
            ranked = sorted(range(len(editable)), key=lambda i: (-float(importance[i]), i))
            positions = [editable[i] for i in ranked[: config.positions]]
            beams = [orig]
            best, best_p = orig, float(p0[0])
            for _ in range(edits.budget):
                children: dict[tuple[int, ...], torch.Tensor] = {}
                for beam in beams:
                    for t in positions:
                        for c in edits.candidates(int(orig[t]), int(beam[t])):
                            row = beam.clone()
                            row[t] = c
                            key = tuple(row.tolist())
                            if key not in children and edits.cost(orig.numpy(), row.numpy()) <= edits.budget:
                                children[key] = row
                if not children:
                    break
                batch = torch.stack(list(children.values()))
                p, fooled = score_rows(model, batch, label, self.rows)
                queries[b] += len(batch)
                order = torch.argsort(p - 2.0 * fooled.to(p.dtype), stable=True)
                if float(p[order[0]]) < best_p or bool(fooled[order[0]]):
                    best, best_p = batch[order[0]], float(p[order[0]])
                if bool(fooled[order[0]]):
                    break
                beams = [batch[i] for i in order[: config.beam_width].tolist()]
            adv[b] = best
        return adv, queries
