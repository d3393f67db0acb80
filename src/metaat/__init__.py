"""metaat: meta adversarial training, the attacks, and an evaluation you can trust."""

__version__ = "0.1.0"
