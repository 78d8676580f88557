"""atomic_write: a reader finds the old file or the new one, never half of one, and no temporary is left behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tokenizers.load import atomic_write


def test_the_file_appears_only_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "x.json"
    with atomic_write(path) as tmp:
        assert tmp == tmp_path / "sub" / f".x.json.tmp-{os.getpid()}" and tmp.parent.is_dir()
        tmp.write_text(json.dumps({"a": 1}))
        assert not path.exists()
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in path.parent.iterdir()] == ["x.json"]


@pytest.mark.parametrize("fsync", [False, True])
def test_writers_that_take_a_path_or_a_file(tmp_path, fsync):
    with atomic_write(tmp_path / "w.pt", fsync=fsync) as tmp:
        torch.save({"w": torch.ones(3)}, tmp)
    with atomic_write(tmp_path / "a.npy", fsync=fsync) as tmp, open(tmp, "wb") as f:
        np.save(f, np.arange(4))  # a file: np.save would append ".npy" to the temporary name
    assert torch.equal(torch.load(tmp_path / "w.pt")["w"], torch.ones(3))
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "w.pt"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(error), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise error("stop")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_a_folder_is_published_whole_and_a_failed_one_removed(tmp_path):
    path = tmp_path / "store"
    with atomic_write(path) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
    assert (path / "a.txt").read_text() == "a"
    with pytest.raises(OSError), atomic_write(path) as tmp:  # a full folder is not replaced
        tmp.mkdir()
        (tmp / "b.txt").write_text("b")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "other") as tmp:
        tmp.mkdir()
        (tmp / "c.txt").write_text("c")
        raise RuntimeError("stop")
    assert [p.name for p in tmp_path.iterdir()] == ["store"] and [p.name for p in path.iterdir()] == ["a.txt"]


def test_a_leftover_of_a_killed_process_with_the_same_pid_is_replaced(tmp_path):
    stale = tmp_path / f".x.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("junk")
    with atomic_write(tmp_path / "x") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "x").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x"]
