"""Text defenses (registered in ``metaat.defenses.DEFENSES``): training objectives that need the text
models' embedding entry points (``embed`` / ``forward_embedded``) or the substitution sets.

The multi-threat defenses of the core (``sat``, ``avg``, ``max``) train on ``syn:k`` / ``typo:k``
through the threat kind's training attack (:mod:`metaat.domains.text.flips`).
"""

from __future__ import annotations

from metaat.domains.text.defenses import a2t, freelb, ibp, learned  # noqa: F401  (registers them)
