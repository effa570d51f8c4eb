"""The content-addressed artifact store.

An artifact is a directory of files identified by ``(kind, key)``, where ``key`` hashes every input
and setting of the step that made it.  Writes are atomic: a step writes into a private temporary
directory and the store *commits* it in one rename (local filesystem) or by writing a ``_COMMITTED``
marker after every file (object stores through fsspec).  A step whose artifact exists is skipped;
a killed step leaves only a temporary directory, which is ignored and later cleaned once its owner
process is gone.  Two workers racing on the same step produce one artifact: the first commit wins,
the loser's copy is discarded (and :meth:`ArtifactStore.step_lock` keeps them from computing it twice).

The commit marker lists every file of the artifact with its size and BLAKE2b-256 digest.  Reading
an artifact (:meth:`ArtifactStore.path`) verifies them once per process; an artifact that fails
(a changed byte, a truncated or missing file, an unreadable marker) is moved to
``STORE/.quarantine/`` (kept for inspection, named in the log) and reported as missing, so it is
recomputed and never read.  See docs/store.md for the guarantees and the tests that show them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = "_COMMITTED"
HOST = socket.gethostname()
log = logging.getLogger(__name__)


class CorruptArtifactError(FileNotFoundError):
    """A committed artifact failed verification; it was quarantined and counts as missing."""


def file_digest(path: str | Path) -> str:
    """BLAKE2b-256 hex digest of a file's bytes."""
    from reconaudit.engine.inputs import hash_file

    return hash_file(path)


