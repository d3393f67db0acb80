"""The package version (kept apart so that low layers can read it without importing ``metaat``)."""

__version__ = "0.1.0"
