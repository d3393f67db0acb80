"""Exhaustive search over every single edit.

For ``syn:1``, ``nbr:1`` and ``typo:1`` the set is small enough to enumerate: every editable position
times every allowed replacement there. The attack scores all of them and returns the one with the
lowest true-class probability, so for k = 1 an example it leaves correctly classified is *verified*
robust in that set (the model's prediction on every member was checked). For k > 1 it still scores
every single edit (a subset of the set: no longer a verification). Query budget:
``Σ_t |candidates_t|`` (+1 for the clean text) per example.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from metaat.attacks.base import ATTACKS
from metaat.domains.text.attacks.search import EditSpace, TextAttack, score_rows


@ATTACKS.register("text-exhaustive", help="Every single edit scored (text): a verified result for k = 1")
class ExhaustiveAttack(TextAttack):
    name: ClassVar[str] = "text-exhaustive"

    @property
    def complete(self) -> bool:
        """True when the search covers the whole set (k = 1): a robust point is then verified."""
        return int(self.threat.eps) == 1

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