def manifest_of(directory: str | Path) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "blake2b": digest}}`` of every file under ``directory``
    (the marker excluded)."""
    root = Path(directory)
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name != MARKER:
            out[f.relative_to(root).as_posix()] = {"size": f.stat().st_size, "blake2b": file_digest(f)}
    return out


def verify_manifest(directory: str | Path, files: dict[str, dict]) -> str | None:
    """``None`` when every file of ``files`` is in ``directory`` with its size and digest, else what differs."""
    root = Path(directory)
    for rel, want in files.items():
        f = root / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want.get("size"):
            return f"{rel} has {size} bytes, {want.get('size')} were committed"
        if file_digest(f) != want.get("blake2b"):
            return f"{rel} differs from its committed checksum"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(prefix: str) -> str:
    """A temporary directory name that records its owner: ``PREFIX@HOST@PID@RANDOM``."""
    return f"{prefix}@{HOST}@{os.getpid()}@{uuid.uuid4().hex[:8]}"


def owner_gone(name: str, max_age_s: float, mtime: float) -> bool:
    """Whether the owner of a temporary entry named by :func:`_tmp_name` is gone: a dead process on
    this host, or (another host, or an unnamed entry) untouched for ``max_age_s`` seconds."""
    parts = name.split("@")
    if len(parts) >= 4 and parts[-3] == HOST and parts[-2].isdigit():
        return not _pid_alive(int(parts[-2]))
    return time.time() - mtime >= max_age_s


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
        self._verified_set: set[tuple[str, str]] = set()  # artifacts this process has verified

    # ------------------------------------------------------------------ queries
    def _final(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether the artifact has been committed (cheap; :meth:`verified` also checks its files)."""
        return (self._final(kind, key) / MARKER).exists()

    def _verified_cache(self) -> set[tuple[str, str]]:
        return self._verified_set

    def _problem(self, local: Path) -> str | None:
        try:
            files = json.loads((local / MARKER).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its commit marker is unreadable or lists no checksums"
        return verify_manifest(local, files)

    def verified(self, kind: str, key: str) -> bool:
        """Whether the artifact is committed and every file matches its checksum (checked once per
        process); a failing artifact is quarantined and ``False`` returned."""
        if (kind, key) in self._verified_cache():
            return True
        if not self.exists(kind, key):
            return False
        try:
            self.path(kind, key)
        except CorruptArtifactError:
            return False
        return True

    def path(self, kind: str, key: str) -> Path:
        """Local directory of a committed, verified artifact.

        Raises ``FileNotFoundError`` if missing, and :class:`CorruptArtifactError` (a subclass)
        after quarantining an artifact whose files do not match their checksums.
        """
        p = self._final(kind, key)
        if not (p / MARKER).exists():
            raise FileNotFoundError(f"artifact {kind}/{key} is not in the store {self.root}")
        return self._checked(kind, key, p)

    def _checked(self, kind: str, key: str, local: Path) -> Path:
        """``local`` once its files match the marker's checksums (verified once per process)."""
        if (kind, key) not in self._verified_cache():
            problem = self._problem(local)
            if problem is not None:
                where = self.quarantine(kind, key, problem)
                raise CorruptArtifactError(f"artifact {kind}/{key} failed verification ({problem}); moved to {where} "
                                           "and will be recomputed")
            self._verified_cache().add((kind, key))
        return local

    def marker(self, kind: str, key: str) -> dict:
        """The commit marker of an artifact (kind, key, time, files, env), read without verifying the
        files; ``{}`` when absent or unreadable."""
        try:
            return json.loads(self._marker_bytes(kind, key))
        except (OSError, ValueError):
            return {}

    def _marker_bytes(self, kind: str, key: str) -> bytes:
        return (self._final(kind, key) / MARKER).read_bytes()

    def checksum(self, kind: str, key: str, rel: str) -> str | None:
        """The committed BLAKE2b digest of file ``rel`` of an artifact (``None`` if not listed)."""
        try:
            files = json.loads((self.path(kind, key) / MARKER).read_text())["files"]
        except (OSError, ValueError, KeyError):
            return None
        return (files.get(rel) or {}).get("blake2b")

    def quarantine(self, kind: str, key: str, reason: str) -> Path:
        """Move a damaged artifact to ``STORE/.quarantine/`` (with a ``REASON`` file) and log where."""
        src = self._final(kind, key)
        dest = self.root / ".quarantine" / f"{kind}-{key}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
            (dest / "REASON").write_text(reason + "\n")
        except FileNotFoundError:
            pass  # another process moved it first
        self._verified_cache().discard((kind, key))
        log.warning("artifact %s/%s failed verification (%s): moved to %s; it will be recomputed", kind, key,
                    reason, dest)
        return dest

    def checkpoint_dir(self, kind: str, key: str) -> Path:
        """A persistent scratch directory for a step's training checkpoints (survives a kill)."""
        d = self.root / ".checkpoints" / kind / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def clear_checkpoint(self, kind: str, key: str) -> None:
        """Remove a step's checkpoints once its artifact is committed."""
        shutil.rmtree(self.root / ".checkpoints" / kind / key, ignore_errors=True)

    def discard_checkpoint(self, kind: str, key: str, reason: str) -> Path | None:
        """Move a step's checkpoints to ``STORE/.quarantine/`` (after a failed attempt, so that the
        next attempt starts afresh rather than from a checkpoint that may be what failed)."""
        d = self.root / ".checkpoints" / kind / key
        if not d.is_dir() or not any(d.iterdir()):
            return None
        dest = self.root / ".quarantine" / f"checkpoint-{kind}-{key}-{uuid.uuid4().hex[:6]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(d, dest)
        log.warning("step %s/%s failed (%s): its checkpoints were moved to %s; the next attempt starts afresh",
                    kind, key, reason, dest)
        return dest

    @contextlib.contextmanager
    def step_lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold an exclusive OS lock (``fcntl.flock``) on one step for the duration of the block, so
        that two processes sharing the store (cluster workers, two runs) never compute one step twice:
        the second waits, then finds the artifact committed."""
        import fcntl

        d = self.root / ".locks"
        d.mkdir(exist_ok=True)
        with open(d / f"{kind}-{key}.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writing
    def _private(self, prefix: str) -> Path:
        """A new private directory under ``.tmp`` (named by :func:`_tmp_name`, so a dead owner's is swept)."""
        tmp = self._tmp / _tmp_name(prefix)
        tmp.mkdir(parents=True)
        return tmp

    @contextlib.contextmanager
    def writer(self, kind: str, key: str) -> Iterator[Path]:
        """Yield a private directory; commit it as ``kind/key`` when the block ends without error."""
        tmp = self._private(f"{kind}-{key}")
        try:
            yield tmp
            (tmp / MARKER).write_text(_marker(kind, key, tmp))
            final = self._final(kind, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
                self._verified_cache().add((kind, key))  # this process just wrote and checksummed it
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

    def clean_tmp(self, older_than_s: float = 86400.0) -> int:
        """Remove temporary directories whose owner is gone; return how many were removed.

        A directory made on this host is removed when its owner process has exited; one from
        another host (a shared store) only when untouched for ``older_than_s`` seconds.  A live
        step's directory is never touched.
        """
        n = 0
        for d in self._tmp.iterdir() if self._tmp.exists() else []:
            try:
                if owner_gone(d.name, older_than_s, d.stat().st_mtime):
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
        self._verified_set: set[tuple[str, str]] = set()

    def _remote(self, kind: str, key: str) -> str:
        return f"{self._base}/{kind}/{key}"

    def exists(self, kind: str, key: str) -> bool:
        return self.fs.exists(f"{self._remote(kind, key)}/{MARKER}")

    def _marker_bytes(self, kind: str, key: str) -> bytes:
        return self.fs.cat_file(f"{self._remote(kind, key)}/{MARKER}")

    def quarantine(self, kind: str, key: str, reason: str) -> Path:
        """Move a damaged artifact to ``.quarantine/`` of the object store and drop the local copy."""
        remote = self._remote(kind, key)
        dest = f"{self._base}/.quarantine/{kind}-{key}-{uuid.uuid4().hex[:6]}"
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{remote}/{MARKER}")  # no longer committed, whatever happens next
            self.fs.mv(remote, dest, recursive=True)
        shutil.rmtree(self.root / kind / key, ignore_errors=True)
        self._verified_cache().discard((kind, key))
        log.warning("artifact %s/%s failed verification (%s): moved to %s; it will be recomputed", kind, key,
                    reason, dest)
        return Path(dest)

    def path(self, kind: str, key: str) -> Path:
        local = self.root / kind / key
        if (local / MARKER).exists():
            return self._checked(kind, key, local)
        if not self.exists(kind, key):
            raise FileNotFoundError(f"artifact {kind}/{key} is not in the store {self.url}")
        tmp = self._private(f"get-{kind}-{key}")
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
        return self._checked(kind, key, local)

    @contextlib.contextmanager
    def writer(self, kind: str, key: str) -> Iterator[Path]:
        tmp = self._private(f"{kind}-{key}")
        try:
            yield tmp
            if not self.exists(kind, key):
                remote = self._remote(kind, key)
                for f in sorted(tmp.rglob("*")):
                    if f.is_file():
                        rel = f.relative_to(tmp).as_posix()
                        self.fs.makedirs(f"{remote}/{Path(rel).parent.as_posix()}", exist_ok=True)
                        self.fs.put_file(str(f), f"{remote}/{rel}")
                self.fs.pipe_file(f"{remote}/{MARKER}", _marker(kind, key, tmp).encode())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _marker(kind: str, key: str, folder: Path) -> str:
    """The commit marker of ``folder`` as ``kind/key``: JSON with the time, the checksummed file
    manifest (:func:`manifest_of`) and :func:`step_environment`."""
    return json.dumps({"kind": kind, "key": key, "time": time.time(), "files": manifest_of(folder),
                       "env": step_environment()})


def step_environment() -> dict:
    """What a step's numbers may depend on besides its key: the torch thread count (recorded in the
    commit marker so that a store mixing artifacts made with different counts can say so)."""
    try:
        import torch

        return {"torch_threads": torch.get_num_threads()}
    except ImportError:  # pragma: no cover
        return {}


def open_store(location: str | Path) -> ArtifactStore:
    """A local :class:`ArtifactStore` for a path, a :class:`FsspecStore` for a URL with a protocol."""
    s = str(location)
    if "://" in s and not s.startswith("file://"):
        return FsspecStore(s)
    return ArtifactStore(s.removeprefix("file://"))
