"""Text defenses: training objectives that need the text models' embedding entry points or the
substitution sets — ``a2t``, ``freelb`` and ``ibp`` (registered in ``metaat.defenses.DEFENSES``) and the
text variants of ``metaat`` and ``l2l`` (in ``DISCRETE_VARIANTS``: ``defenses.create("metaat",
["syn:2", "typo:2"])`` builds the learned-substitution recipe).

The multi-threat defenses of the core (``sat``, ``avg``, ``max``) train on ``syn:k`` / ``typo:k``
through the threat kind's training attack (:mod:`metaat.domains.text.flips`).
"""

from __future__ import annotations

from metaat.domains.text.defenses import a2t, freelb, ibp, learned  # noqa: F401  (registers them)
