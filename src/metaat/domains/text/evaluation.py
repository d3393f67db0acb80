"""The text domain's part of every evaluation of token ids ``(B, L)``: examples are shown as words
(the changed ones marked by the report), and the held-out substitution family ``nbr:2`` — vector
neighbours that are not WordNet synonyms, never trained on — joins the unseen section, scored by the
worst case over the text attacks (:func:`metaat.domains.text.attacks.worst_case`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaat.domains.text.attacks import default_attacks, worst_case
from metaat.domains.text.space import active_space
from metaat.domains.text.vocab import PAD
from metaat.eval.plots import EXAMPLE_VIEWS
from metaat.eval.unseen import register_unseen

UNSEEN_THREATS: tuple[str, ...] = ("nbr:2",)
"""The held-out families evaluated as unseen attacks (never a training threat)."""


def text_view(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, Any]:
    """One example ``(L,)`` as its words, clean and adversarial (padding dropped); as ids where no
    text vocabulary is active (token ids from outside metaat's text datasets)."""
    try:
        decode = active_space().vocab.decode
    except RuntimeError:

        def decode(ids: Any) -> list[str]:
            return [str(i) for i in ids]

    def words(ids: torch.Tensor) -> list[str]:
        return list(decode(int(i) for i in ids.tolist() if int(i) != PAD))

    return {"tokens_clean": words(x), "tokens_adversarial": words(x_adv)}


def text_unseen(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, seed: int, chunk: int
) -> dict[str, dict[str, Any]]:
    """Worst-case accuracy under each held-out family, on the clean-correct points, with the mean
    number of model queries per point."""
    out: dict[str, dict[str, Any]] = {}
    for threat in UNSEEN_THREATS:
        result = worst_case(model, x, y, threat, default_attacks(threat), generator=torch.Generator().manual_seed(seed))
        robust = result.robust.to(clean.device) & clean
        out[threat] = {
            "label": f"{threat}: vector neighbours that are not synonyms (held out of training)",
            "accuracy": float(robust.float().mean()) if robust.numel() else float("nan"),
            "queries": round(float(result.queries.float().mean()), 1) if result.queries.numel() else 0,
        }
    return out


EXAMPLE_VIEWS.setdefault(0, text_view)
register_unseen(0, "text", text_unseen)
