"""Threat models and their geometry.

* :mod:`metaat.threats.model` — :class:`ThreatModel` (an Lp ball or a registered domain kind, inside
  the input's box), its text form (``linf:0.1``, ``spike:5,2``), :class:`ThreatKind` and
  :func:`register_threat_kind` for domains, the default image radii;
* :mod:`metaat.threats.sets` — exact projections, random starts, ascent directions and membership,
  on perturbations of any shape ``(B, ...)``.

>>> import metaat.threats as T
>>> T.ThreatModel.parse("l2:1.5")
ThreatModel(norm='l2', eps=1.5)
"""

from metaat.threats.model import (
    DEFAULT_THREATS,
    NORMS,
    UNIT_BOX,
    Norm,
    ThreatKind,
    ThreatModel,
    format_number,
    parse_threats,
    register_threat_kind,
    resolve_threat,
    threat_kinds,
)
from metaat.threats.sets import (
    box_bounds,
    default_step_size,
    in_threat,
    lp_norm,
    project,
    project_l1,
    project_l2,
    project_linf,
    random_init,
    steepest_ascent,
    threat_ascent,
)

__all__ = [
    "DEFAULT_THREATS",
    "NORMS",
    "UNIT_BOX",
    "Norm",
    "ThreatKind",
    "ThreatModel",
    "box_bounds",
    "default_step_size",
    "format_number",
    "in_threat",
    "lp_norm",
    "parse_threats",
    "project",
    "project_l1",
    "project_l2",
    "project_linf",
    "random_init",
    "register_threat_kind",
    "resolve_threat",
    "steepest_ascent",
    "threat_ascent",
    "threat_kinds",
]
