"""The sensor domain: motion-sensor and other multivariate time series, inputs ``(B, C, T)``.

Importing this package registers its datasets (``watch`` and the UEA/UCR sets), threat kinds
(``spike:k,a``, ``drift:b``), models and attacks into the core registries. Data files are read
lazily (``make data`` fetches them), so the import works without them. See ``docs/domains/sensors.md``.
"""

from metaat.domains.sensors import data, models, threats

__all__ = ["data", "models", "threats"]
