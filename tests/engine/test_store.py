"""The artifact store: atomic commits, races, and cleanup after a kill."""

import os
import threading

import pytest

from reconaudit.engine.store import (
    ArtifactStore,
    CorruptArtifactError,
    FsspecStore,
    atomic_write_text,
    content_key,
    open_store,
)


def test_content_key_is_canonical():
    assert content_key("k", {"a": 1, "b": [1, 2]}) == content_key("k", {"b": [1, 2], "a": 1})
    assert content_key("k", {"a": 1}) != content_key("k", {"a": 2})
    assert content_key("k", {"a": 1}, 1) != content_key("k", {"a": 1}, 2)


def test_commit_is_atomic_and_failed_write_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with store.writer("x", "k1") as d:
            (d / "half.txt").write_text("partial")
            raise RuntimeError("killed midway")
    assert not store.exists("x", "k1")
    assert not (tmp_path / "s" / "x" / "k1").exists()
    assert list((tmp_path / "s" / ".tmp").iterdir()) == []
    with store.writer("x", "k1") as d:
        (d / "a.txt").write_text("done")
    assert store.exists("x", "k1")
    assert (store.path("x", "k1") / "a.txt").read_text() == "done"


def test_uncommitted_directory_is_not_an_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "x" / "k").mkdir(parents=True)
    (tmp_path / "x" / "k" / "f").write_text("stale")
    assert not store.exists("x", "k")
    with pytest.raises(FileNotFoundError):
        store.path("x", "k")
    with store.writer("x", "k") as d:  # replaces the stale directory
        (d / "f").write_text("fresh")
    assert (store.path("x", "k") / "f").read_text() == "fresh"


def test_racing_writers_produce_one_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    barrier = threading.Barrier(4)

    def write(i):
        with store.writer("x", "same") as d:
            (d / "v.txt").write_text(f"writer {i}")
            barrier.wait()

    ts = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    p = store.path("x", "same")
    assert sorted(os.listdir(p)) == ["_COMMITTED", "v.txt"]
    assert (p / "v.txt").read_text().startswith("writer ")
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_clean_tmp_removes_only_directories_whose_owner_is_gone(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    store = ArtifactStore(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (tmp_path / ".tmp" / f"x-k@{host}@{dead.pid}@aaaa").mkdir()  # its process has exited
    (tmp_path / ".tmp" / f"x-k@{host}@{os.getpid()}@bbbb").mkdir()  # a live step (this process)
    (tmp_path / ".tmp" / "x-k@otherhost@1@cccc").mkdir()  # another host: kept until it is old
    assert store.clean_tmp() == 1
    assert sorted(p.name.split("@")[-1] for p in (tmp_path / ".tmp").iterdir()) == ["bbbb", "cccc"]
    old = time.time() - 2 * 86400
    os.utime(tmp_path / ".tmp" / "x-k@otherhost@1@cccc", (old, old))
    assert store.clean_tmp() == 1
    assert [p.name.split("@")[-1] for p in (tmp_path / ".tmp").iterdir()] == ["bbbb"]


def _committed(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    with store.writer("x", "k") as d:
        (d / "t.bin").write_bytes(bytes(range(256)) * 64)
        (d / "sub").mkdir()
        (d / "sub" / "m.json").write_text("{}")
    return store


@pytest.mark.parametrize("damage", ["zero-range", "truncate", "delete", "marker"])
def test_a_damaged_artifact_is_quarantined_and_never_read(tmp_path, damage, caplog):
    _committed(tmp_path)
    f = tmp_path / "s" / "x" / "k" / "t.bin"
    if damage == "zero-range":
        data = bytearray(f.read_bytes())
        data[1000:3000] = bytes(2000)
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "delete":
        f.unlink()
    else:
        (tmp_path / "s" / "x" / "k" / "_COMMITTED").write_text("{not json")
    fresh = ArtifactStore(tmp_path / "s")  # a new process: nothing verified yet
    assert fresh.exists("x", "k")  # the cheap check still sees a marker
    with caplog.at_level("WARNING"), pytest.raises(CorruptArtifactError, match="x/k failed verification"):
        fresh.path("x", "k")
    assert not fresh.exists("x", "k") and not fresh.verified("x", "k")
    moved = list((tmp_path / "s" / ".quarantine").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("x-k-")
    assert str(moved[0]) in caplog.text and (moved[0] / "REASON").exists()


def test_an_intact_artifact_verifies_and_lists_checksums(tmp_path):
    import hashlib
    import json

    store = _committed(tmp_path)
    fresh = ArtifactStore(tmp_path / "s")
    assert fresh.verified("x", "k")
    marker = json.loads((fresh.path("x", "k") / "_COMMITTED").read_text())
    want = hashlib.blake2b(bytes(range(256)) * 64, digest_size=32).hexdigest()
    assert marker["files"]["t.bin"] == {"size": 256 * 64, "blake2b": want}
    assert set(marker["files"]) == {"t.bin", "sub/m.json"}
    assert store.checksum("x", "k", "t.bin") == want


def test_atomic_write_text(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]


def test_fsspec_store_commits_marker_last(tmp_path):
    store = open_store("memory://reconaudit-test-store")
    assert isinstance(store, FsspecStore)
    with pytest.raises(RuntimeError):
        with store.writer("x", "k") as d:
            (d / "a.txt").write_text("partial")
            raise RuntimeError
    assert not store.exists("x", "k")
    with store.writer("x", "k") as d:
        (d / "sub").mkdir()
        (d / "sub" / "a.txt").write_text("hello")
    assert store.exists("x", "k")
    assert (store.path("x", "k") / "sub" / "a.txt").read_text() == "hello"


def test_two_workers_never_compute_one_step_twice(tmp_path, monkeypatch):
    import time

    from reconaudit.engine import steps
    from reconaudit.engine.plan import Step

    calls = []

    def slow_step(spec, ctx, out):
        calls.append(1)
        time.sleep(0.3)
        (out / "records.parquet").write_bytes(b"x")

    monkeypatch.setitem(steps.STEP_FUNCS, "cohort", slow_step)
    step = Step("cohort", "k" * 20, {})
    results = []

    def worker():
        ctx = steps.StepContext(ArtifactStore(tmp_path))  # each worker its own store handle
        results.append(steps.run_step(step, ctx))

    ts = [threading.Thread(target=worker) for _ in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert calls == [1] and sorted(results) == [False, False, True]


def test_fsspec_store_quarantines_a_damaged_artifact(tmp_path):
    import uuid

    url = f"memory://reconaudit-damage-{uuid.uuid4().hex[:6]}"
    store = open_store(url)
    with store.writer("x", "k") as d:
        (d / "a.bin").write_bytes(b"0123456789")
    store.fs.pipe_file(f"{store._remote('x', 'k')}/a.bin", b"01234XXXXX")
    fresh = FsspecStore(url, cache_dir=tmp_path / "cache")
    with pytest.raises(CorruptArtifactError, match="differs from its committed checksum"):
        fresh.path("x", "k")
    assert not fresh.exists("x", "k")
    assert store.fs.find(f"{store._base}/.quarantine")
