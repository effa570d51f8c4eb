"""The artifact store: atomic commits, races, and cleanup after a kill."""

import os
import threading

import pytest

from reconaudit.engine.store import ArtifactStore, FsspecStore, atomic_write_text, content_key, open_store


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


def test_clean_tmp_removes_leftovers(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / ".tmp" / "x-k-dead").mkdir()
    assert store.clean_tmp() == 1


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
