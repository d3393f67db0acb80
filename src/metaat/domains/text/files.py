"""Where the text domain's data files live, what they must hash to, and the one-line errors.

Every file is looked for in ``$METAAT_DATA/text/`` first, then in ``~/.cache/metaat/text/`` (the
default ``--out`` of ``python -m metaat.domains.text.fetch``). The raw files are pinned by SHA-256
here; the derived vector subset is pinned by the manifest the fetch script writes next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from metaat.data.base import ENV_VAR, DataError

DOMAIN = "text"
FETCH_COMMAND = "make data (or: python -m metaat.domains.text.fetch)"

MR_FILE = "mr/rotten_tomatoes_corpus_full.csv.bz2"
MR_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"

BBC_DIR = "bbc-news"
BBC_TOPICS: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")
BBC_COUNT = 2225
BBC_DIGEST = "2703f3ba3c1b67166509fafe0ea992c9d5a46aaeb68c4473a2c9d558dd71c41a"
"""SHA-256 of the lines ``"<topic>/<file> <sha256 of the file>\\n"`` over the sorted article files."""

WORDNET_DIR = "wordnet"
WORDNET_SHA256: dict[str, str] = {
    "data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
    "data.verb": "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
    "data.adj": "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
    "data.adv": "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
    "index.noun": "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
    "index.verb": "e2ac24816c3a8289dcb72aaa9cf8db81fdf25ec34d792bfc96ac5b7a20c8b4ae",
    "index.adj": "c9865d7b4d1f805bdef82ccdcea5282436e23083e6f6f1b33e716327c4eda810",
    "index.adv": "6f5465ed5758fe9c8a2f7ec17b1300f3aa875756c70ff7cba162f7e71bcf88ea",
}

VECTORS_DIR = "vectors"
VECTORS_FILE = "vectors/wink-sg-100d-subset.npy"
VECTOR_WORDS_FILE = "vectors/wink-sg-100d-subset.txt"
VECTORS_MANIFEST = "vectors/manifest.json"


def default_dir() -> Path:
    """``~/.cache/metaat/text`` (the fetch script's default output)."""
    return Path("~/.cache/metaat").expanduser() / DOMAIN


def candidate_dirs(data_dir: Path | None = None) -> list[Path]:
    """Folders searched in order: an explicit ``data_dir`` (and its ``text/``), ``$METAAT_DATA/text``,
    ``$METAAT_DATA``, then the default cache folder."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / DOMAIN]
    root = os.environ.get(ENV_VAR, "").strip()
    if root:
        base = Path(root).expanduser()
        dirs += [base / DOMAIN, base]
    dirs.append(default_dir())
    return dirs


def locate(relative: str, data_dir: Path | None = None) -> Path:
    """The first existing ``<folder>/<relative>``; ``FileNotFoundError`` naming where it looked."""
    dirs = candidate_dirs(data_dir)
    for folder in dirs:
        path = folder / relative
        if path.exists():
            return path
    where = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"text data file {relative} not found (looked in {where}); run {FETCH_COMMAND}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _checked(path: str, mtime_ns: int, size: int, expected: str) -> bool:
    return sha256_file(Path(path)) == expected


def check_sha256(path: Path, expected: str) -> Path:
    """Raise :class:`DataError` (one line, naming ``path``) when its SHA-256 is not ``expected``."""
    stat = path.stat()
    if not _checked(str(path.resolve()), stat.st_mtime_ns, stat.st_size, expected):
        raise DataError(
            f"{path}: checksum mismatch (corrupt or a different version); delete it and run {FETCH_COMMAND}"
        )
    return path


def tree_digest(root: Path) -> tuple[int, str]:
    """``(number of .txt files, digest)`` of a folder of articles, as pinned in :data:`BBC_DIGEST`."""
    lines = [f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n" for p in sorted(root.rglob("*.txt")) if p.is_file()]
    return len(lines), hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """The vectors manifest (file name -> SHA-256); :class:`DataError` when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("files is not a mapping of names to digests")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable vectors manifest ({exc}); delete it and run {FETCH_COMMAND}") from None
    return dict(files)
