"""The on-disk index of a population scan: a Parquet file set keyed by content hash, treated as untrusted input.

    DIR/meta.json                         sketch settings (k, seed, top): sketches are comparable only with equal ones
    DIR/catalog.parquet                   one row per scanned location: path, name, signature, sha256 | error
    DIR/sketches/part-<scan>-<n>.parquet  one row per distinct content sha256 (written as the scan runs)
    DIR/ann/                              the approximate neighbour index per base (`analysis.population.ann`)

The catalog maps paths to content; the sketch parts hold each content once, so a copied or moved adapter is
never sketched twice and a rerun appends only what is new. Every file is written to a dot-prefixed temporary
and renamed, parts before the catalog, so a scan killed at any point leaves the previous index (or none) plus
complete parts that the next scan reuses. Rows whose sha256 left the catalog (deleted or changed adapters) are
never returned by queries; `compact` rewrites the parts without them.

Reading: `open` (queries) refuses a damaged file with one line naming it (`PopulationIndexError`);
`for_scan` (the scan) repairs instead: a file it cannot trust is removed and rebuilt from the adapters, and
what was repaired is listed in `repairs`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import AtlasError
from analysis.population.sketch import SketchConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CATALOG_SCHEMA = pa.schema([
    ("path", pa.string()), ("name", pa.string()), ("signature", pa.string()),
    ("sha256", pa.string()), ("error", pa.string()),
])
INDEX_ENTRIES = {"meta.json", "catalog.parquet", "sketches", "ann"}  # what an index directory holds (+ dot-files)
LOCK_NAME = ".writer.lock"  # the writers' lock (`lock`): never swept, never removed
RESCAN = "rerun `adapter-atlas scan` on it to repair"


class PopulationIndexError(AtlasError):
    """A population index directory is missing, malformed, or was built with other sketch settings."""


def sketch_schema(config: SketchConfig) -> pa.Schema:
    return pa.schema([
        ("sha256", pa.string()), ("layout", pa.string()), ("base_model", pa.string()), ("format", pa.string()),
        ("norm", pa.float64()), ("vector", pa.list_(pa.float32(), config.k * config.k)),
        ("modules", pa.list_(pa.string())), ("module_norm", pa.list_(pa.float32())),
        ("module_top_sv", pa.list_(pa.float32())),  # (M * top,) row-major
    ])


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def read_checked(path: Path, schema: pa.Schema, what: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file we wrote, checking it is one and has `schema`'s columns and types; else one line."""
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise PopulationIndexError(f"{path}: missing; {RESCAN}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PopulationIndexError(f"{path}: not a readable {what} ({_one_line(exc)}); {RESCAN}") from None
    for name in columns or schema.names:
        if name not in table.column_names:
            raise PopulationIndexError(f"{path}: not a {what} (no column {name!r}); {RESCAN}")
        want, got = schema.field(name).type, table.schema.field(name).type
        if got != want and not (pa.types.is_null(got) and table.num_rows == 0):
            raise PopulationIndexError(f"{path}: not a {what} (column {name!r} is {got}, expected {want}); {RESCAN}")
    return table


def _check_part(path: Path, table: pa.Table) -> None:
    """Content checks a schema cannot express: a sha256 per row, finite vectors and norms."""
    if table.column("sha256").null_count:
        raise PopulationIndexError(f"{path}: sketch rows without a sha256; {RESCAN}")
    if "vector" in table.column_names and len(table):
        values = table.column("vector").combine_chunks()
        if values.null_count or not np.isfinite(values.flatten().to_numpy(zero_copy_only=False)).all():
            raise PopulationIndexError(f"{path}: missing or non-finite sketch values; {RESCAN}")
    if "norm" in table.column_names:
        norms = table.column("norm").to_numpy(zero_copy_only=False)
        if table.column("norm").null_count or not np.isfinite(norms).all():
            raise PopulationIndexError(f"{path}: missing or non-finite norms; {RESCAN}")


def _write_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class IndexStore:
    """Read and write one index directory: `open` for queries, `for_scan` to create, check and repair.

    One writer at a time: `scan` and `compact` hold the index's writer lock (`analysis.population.lock`).
    """

    def __init__(self, root: Path, config: SketchConfig) -> None:
        self.root = root
        self.config = config
        self.parts = root / "sketches"
        self.repairs: list[str] = []
        self._scan_id = uuid.uuid4().hex[:12]
        self._part_no = 0

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "IndexStore":
        """Open an existing index for queries; a missing or damaged settings file or sketches/ is one line."""
        path = Path(root)
        store = cls(path, cls.read_meta(path))
        if not store.parts.is_dir():
            raise PopulationIndexError(f"{store.parts}: missing (the sketches of this index); {RESCAN}")
        return store

    @classmethod
    def for_scan(cls, root: str | os.PathLike[str], config: SketchConfig) -> "IndexStore":
        """Open an index for a scan: create it, or check it and repair what cannot be trusted.

        An index with other (readable) settings is refused; a directory holding anything but index files is
        refused (it is not ours to clear). Unreadable settings: every part is dropped and the index rebuilt.
        """
        path = Path(root)
        cls.check_target(path)
        meta = path / "meta.json"
        repairs: list[str] = []
        try:
            stored = cls.read_meta(path) if meta.exists() else None
        except PopulationIndexError as exc:
            stored = None
            repairs.append(f"{exc}: rebuilt".replace(f"; {RESCAN}", ""))
            cls._clear(path)
        if stored is not None and stored != config:
            raise PopulationIndexError(f"{path}: index was built with {asdict(stored)}, not {asdict(config)}; "
                                       "pass the same settings or a new --out directory")
        if stored is None and any(path.glob("*")) and not repairs:  # an interrupted first scan: start clean
            cls._clear(path)
        if stored is not None and not (path / "sketches").is_dir():
            repairs.append(f"{path / 'sketches'}: missing; every adapter is sketched again")
        (path / "sketches").mkdir(parents=True, exist_ok=True)
        if stored is None:
            tmp = path / f".meta-{uuid.uuid4().hex[:8]}.json"
            tmp.write_text(json.dumps({"version": FORMAT_VERSION, **asdict(config)}, indent=1) + "\n")
            os.replace(tmp, meta)
        store = cls(path, config)
        store.repairs = repairs
        store._sweep_temporaries()
        return store

    @staticmethod
    def check_target(path: Path) -> None:
        """Refuse (one line) a path a scan may not write into: a file, or a folder holding non-index files."""
        if path.exists() and not path.is_dir():
            raise PopulationIndexError(f"{path}: exists and is not a directory")
        foreign = [p.name for p in path.iterdir() if p.name not in INDEX_ENTRIES and not p.name.startswith(".")] \
            if path.exists() else []
        if foreign:
            what = "has no meta.json" if not (path / "meta.json").exists() else "holds files an index does not"
            raise PopulationIndexError(f"{path}: exists, is not empty and {what} ({', '.join(sorted(foreign)[:3])}): "
                                       "not an index directory; pass a new --out directory")

    @staticmethod
    def _clear(path: Path) -> None:
        """Remove the index files of a directory we may not trust (only names an index holds)."""
        for name in INDEX_ENTRIES:
            p = path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()

    def _sweep_temporaries(self) -> None:
        """Dot-prefixed files are what a killed writer left: never part of the index."""
        for folder in (self.root, self.parts, self.root / "ann"):
            if folder.is_dir():
                for p in folder.glob(".*"):
                    if p.is_file() and p.name != LOCK_NAME:
                        p.unlink(missing_ok=True)

    @staticmethod
    def read_meta(path: Path) -> SketchConfig:
        meta = path / "meta.json"
        if not meta.is_file():
            raise PopulationIndexError(f"{path}: not a population index (no meta.json); build one with `adapter-atlas scan`")
        try:
            data = json.loads(meta.read_text())
        except (ValueError, OSError) as exc:
            raise PopulationIndexError(f"{meta}: unreadable index settings ({_one_line(exc)}); {RESCAN}") from None
        if not isinstance(data, dict):
            raise PopulationIndexError(f"{meta}: expected a JSON object with version, k, seed and top, found a "
                                       f"{type(data).__name__}; {RESCAN}")
        if data.get("version") != FORMAT_VERSION:
            raise PopulationIndexError(f"{meta}: index format {data.get('version')!r}, expected {FORMAT_VERSION}")
        values = {key: data.get(key) for key in ("k", "seed", "top")}
        if not all(type(v) is int for v in values.values()):
            raise PopulationIndexError(f"{meta}: k, seed and top must be integers, found {values}; {RESCAN}")
        try:
            return SketchConfig(**values)
        except ValueError as exc:
            raise PopulationIndexError(f"{meta}: {exc}; {RESCAN}") from None

    # -- catalog ------------------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.parquet"

    def read_catalog(self) -> dict[str, dict]:
        """{path: row} of the last scan, empty for a new index; a damaged catalog is dropped (scan) and noted."""
        if not self.catalog_path.exists():
            return {}
        try:
            table = read_checked(self.catalog_path, CATALOG_SCHEMA, "catalog")
        except PopulationIndexError as exc:
            self.repairs.append(str(exc).replace(RESCAN, "every adapter is read again"))
            self.catalog_path.unlink()
            return {}
        return {row["path"]: row for row in table.to_pylist() if row["path"]}

    def catalog_columns(self) -> tuple[list[str], list[str | None], list[str | None]]:
        """(paths, sha256, error) of the last scan as three lists: the query side's cheap read of the catalog."""
        if not self.catalog_path.exists():
            return [], [], []
        table = read_checked(self.catalog_path, CATALOG_SCHEMA, "catalog", ["path", "sha256", "error"])
        if table.column("path").null_count:
            raise PopulationIndexError(f"{self.catalog_path}: rows without a path; {RESCAN}")
        return tuple(table.column(c).to_pylist() for c in ("path", "sha256", "error"))  # type: ignore[return-value]

    def write_catalog(self, rows: Iterable[dict]) -> None:
        _write_atomic(self.catalog_path, pa.Table.from_pylist(sorted(rows, key=lambda r: r["path"]),
                                                              schema=CATALOG_SCHEMA))

    # -- sketches -----------------------------------------------------------------------------------
    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def read_part(self, part: Path, columns: list[str] | None = None) -> pa.Table:
        table = read_checked(part, sketch_schema(self.config), "sketch part", columns)
        _check_part(part, table)
        return table

    def verify_parts(self) -> set[str]:
        """Read every part whole (scan): a damaged one is removed and noted; returns the sha256 stored."""
        known: set[str] = set()
        for part in self.part_files():
            try:
                known.update(self.read_part(part).column("sha256").to_pylist())
            except PopulationIndexError as exc:
                self.repairs.append(str(exc).replace(RESCAN, "removed; its adapters are sketched again"))
                part.unlink()
        return known

    def append_sketches(self, rows: list[dict]) -> Path | None:
        """Write one part file (atomically: a reader never sees half a part)."""
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=sketch_schema(self.config))
        name = f"part-{self._scan_id}-{self._part_no:05d}.parquet"
        self._part_no += 1
        _write_atomic(self.parts / name, table)
        return self.parts / name

    def read_sketches(self, columns: list[str] | None = None, *, keep: set[str] | None = None) -> pa.Table:
        """Every sketch row (of `keep`'s sha256 if given), each sha256 once (the first part that has it wins)."""
        parts = self.part_files()
        schema = sketch_schema(self.config)
        cols = None if columns is None else list(dict.fromkeys(["sha256", *columns]))
        if not parts:
            return schema.empty_table().select(cols or schema.names)
        tables = []
        for p in parts:
            table = self.read_part(p, cols)
            if keep is not None:
                mask = np.fromiter((s in keep for s in table.column("sha256").to_pylist()), bool, len(table))
                table = table.filter(pa.array(mask))
            tables.append(table)
        table = pa.concat_tables(tables)
        shas = table.column("sha256").to_numpy(zero_copy_only=False)
        _, first = np.unique(shas, return_index=True)
        if len(first) == len(shas):  # the usual case: no content stored twice, no 400 MB copy at 10^5
            return table
        return table.take(np.sort(first))

    # -- compaction ---------------------------------------------------------------------------------
    def compact(self, part_rows: int = 65536) -> tuple[int, int]:
        """Rewrite the parts with only the sketches the catalog refers to; (rows kept, rows dropped).

        New parts are written (atomically) before the old ones are removed, so a compaction killed at any
        point leaves every live sketch in some part (duplicates across parts are read once).
        """
        _, shas, errors = self.catalog_columns()
        live = {s for s, e in zip(shas, errors) if s and not e}
        old = self.part_files()
        stored = sum(pq.read_metadata(p).num_rows for p in old) if old else 0
        table = self.read_sketches(keep=live)
        for start in range(0, len(table), part_rows):
            name = f"part-{self._scan_id}-{self._part_no:05d}.parquet"
            self._part_no += 1
            _write_atomic(self.parts / name, table.slice(start, part_rows))
        for p in old:
            p.unlink()
        return len(table), stored - len(table)


def vectors_of(table: pa.Table) -> np.ndarray:
    """The (N, k*k) float32 sketch matrix of a sketch table, without a Python loop."""
    column = table.column("vector").combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
