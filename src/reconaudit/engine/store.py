"""The content-addressed artifact store.

An artifact is a directory of files identified by ``(kind, key)``, where ``key`` hashes every input
and setting of the step that made it.  Writes are atomic: a step writes into a private temporary
directory and the store *commits* it in one rename (local filesystem) or by writing a ``_COMMITTED``
marker after every file (object stores through fsspec).  A step whose artifact exists is skipped;
a killed step leaves only a temporary directory, which is ignored and later cleaned.  Two workers
racing on the same step produce one artifact: the first commit wins, the loser's copy is discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = "_COMMITTED"


def content_key(kind: str, spec: dict, version: int | str = 1) -> str:
    """sha256 of the canonical JSON of ``(kind, version, spec)``, first 20 hex digits."""
    payload = json.dumps({"kind": kind, "version": version, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class ArtifactStore:
    """A local directory of artifacts: ``ROOT/<kind>/<key>/`` (committed by rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self.url = str(self.root)

    # ------------------------------------------------------------------ queries
    def _final(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether the artifact has been committed."""
        return (self._final(kind, key) / MARKER).exists()

    def path(self, kind: str, key: str) -> Path:
        """Local directory of a committed artifact (raises ``FileNotFoundError`` if missing)."""
        p = self._final(kind, key)
        if not (p / MARKER).exists():
            raise FileNotFoundError(f"artifact {kind}/{key} is not in the store {self.root}")
        return p

    def checkpoint_dir(self, kind: str, key: str) -> Path:
        """A persistent scratch directory for a step's training checkpoints (survives a kill)."""
        d = self.root / ".checkpoints" / kind / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clear_checkpoint(self, kind: str, key: str) -> None:
        """Remove a step's checkpoints once its artifact is committed."""
        shutil.rmtree(self.root / ".checkpoints" / kind / key, ignore_errors=True)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def writer(self, kind: str, key: str) -> Iterator[Path]:
        """Yield a private directory; commit it as ``kind/key`` when the block ends without error."""
        tmp = self._tmp / f"{kind}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"kind": kind, "key": key, "time": time.time()}))
            final = self._final(kind, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another worker committed first (the target exists and is not empty), or a stale
                # uncommitted directory sits there: keep a committed one, replace a stale one.
                if (final / MARKER).exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def clean_tmp(self, older_than_s: float = 0.0) -> int:
        """Remove temporary directories left by killed steps; return how many were removed."""
        n = 0
        now = time.time()
        for d in self._tmp.iterdir() if self._tmp.exists() else []:
            try:
                if now - d.stat().st_mtime >= older_than_s:
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
            except FileNotFoundError:
                continue
        return n


class FsspecStore(ArtifactStore):
    """Artifacts on an object store or any fsspec filesystem (``s3://``, ``gs://``, ``memory://``).

    Reads are materialised into a local cache directory; a write uploads every file of the private
    directory, then the ``_COMMITTED`` marker last, so a reader never sees a partial artifact.
    Concurrent writers of the same step write identical content (steps are deterministic); the
    marker makes the artifact visible once complete.
    """

    def __init__(self, url: str, cache_dir: str | Path | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.url)
        self.fs.makedirs(self._base, exist_ok=True)
        cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "reconaudit-cache"
        self.root = cache / hashlib.sha1(self.url.encode()).hexdigest()[:12]
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def _remote(self, kind: str, key: str) -> str:
        return f"{self._base}/{kind}/{key}"

    def exists(self, kind: str, key: str) -> bool:
        return self.fs.exists(f"{self._remote(kind, key)}/{MARKER}")

    def path(self, kind: str, key: str) -> Path:
        local = self.root / kind / key
        if (local / MARKER).exists():
            return local
        if not self.exists(kind, key):
            raise FileNotFoundError(f"artifact {kind}/{key} is not in the store {self.url}")
        tmp = self._tmp / f"get-{kind}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        remote = self._remote(kind, key)
        for f in self.fs.find(remote):
            rel = f[len(remote) + 1 :]
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f, str(dest))
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, local)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    @contextlib.contextmanager
    def writer(self, kind: str, key: str) -> Iterator[Path]:
        tmp = self._tmp / f"{kind}-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            if not self.exists(kind, key):
                remote = self._remote(kind, key)
                for f in sorted(tmp.rglob("*")):
                    if f.is_file():
                        rel = f.relative_to(tmp).as_posix()
                        self.fs.makedirs(f"{remote}/{Path(rel).parent.as_posix()}", exist_ok=True)
                        self.fs.put_file(str(f), f"{remote}/{rel}")
                self.fs.pipe_file(f"{remote}/{MARKER}", json.dumps({"kind": kind, "key": key}).encode())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def open_store(location: str | Path) -> ArtifactStore:
    """A local :class:`ArtifactStore` for a path, a :class:`FsspecStore` for a URL with a protocol."""
    s = str(location)
    if "://" in s and not s.startswith("file://"):
        return FsspecStore(s)
    return ArtifactStore(s.removeprefix("file://"))
