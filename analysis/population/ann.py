"""The approximate neighbour index of a population: one faiss index per base, beside the Parquet parts.

Why faiss (faiss-cpu on PyPI): a maintained library (Meta, releases for every CPython on Linux/macOS/Windows)
whose inverted-file index supports what a living fleet index needs and HNSW libraries mostly do not:
adding *and removing* vectors by id without a rebuild, persistence to one file, and a scalar quantiser that
keeps 10^6 sketches of 1,024 floats in 1 GB instead of 4.

    DIR/ann/manifest.json      {"version", "d", "groups": {key: {"base_model", "layout", "kind", "count",
                                "trained_on", "file", "bytes", "sha256"}}}
    DIR/ann/<key>-<gen>.faiss  the index of one base (key = sha256 of base model and module layout; gen: a new
                               name per write, so a reader holding the previous manifest still finds its file)

A faiss file is untrusted input: `faiss.read_index` on a damaged file can abort the process in C++, past any
Python handler. So the manifest records each file's size and sha256 when it is written, and a file is opened,
checked against both, and only then read by faiss through that same open file (/proc/self/fd; a file renamed
over the path meanwhile is not the one read; 1 s per GB for the digest). A mismatch is one line naming the file (queries) or a
rebuild (scan). This stops damage (truncation, a flipped bit, garbage, another index's file); a deliberately
forged file *with* a matching manifest is beyond it (the manifest lives beside the file).

Kinds. Up to FLAT_MAX vectors: exact inner-product search (`IndexFlatIP` in an `IndexIDMap2`), a few ms.
Beyond: IVF (`IndexIVFScalarQuantizer`, 8-bit, inner product), nlist ~ sqrt(N) lists trained by k-means on a
sample, `nprobe` lists scanned per query (about SCAN_BUDGET vectors). Vectors are the unit sketches, so
inner product = sketch cosine.
Ids are the first 60 bits of each content sha256 (stable across scans and compactions). The candidates it
returns are re-ranked with the float32 sketches (`query`), so quantisation never decides the order.

Updates (`sync_index`, called by every scan): ids whose content left the catalog are removed, new ones are
added to the trained lists; an index is rebuilt (retrained) when it has grown REBUILD_GROWTH-fold since its
training, crossed FLAT_MAX, or cannot be read back as what the manifest says. `rebuild=True` forces it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.population.store import RESCAN, IndexStore, PopulationIndexError, vectors_of

log = logging.getLogger(__name__)

VERSION = 2  # 2: files named per write, with their sha256
FLAT_MAX = 20_000
REBUILD_GROWTH = 4.0
SCAN_BUDGET = 16_384  # vectors an IVF query scans (nprobe = this / mean list length, within [8, 64])
TRAIN_PER_LIST = 48  # k-means sample: this many vectors per list


def sha_ids(shas: list[str]) -> np.ndarray:
    """(N,) int64 ids: the first 60 bits of each hex sha256 (positive; collisions ~N^2 / 2^61)."""
    return np.fromiter((int(s[:15], 16) for s in shas), dtype=np.int64, count=len(shas))


def group_key(base_model: str | None, layout: str) -> str:
    return hashlib.sha256(f"{base_model or ''}\n{layout}".encode()).hexdigest()[:16]


def unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0).astype(np.float32, copy=False)


def nlist_for(n: int) -> int:
    """Lists of an IVF index over n vectors: the power of two nearest sqrt(n) (10^5 -> 256, 10^6 -> 1024)."""
    return max(16, 2 ** round(math.log2(math.sqrt(max(n, 1)))))


@dataclass(eq=False)
class AnnIndex:
    """One faiss index over unit sketches of one base. `trained_on`: vectors it was built from (IVF)."""

    index: Any
    kind: str  # "flat" | "ivf"
    trained_on: int

    @property
    def nprobe(self) -> int:
        """Lists scanned per query: about SCAN_BUDGET vectors (10^5 over 256 lists: 42; 10^6 over 1024: 16)."""
        if self.kind != "ivf":
            return 0
        per_list = max(1.0, len(self) / self.index.nlist)
        return int(min(self.index.nlist, max(8, min(64, round(SCAN_BUDGET / per_list)))))

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, *, seed: int = 0) -> "AnnIndex":
        """vectors (N, d) float32 unit rows, ids (N,) int64."""
        import faiss

        n, d = vectors.shape
        if n <= FLAT_MAX:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
            index.add_with_ids(vectors, ids)
            return cls(index, "flat", n)
        nlist = nlist_for(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = seed
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, TRAIN_PER_LIST * nlist), replace=False))
        index.train(vectors[sample])
        index.quantizer_trains_alone = 0
        index.add_with_ids(vectors, ids)
        return cls(index, "ivf", n)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    def ids(self) -> np.ndarray:
        """Every id held, sorted."""
        import faiss

        if self.kind == "flat":
            return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        inv = self.index.invlists
        chunks = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
                  for lst in range(self.index.nlist) if inv.list_size(lst)]
        return np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(sims (m, n), ids (m, n)) of the n best by (approximate) inner product; id -1 where fewer exist."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=self.nprobe) if self.kind == "ivf" else None
        n = max(1, min(n, len(self)))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n, params=params)

    def save(self, folder: Path, key: str) -> dict[str, Any]:
        """Write to a new file of `folder` (atomically); {"file", "bytes", "sha256"} for the manifest."""
        import faiss

        name = f"{key}-{uuid.uuid4().hex[:12]}.faiss"
        tmp = folder / f".{name}"
        faiss.write_index(self.index, str(tmp))
        digest = _sha256_file(tmp)
        os.replace(tmp, folder / name)
        return {"file": name, "bytes": (folder / name).stat().st_size, "sha256": digest}

    @classmethod
    def load(cls, folder: Path, entry: dict, d: int) -> "AnnIndex":
        """Read one index, verified against the manifest (size and sha256 before faiss sees a byte; then kind,
        count and width); one line naming the file otherwise."""
        import faiss

        path = folder / str(entry.get("file"))
        if not (isinstance(entry.get("file"), str) and FILE_NAME.fullmatch(entry["file"])
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
            raise PopulationIndexError(f"{folder / 'manifest.json'}: an entry without a valid file name, size and "
                                       f"sha256; {RESCAN}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO in its place never blocks
        except FileNotFoundError:
            raise PopulationIndexError(f"{path}: missing; {RESCAN}") from None
        except OSError as exc:
            raise PopulationIndexError(f"{path}: unreadable ({exc.strerror}); {RESCAN}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PopulationIndexError(f"{path}: not a regular file; {RESCAN}")
            index = _read_verified(fd, path, entry)
        except OSError as exc:
            raise PopulationIndexError(f"{path}: unreadable ({exc.strerror}); {RESCAN}") from None
        finally:
            os.close(fd)
        kind = entry.get("kind")
        expected = {"flat": faiss.IndexIDMap2, "ivf": faiss.IndexIVFScalarQuantizer}.get(kind)
        if expected is None or not isinstance(index, expected) or index.d != d or index.ntotal != entry.get("count"):
            raise PopulationIndexError(f"{path}: not the {kind} index of {entry.get('count')} x {d} the manifest "
                                       f"describes; {RESCAN}")
        return cls(index, kind, int(entry.get("trained_on", index.ntotal)))


FILE_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}\.faiss")


def _read_verified(fd: int, path: Path, entry: dict) -> Any:
    """Check the open file's size and sha256, then let faiss read that same open file (/proc/self/fd: a file
    renamed over `path` meanwhile is not the one read)."""
    import faiss

    size = os.fstat(fd).st_size
    if size != entry["bytes"]:
        raise PopulationIndexError(f"{path}: {size} bytes, the manifest says {entry['bytes']}; {RESCAN}")
    digest = hashlib.sha256()
    while block := os.read(fd, 1 << 24):
        digest.update(block)
    if digest.hexdigest() != entry["sha256"]:
        raise PopulationIndexError(f"{path}: content differs from what was written (sha256 mismatch: damaged "
                                   f"or replaced); {RESCAN}")
    same_file = f"/proc/self/fd/{fd}"
    try:
        return faiss.read_index(same_file if os.path.exists(same_file) else str(path))
    except RuntimeError as exc:
        raise PopulationIndexError(f"{path}: not a readable faiss index ({str(exc).splitlines()[0][:120]}); "
                                   f"{RESCAN}") from None


def _sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---- the manifest and the groups ----------------------------------------------------------------------

def ann_dir(store: IndexStore) -> Path:
    return store.root / "ann"


def read_manifest(store: IndexStore) -> dict[str, dict]:
    """{key: entry} of the approximate index; {} when none was built; one line when it is damaged."""
    path = ann_dir(store) / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise PopulationIndexError(f"{path}: unreadable ({str(exc)[:120]}); {RESCAN}") from None
    d = store.config.k ** 2
    if not (isinstance(data, dict) and data.get("version") == VERSION and data.get("d") == d
            and isinstance(data.get("groups"), dict) and all(isinstance(e, dict) for e in data["groups"].values())):
        raise PopulationIndexError(f"{path}: not a manifest of version {VERSION} for {d}-float sketches; {RESCAN}")
    return data["groups"]


def _write_manifest(store: IndexStore, groups: dict[str, dict]) -> None:
    path = ann_dir(store) / "manifest.json"
    tmp = path.with_name(f".manifest-{uuid.uuid4().hex[:8]}.json")
    tmp.write_text(json.dumps({"version": VERSION, "d": store.config.k ** 2, "groups": groups}, indent=1) + "\n")
    os.replace(tmp, path)


def live_groups(store: IndexStore) -> dict[str, dict[str, Any]]:
    """{key: {"base_model", "layout", "sha256": [...]}} of the sketches the catalog refers to."""
    _, shas, errors = store.catalog_columns()
    live = {s for s, e in zip(shas, errors) if s and not e}
    table = store.read_sketches(["base_model", "layout"], keep=live)
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"sha256": []})
    for sha, base, layout in zip(*(table.column(c).to_pylist() for c in ("sha256", "base_model", "layout"))):
        g = groups[group_key(base, layout)]
        g.update(base_model=base or "", layout=layout)
        g["sha256"].append(sha)
    return dict(groups)


def _vectors(store: IndexStore, shas: set[str]) -> tuple[np.ndarray, np.ndarray]:
    table = store.read_sketches(["vector"], keep=shas)
    return unit_rows(vectors_of(table)), sha_ids(table.column("sha256").to_pylist())


def sync_index(store: IndexStore, *, rebuild: bool = False) -> dict[str, Any]:
    """Bring DIR/ann up to date with the catalog (see the module docstring); what it did, for the scan report."""
    folder = ann_dir(store)
    folder.mkdir(exist_ok=True)
    d = store.config.k ** 2
    try:
        old = {} if rebuild else read_manifest(store)
    except PopulationIndexError as exc:
        store.repairs.append(str(exc).replace(RESCAN, "rebuilt"))
        old = {}
    groups, new = live_groups(store), {}
    report: dict[str, Any] = {"added": 0, "removed": 0, "rebuilt": 0, "updated": 0}
    for key, group in groups.items():
        want_shas = group["sha256"]
        want = sha_ids(want_shas)
        index = None
        if key in old:
            try:
                index = AnnIndex.load(folder, old[key], d)
            except PopulationIndexError as exc:
                store.repairs.append(str(exc).replace(RESCAN, "rebuilt"))
        if index is not None:
            have = index.ids()
            gone, wanted = np.setdiff1d(have, want), np.setdiff1d(want, have)
            count = len(have) - len(gone) + len(wanted)
            grown = count > REBUILD_GROWTH * max(index.trained_on, 1) if index.kind == "ivf" else count > FLAT_MAX
            if grown or (index.kind == "ivf" and count <= FLAT_MAX // 2):
                index = None
            elif len(gone) or len(wanted):
                report["removed"] += index.remove(gone)
                wanted_set = set(wanted.tolist())
                vectors, ids = _vectors(store, {s for s, i in zip(want_shas, want.tolist()) if i in wanted_set})
                index.add(vectors, ids)
                report["added"] += len(ids)
                report["updated"] += 1
            else:
                new[key] = old[key]
                continue
        if index is None:
            vectors, ids = _vectors(store, set(want_shas))
            index = AnnIndex.build(vectors, ids)
            report["rebuilt"] += 1
            report["added"] += len(ids)
        new[key] = {"base_model": group["base_model"], "layout": group["layout"], "kind": index.kind,
                    "count": len(index), "trained_on": index.trained_on, **index.save(folder, key)}
    _write_manifest(store, new)  # the files it names are complete; then the ones no manifest names go
    named = {entry["file"] for entry in new.values()}
    for p in folder.glob("*.faiss"):
        if p.name not in named:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    report["groups"] = len(new)
    return report


def load_indexes(store: IndexStore, *, attempts: int = 3) -> dict[str, AnnIndex]:
    """{key: AnnIndex} for queries: a damaged or missing file is one line naming it.

    A scan may publish a new manifest (and remove the files of the old one) while this reads: a failure is
    retried when the manifest changed meanwhile, so a reader sees one consistent generation.
    """
    d = store.config.k ** 2
    for attempt in range(attempts):
        before = _manifest_bytes(store)
        try:
            return {key: AnnIndex.load(ann_dir(store), entry, d) for key, entry in read_manifest(store).items()}
        except PopulationIndexError:
            if attempt == attempts - 1 or _manifest_bytes(store) == before:
                raise
            log.info("%s: republished while being read; reading it again", ann_dir(store) / "manifest.json")
    raise AssertionError("unreachable")


def _manifest_bytes(store: IndexStore) -> bytes | None:
    try:
        return (ann_dir(store) / "manifest.json").read_bytes()
    except OSError:
        return None
