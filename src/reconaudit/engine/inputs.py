"""Digests of the files a step reads from outside the store, so that a step's key follows contents.

A step that reads a file the store does not hold (a manifest or label table, the images it
lists, a weights file, a folder of precomputed reconstructions, a plug-in's source file) puts the
file's *digest* into its spec, hence into its key: a changed file changes the key of exactly the
steps that read it and of the steps downstream of them.

A file's digest is the BLAKE2b-256 of its bytes.  Hashing is paid once per version of a file:
:class:`InputDigests` keeps a cache ``{path: (size, mtime_ns, digest)}`` in the store
(``STORE/.inputs/digests.json``) and re-hashes a file only when its cheap fingerprint (size and
modification time in nanoseconds) differs from the cached one, so an unchanged tree of a hundred
thousand images costs a ``stat`` per file.  A directory's digest hashes the sorted list of
``(relative path, file digest)`` of every file under it (hidden entries and the store itself are
skipped).  Every file whose content differs from the cached digest, and every file added to or
removed from a cached directory, is listed in :attr:`InputDigests.changes`: that is what
``reconaudit plan`` shows as the reason a step went stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# parameter names whose string values name files or directories read by a step
_PATH_KEYS = ("path", "root", "weights", "folder")
_PATH_SUFFIXES = ("_path", "_csv", "_dir", "_file", "_root")
_CHUNK = 1 << 20


def hash_file(path: str | Path) -> str:
    """BLAKE2b-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_path_key(name: str) -> bool:
    """Whether a parameter called ``name`` holds a path read by a step (``path``, ``root``, ``weights``,
    ``*_csv``, ``*_path``, ``*_dir``, ``*_file``, ``*_root``)."""
    return name in _PATH_KEYS or name.endswith(_PATH_SUFFIXES)


def plugin_source(target: str) -> Path | None:
    """The source file of a plug-in target ``"package.module:factory"``, found without importing it.

    Searches ``sys.path`` for ``package/module.py`` (or ``package/module/__init__.py``); ``None``
    when the module is not a plain source file (built in, compiled, or not found).
    """
    if not isinstance(target, str) or ":" not in target:
        return None
    parts = target.split(":", 1)[0].split(".")
    for entry in [os.getcwd(), *sys.path]:
        base = Path(entry or ".").joinpath(*parts)
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand.resolve()
    return None


class InputDigests:
    """Content digests of external files, cached by fingerprint (see the module docstring).

    Parameters
    ----------
    cache:
        JSON file of the cache, or ``None`` for an in-memory cache (nothing is remembered).
    exclude:
        Directories never descended into (the store, the run directory).
    """

    def __init__(self, cache: str | Path | None = None, exclude: Iterable[str | Path] = ()) -> None:
        self.cache_path = Path(cache) if cache is not None else None
        self.exclude = {Path(p).resolve() for p in exclude}
        self._files: dict[str, list] = {}
        self._trees: dict[str, list[str]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            try:
                raw = json.loads(self.cache_path.read_text())
                self._files = dict(raw.get("files", {}))
                self._trees = dict(raw.get("trees", {}))
            except (ValueError, OSError) as e:
                log.warning("input digest cache %s is unreadable (%s); hashing every input again", self.cache_path, e)
        self._memo: dict[str, str] = {}
        self.changes: dict[str, str] = {}  # path -> "changed" | "added" | "removed"
        self._dirty = False

    # ------------------------------------------------------------------ digests
    def file(self, path: str | Path) -> str:
        """Digest of one file (``"missing"`` when it does not exist)."""
        p = str(Path(path).resolve())
        if p in self._memo:
            return self._memo[p]
        try:
            st = os.stat(p)
        except OSError:
            self._memo[p] = "missing"
            return "missing"
        old = self._files.get(p)
        if old is not None and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            digest = old[2]
        else:
            digest = hash_file(p)
            if old is not None and old[2] != digest:
                self.changes[p] = "changed"
            self._files[p] = [st.st_size, st.st_mtime_ns, digest]
            self._dirty = True
        self._memo[p] = digest
        return digest

    def _walk(self, root: Path) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in self.exclude)
            out.extend((d / n).relative_to(root).as_posix() for n in filenames if not n.startswith("."))
        return sorted(out)

    def tree(self, path: str | Path) -> str:
        """Digest of a directory: every file under it (sorted relative paths with their digests)."""
        root = Path(path).resolve()
        key = str(root)
        if key in self._memo:
            return self._memo[key]
        rels = self._walk(root)
        h = hashlib.blake2b(digest_size=32)
        for rel in rels:
            h.update(rel.encode("utf-8") + b"\0" + self.file(root / rel).encode("ascii") + b"\n")
        old = self._trees.get(key)
        if old is not None and old != rels:
            olds, news = set(old), set(rels)
            for rel in sorted(news - olds):
                self.changes[str(root / rel)] = "added"
            for rel in sorted(olds - news):
                self.changes[str(root / rel)] = "removed"
        if old != rels:
            self._trees[key] = rels
            self._dirty = True
        digest = h.hexdigest()
        self._memo[key] = digest
        return digest

    def of(self, path: str | Path) -> str:
        """Digest of a file or a directory (``"missing"`` when neither)."""
        p = Path(path)
        return self.tree(p) if p.is_dir() else self.file(p)

    # ------------------------------------------------------------------ params
    def of_paths(self, paths: Iterable[str | Path]) -> dict[str, str]:
        """``{resolved path: digest}`` of files and directories."""
        return {str(Path(p).resolve()): self.of(p) for p in paths}

    def of_params(self, params: dict, extra: Iterable[str | Path] = ()) -> dict[str, str]:
        """Digests of every existing path named by a path-like key of ``params`` (see :func:`is_path_key`),
        of a plug-in ``target``'s source file, and of ``extra`` paths."""
        paths = [Path(v) for k, v in sorted(params.items()) if is_path_key(k) and isinstance(v, str | Path)
                 and str(v) and Path(v).exists()]
        src = plugin_source(params.get("target")) if isinstance(params.get("target"), str) else None
        if src is not None:
            paths.append(src)
        return self.of_paths([*paths, *extra])

    def changes_under(self, paths: Iterable[str]) -> list[tuple[str, str]]:
        """The recorded changes at or under each of ``paths``: ``[(file, what)]``."""
        out = []
        for p in paths:
            for f, what in self.changes.items():
                if f == p or f.startswith(p.rstrip(os.sep) + os.sep):
                    out.append((f, what))
        return sorted(set(out))

    def save(self) -> None:
        """Write the cache (atomically) when something was hashed or listed anew."""
        if self.cache_path is None or not self._dirty:
            return
        from reconaudit.engine.store import atomic_write_text

        atomic_write_text(self.cache_path, json.dumps({"files": self._files, "trees": self._trees}))
        self._dirty = False


def cohort_input_files(name: str, params: dict) -> list[Path]:
    """The files and directories a cohort loader reads: its ``input_files(params)`` when the loader
    module defines one, else every existing path named by a path-like parameter (a directory
    stands for every file under it)."""
    from reconaudit.cohorts import COHORTS

    entry = COHORTS.get(name)
    if entry is None or entry.kind == "synthetic":
        return []
    import importlib

    mod = importlib.import_module(entry.__module__)
    fn = getattr(mod, "input_files", None)
    if fn is not None:
        return [Path(p) for p in fn(entry.Params.model_validate(params))]
    return [Path(v) for k, v in sorted(params.items())
            if is_path_key(k) and isinstance(v, str | Path) and str(v) and Path(v).exists()]
