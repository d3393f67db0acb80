"""The sensor domain: motion-sensor and other multivariate time series, inputs ``(B, C, T)``.

Importing this package registers its datasets (``watch`` and the UEA/UCR sets), threat kinds
(``spike:k,a``, ``drift:b``), models (``fcn``, ``resnet1d``, ``inception-time``) and attacks
(``spike-search``, ``drift-search``) into the core registries; :mod:`.unseen` holds the unseen
suite. Data files are read lazily (``make data`` fetches them), so the import works without them.
See ``docs/domains/sensors.md``.
"""

from metaat.domains.sensors import augment, data, drift_attack, evaluation, models, spike_attack, threats, unseen

__all__ = ["augment", "data", "drift_attack", "evaluation", "models", "spike_attack", "threats", "unseen"]
