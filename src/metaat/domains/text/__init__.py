"""The text domain: sentiment and news classifiers under word-substitution and typo attacks.

Importing it registers the datasets ``mr`` and ``bbc-news``, the threat kinds ``syn:k``, ``typo:k``
and ``emb:eps``, the text models and the text attacks. No data file is read at import; see
``docs/domains/text.md`` and ``python -m metaat.domains.text.fetch``.
"""

from __future__ import annotations

from metaat.domains.text import attacks, data, defenses, evaluation, models, threats  # noqa: F401  (registers everything)
