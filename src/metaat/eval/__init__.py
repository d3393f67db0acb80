"""Evaluation users can trust: worst-case ensembles over threats, the reference AutoAttack,
unseen attacks, gradient-masking checks, and reports (JSON / Markdown / HTML) from one dict.

>>> from metaat.eval import evaluate, SUITES
>>> SUITES.available()
['apgd', 'quick', 'standard']
"""

from metaat.eval.checks import CheckConfig, CheckResult, check_transfer, run_checks
from metaat.eval.evaluate import EVAL_THREATS, EvalResult, evaluate
from metaat.eval.suites import SUITES, QuickSuite, ReferenceSuite, Suite, make_suite
from metaat.eval.unseen import UnseenConfig, run_unseen

__all__ = [
    "EVAL_THREATS",
    "SUITES",
    "CheckConfig",
    "CheckResult",
    "EvalResult",
    "QuickSuite",
    "ReferenceSuite",
    "Suite",
    "UnseenConfig",
    "check_transfer",
    "evaluate",
    "make_suite",
    "run_checks",
    "run_unseen",
]
