"""Exhaustive search over every single edit (threats with k = 1).

For ``syn:1`` and ``typo:1`` the set is small enough to enumerate: every editable position times
every allowed replacement there. The attack scores all of them and returns the one with the lowest
true-class probability, so an example it leaves correctly classified is *verified* robust in that
set (the model's prediction on every member was checked). Query budget: ``Σ_t |candidates_t|``
(+1 for the clean text) per example.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from metaat.attacks.base import ATTACKS
from metaat.domains.text.attacks.search import EditSpace, TextAttack, score_rows
from metaat.domains.text.space import TextSpace
from metaat.threats import ThreatModel


@ATTACKS.register("text-exhaustive", help="Every single edit scored (text; syn:1, typo:1): a verified result")
class ExhaustiveAttack(TextAttack):
    name: ClassVar[str] = "text-exhaustive"

    def __init__(self, threat: str | ThreatModel, space: TextSpace | None = None, **options: Any) -> None:
        super().__init__(threat, space, **options)
        if int(self.threat.eps) != 1:
            raise ValueError(f"text-exhaustive enumerates k = 1 only; got {self.threat}")

    def search(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, edits: EditSpace, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        adv = ids.clone()
        queries = torch.zeros(len(y), dtype=torch.long)
        for b in range(len(y)):
            orig, label = ids[b], int(y[b])
            rows = [orig]
            for t in edits.editable(orig.numpy()):
                for c in edits.candidates(int(orig[t]), int(orig[t])):
                    row = orig.clone()
                    row[t] = c
                    rows.append(row)
            batch = torch.stack(rows)
            p, fooled = score_rows(model, batch, label, self.rows)
            queries[b] += len(rows)
            if bool(fooled[0]):
                continue
            # prefer a row that flips the prediction, then the lowest true-class probability
            key = p - 2.0 * fooled.to(p.dtype)
            adv[b] = batch[int(key.argmin())]
        return adv, queries
