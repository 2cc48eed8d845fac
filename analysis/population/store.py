"""The on-disk index of a population scan: a Parquet file set keyed by content hash.

    DIR/meta.json                       sketch settings (k, seed, top): sketches are comparable only with equal ones
    DIR/catalog.parquet                 one row per scanned location: path, name, signature, sha256 | error
    DIR/sketches/part-<scan>-<n>.parquet  one row per distinct content sha256 (append-only, written as the scan runs)

The catalog maps paths to content; the sketch parts hold each content once, so a copied or moved
adapter is never sketched twice and a rerun appends only what is new. The catalog is rewritten whole
(atomically) at the end of every scan; parts are never rewritten (rows whose sha256 no longer appears in
the catalog stay until the index is rebuilt: there is no compaction yet).
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import AtlasError
from analysis.population.sketch import SketchConfig

FORMAT_VERSION = 1
CATALOG_SCHEMA = pa.schema([
    ("path", pa.string()), ("name", pa.string()), ("signature", pa.string()),
    ("sha256", pa.string()), ("error", pa.string()),
])


class PopulationIndexError(AtlasError):
    """A population index directory is missing, malformed, or was built with other sketch settings."""


def sketch_schema(config: SketchConfig) -> pa.Schema:
    return pa.schema([
        ("sha256", pa.string()), ("layout", pa.string()), ("base_model", pa.string()), ("format", pa.string()),
        ("norm", pa.float64()), ("vector", pa.list_(pa.float32(), config.k * config.k)),
        ("modules", pa.list_(pa.string())), ("module_norm", pa.list_(pa.float32())),
        ("module_top_sv", pa.list_(pa.float32())),  # (M * top,) row-major
    ])


class IndexStore:
    """Read and write one index directory. `open(dir, config)` creates it or checks its settings."""

    def __init__(self, root: Path, config: SketchConfig) -> None:
        self.root = root
        self.config = config
        self.parts = root / "sketches"
        self._scan_id = uuid.uuid4().hex[:12]
        self._part_no = 0

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, root: str | os.PathLike[str], config: SketchConfig) -> "IndexStore":
        """Open an index for a scan; a new directory gets `config`, an existing one must match it."""
        path = Path(root)
        meta = path / "meta.json"
        if meta.exists():
            stored = cls.read_meta(path)
            if stored != config:
                raise PopulationIndexError(f"{path}: index was built with {asdict(stored)}, not {asdict(config)}; "
                                  "pass the same settings or a new --out directory")
        else:
            if path.exists() and any(path.iterdir()):
                raise PopulationIndexError(f"{path}: exists, is not empty and has no meta.json: not an index directory")
            (path / "sketches").mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"version": FORMAT_VERSION, **asdict(config)}, indent=1) + "\n")
        return cls(path, config)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "IndexStore":
        """Open an existing index for queries."""
        path = Path(root)
        return cls(path, cls.read_meta(path))

    @staticmethod
    def read_meta(path: Path) -> SketchConfig:
        meta = path / "meta.json"
        if not meta.is_file():
            raise PopulationIndexError(f"{path}: not a population index (no meta.json); build one with `adapter-atlas scan`")
        try:
            data = json.loads(meta.read_text())
            if data.get("version") != FORMAT_VERSION:
                raise PopulationIndexError(f"{meta}: index format {data.get('version')!r}, expected {FORMAT_VERSION}")
            return SketchConfig(k=int(data["k"]), seed=int(data["seed"]), top=int(data["top"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PopulationIndexError(f"{meta}: unreadable index settings ({exc})") from None

    # -- catalog ------------------------------------------------------------------------------------
    def read_catalog(self) -> dict[str, dict]:
        """{path: row} of the last scan, empty for a new index."""
        path = self.root / "catalog.parquet"
        if not path.exists():
            return {}
        return {row["path"]: row for row in pq.read_table(path).to_pylist()}

    def catalog_columns(self) -> tuple[list[str], list[str | None], list[str | None]]:
        """(paths, sha256, error) of the last scan as three lists: the query side's cheap read of the catalog."""
        path = self.root / "catalog.parquet"
        if not path.exists():
            return [], [], []
        table = pq.read_table(path, columns=["path", "sha256", "error"])
        return tuple(table.column(c).to_pylist() for c in ("path", "sha256", "error"))  # type: ignore[return-value]

    def write_catalog(self, rows: Iterable[dict]) -> None:
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["path"]), schema=CATALOG_SCHEMA)
        tmp = self.root / f".catalog-{self._scan_id}.parquet"
        pq.write_table(table, tmp)
        os.replace(tmp, self.root / "catalog.parquet")

    # -- sketches -----------------------------------------------------------------------------------
    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def known_sha256(self) -> set[str]:
        known: set[str] = set()
        for part in self.part_files():
            known.update(pq.read_table(part, columns=["sha256"]).column("sha256").to_pylist())
        return known

    def append_sketches(self, rows: list[dict]) -> Path | None:
        """Write one part file (atomically: a reader never sees half a part)."""
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=sketch_schema(self.config))
        name = f"part-{self._scan_id}-{self._part_no:05d}.parquet"
        self._part_no += 1
        tmp = self.parts / f".{name}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.parts / name)
        return self.parts / name

    def read_sketches(self, columns: list[str] | None = None) -> pa.Table:
        """Every sketch row, each sha256 once (the first part that has it wins)."""
        parts = self.part_files()
        schema = sketch_schema(self.config)
        if not parts:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        cols = None if columns is None else list(dict.fromkeys(["sha256", *columns]))
        table = pa.concat_tables([pq.read_table(p, columns=cols) for p in parts])
        shas = table.column("sha256").to_numpy(zero_copy_only=False)
        _, first = np.unique(shas, return_index=True)
        if len(first) == len(shas):  # the usual case: no content stored twice, no 400 MB copy at 10^5
            return table
        return table.take(np.sort(first))


def vectors_of(table: pa.Table) -> np.ndarray:
    """The (N, k*k) float32 sketch matrix of a sketch table, without a Python loop."""
    column = table.column("vector").combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
