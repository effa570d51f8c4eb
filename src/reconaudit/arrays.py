"""Studies on disk: chunked arrays along the study axis, written shard by shard, read lazily.

Every per-study array of an audit (a cohort's images, masks and k-space; degraded inputs;
reconstructions) is a zarr v3 array whose first axis is the study.  One *inner chunk* is one
study (a random training batch reads exactly its studies) and one *shard* (one file on disk) holds
``shard_studies`` consecutive studies, the unit of writing and of streaming steps.  Floating and
complex arrays are stored uncompressed in the dtype they were computed in (a read is a copy of the
file's bytes, bit for bit), integer and boolean masks with zstd.  Zarr is a maintained format that
reads local directories and object stores alike (through fsspec), so a store on ``s3://`` works
the same way.

:class:`ArrayWriter` writes a group of such arrays from batches of any size (it keeps at most one
shard per array in memory); :class:`StudyArray` is the lazy reader: ``array[idx]`` reads only the
studies at ``idx`` and returns a torch tensor, ``array.take(idx)`` is a view of a subset (a split)
that reads nothing, and :meth:`StudyArray.shards` yields the shard ranges of a streaming loop.
:data:`READS` counts the studies read per array name, so a test can show that a step never reads a
whole split at once.

This module knows nothing of the rest of the package (numpy, torch and zarr only).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

#: Studies per shard when the config does not say (``execution.shard_studies``): a multiple of
#: every internal batch size (256, 64, 32), so streaming with it computes the same batches as the
#: in-memory loops did.
DEFAULT_SHARD_STUDIES = 1024

_TORCH_DTYPES = {
    np.dtype("float32"): torch.float32,
    np.dtype("float64"): torch.float64,
    np.dtype("float16"): torch.float16,
    np.dtype("complex64"): torch.complex64,
    np.dtype("uint8"): torch.uint8,
    np.dtype("int64"): torch.int64,
    np.dtype("int32"): torch.int32,
    np.dtype("bool"): torch.bool,
}


class ArrayStoreError(ValueError):
    """A study array is missing, malformed or was written incompletely; the message names the file."""

    retryable = False


class ReadCounter:
    """Counts the studies read from study arrays, per array name (thread-safe).

    ``largest`` is the largest number of studies one read returned; ``total`` the sum.  Reset with
    :meth:`reset`; tests use it to show that a step reads in batches, never a whole split.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every count."""
        with getattr(self, "_lock", threading.Lock()):
            self.total: dict[str, int] = {}
            self.largest: dict[str, int] = {}

    def add(self, name: str, n: int) -> None:
        """Record one read of ``n`` studies from the array ``name``."""
        with self._lock:
            self.total[name] = self.total.get(name, 0) + n
            self.largest[name] = max(self.largest.get(name, 0), n)


#: The process-wide read counter of every :class:`StudyArray`.
READS = ReadCounter()

#: Studies per zarr call of a scattered read (positions that are not one contiguous run): see
#: :meth:`StudyArray._scattered`.
SCATTERED_READ = 64


def shard_ranges(n: int, shard_studies: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive shards of ``shard_studies`` covering ``range(n)``."""
    if shard_studies < 1:
        raise ValueError(f"shard_studies must be at least 1, got {shard_studies}")
    for start in range(0, n, shard_studies):
        yield start, min(n, start + shard_studies)


def _np(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(batch)


class LazyStudies:
    """What every lazy per-study array offers: ``shape``, ``ndim``, ``dtype``, ``len``, ``take(idx)``
    (a view, nothing read) and ``[idx]`` (a torch tensor of those studies).  See :class:`StudyArray`
    and :class:`MappedArray`."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def shards(self, shard_studies: int) -> Iterator[tuple[int, int]]:
        """The ``(start, stop)`` ranges of a loop over this view in shards (see :func:`shard_ranges`)."""
        return shard_ranges(len(self), shard_studies)

    def load(self) -> torch.Tensor:
        """Every study of the view in memory (only for data known to be small)."""
        return self[slice(None)]


def is_lazy(x: object) -> bool:
    """Whether ``x`` is a lazy per-study array (:class:`LazyStudies`) rather than an in-memory tensor."""
    return isinstance(x, LazyStudies)


class StudyArray(LazyStudies):
    """A lazy (N, ...) array of studies on disk; indexing reads only the studies asked for.

    Parameters
    ----------
    array:
        The zarr array (first axis: studies).
    rows:
        Optional positions of the underlying array this view covers (a split); ``None`` = all.
    name:
        The name reads are counted under in :data:`READS` (default: the array's path).

    ``shape``, ``ndim``, ``dtype`` (a torch dtype) and ``len`` are those of the view.  ``view[idx]``
    with an int, a slice, a sequence / array / tensor of positions, or a tuple whose first element
    is one of these (the rest index the result) returns a torch tensor, in the order asked for.
    """

    def __init__(self, array, rows: np.ndarray | None = None, name: str | None = None) -> None:
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.name = name if name is not None else str(getattr(array, "path", "array"))

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, ...]:
        n = int(self.array.shape[0]) if self.rows is None else len(self.rows)
        return (n, *tuple(int(s) for s in self.array.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[np.dtype(self.array.dtype)]

    def __repr__(self) -> str:
        return f"StudyArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def take(self, idx: np.ndarray | list[int] | torch.Tensor) -> StudyArray:
        """A view of the studies at positions ``idx`` of this view (nothing is read)."""
        pos = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
        return StudyArray(self.array, pos if self.rows is None else self.rows[pos], self.name)

    # ------------------------------------------------------------------ reads
    def _positions(self, idx) -> tuple[np.ndarray | slice, bool]:
        n = len(self)
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step == 1 and self.rows is None:
                return slice(start, max(start, stop)), False
            pos = np.arange(start, stop, step, dtype=np.int64)
        elif isinstance(idx, int | np.integer):
            i = int(idx)
            if not -n <= i < n:
                raise IndexError(f"{self.name}: index {i} is out of range for {n} studies")
            pos = np.array([i % n], dtype=np.int64)
            return (pos if self.rows is None else self.rows[pos]), True
        else:
            if isinstance(idx, torch.Tensor):
                idx = idx.cpu().numpy()
            pos = np.asarray(idx)
            if pos.dtype == bool:
                pos = np.flatnonzero(pos)
            pos = pos.astype(np.int64).reshape(-1)
            if pos.size and (pos.min() < -n or pos.max() >= n):
                raise IndexError(f"{self.name}: positions out of range for {n} studies")
            pos = pos % n if n else pos
        if self.rows is not None:
            pos = self.rows[pos]
        return pos, False

    def read(self, idx) -> torch.Tensor:
        """The studies at ``idx`` (see the class docstring) as a torch tensor."""
        pos, scalar = self._positions(idx)
        if isinstance(pos, slice):
            data = self.array[pos]
            count = pos.stop - pos.start
        elif pos.size == 0:
            data = np.zeros((0, *self.shape[1:]), dtype=self.array.dtype)
            count = 0
        elif pos.size > 1 and np.all(np.diff(pos) == 1):
            data = self.array[int(pos[0]) : int(pos[-1]) + 1]
            count = pos.size
        else:
            uniq, inverse = np.unique(pos, return_inverse=True)
            data = self._scattered(uniq)
            if uniq.size != pos.size or np.any(uniq != pos):
                data = data[inverse]
            count = pos.size
        READS.add(self.name, int(count))
        t = torch.from_numpy(np.ascontiguousarray(data))
        return t[0] if scalar else t

    def _scattered(self, uniq: np.ndarray) -> np.ndarray:
        """The studies at the sorted, distinct positions ``uniq``, read :data:`SCATTERED_READ` at a time.

        zarr's orthogonal selection holds transient memory per chunk it decodes (~0.3 MB each for
        a few hundred scattered 64x64 studies, more than the data), so a long scattered read (a
        test split's shard) goes in pieces into one output array; the bytes are the same.
        """
        if uniq.size <= SCATTERED_READ:
            return self.array.get_orthogonal_selection((uniq,))
        out = np.empty((uniq.size, *self.array.shape[1:]), dtype=self.array.dtype)
        for i in range(0, uniq.size, SCATTERED_READ):
            out[i : i + SCATTERED_READ] = self.array.get_orthogonal_selection((uniq[i : i + SCATTERED_READ],))
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, tuple):
            first, rest = idx[0], idx[1:]
            out = self.read(first)
            return out[(slice(None), *rest)] if not isinstance(first, int | np.integer) else out[rest]
        return self.read(idx)


class MappedArray(LazyStudies):
    """A lazy per-study array whose batches are ``fn(source[idx])`` (``fn`` works study by study,
    e.g. a dtype conversion or the direct arm's k-space channels); ``shape`` and ``dtype`` are those
    of ``fn``'s output (found by applying it to the first study)."""

    def __init__(self, source: LazyStudies, fn, shape: tuple[int, ...] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.source, self.fn = source, fn
        if shape is None or dtype is None:
            probe = fn(source[0:1]) if len(source) else fn(source[0:0])
            shape = (len(source), *tuple(probe.shape[1:]))
            dtype = probe.dtype
        self.shape = (len(source), *tuple(shape[1:]))
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"MappedArray({self.source!r}, shape={self.shape}, dtype={self.dtype})"

    def take(self, idx) -> MappedArray:
        """A view of the studies at ``idx`` (nothing is read)."""
        return MappedArray(self.source.take(idx), self.fn, self.shape, self.dtype)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, tuple):
            out = self[idx[0]]
            return out[(slice(None), *idx[1:])] if not isinstance(idx[0], int | np.integer) else out[idx[1:]]
        if isinstance(idx, int | np.integer):
            return self.fn(self.source[int(idx) : int(idx) + 1 or None])[0]
        return self.fn(self.source[idx])


def as_tensor(x):
    """``x`` in memory: a lazy array (:class:`LazyStudies`) is read whole; anything else is returned as is."""
    return x.load() if is_lazy(x) else x


def to_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 (a picklable :class:`MappedArray` function)."""
    return t.to(torch.float32)


def as_float_view(x: LazyStudies) -> LazyStudies:
    """``x`` read as float32, lazily (``x`` itself when it already is)."""
    return x if x.dtype == torch.float32 else MappedArray(x, to_float32, x.shape, torch.float32)


def view(x, idx):
    """The studies at ``idx`` of ``x``: a lazy view of a lazy array, an indexed copy of a tensor or
    numpy array, ``None`` for ``None``."""
    if x is None:
        return None
    if is_lazy(x):
        return x.take(idx)
    if isinstance(x, np.ndarray):
        return x[np.asarray(idx, dtype=np.int64)]
    return x[torch.as_tensor(np.asarray(idx), dtype=torch.long)]


class _Batches(torch.utils.data.Dataset):
    """Item ``i`` is ``tuple(a[batches[i]] for a in arrays)`` (``None`` arrays give ``None``; an object
    with a ``subset`` method, such as a ``Degraded`` batch, gives ``a.subset(batches[i])``)."""

    def __init__(self, arrays: tuple, batches: list) -> None:
        self.arrays, self.batches = arrays, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        idx = self.batches[i]
        return tuple(None if a is None else a.subset(idx) if hasattr(a, "subset") else a[idx] for a in self.arrays)


def batch_loader(arrays: tuple, batches: list, *, device: torch.device | str = "cpu",
                 workers: int | None = None) -> torch.utils.data.DataLoader:
    """A :class:`torch.utils.data.DataLoader` yielding ``tuple(a[idx] for a in arrays)`` per index batch.

    The batches (index tensors, e.g. an epoch's shuffled order cut into mini-batches) are read in
    order, so the numbers do not depend on the loader.  On CPU it reads in the calling process; on
    CUDA (``workers`` defaults to 2 there) background workers read ahead (``prefetch_factor`` 2) into
    pinned memory, so loading from the store does not starve the GPU.  ``arrays`` may mix tensors
    and lazy arrays (:class:`LazyStudies`) and ``None``.
    """
    cuda = torch.device(device).type == "cuda"
    n_workers = (2 if cuda else 0) if workers is None else int(workers)
    kw = {"prefetch_factor": 2, "persistent_workers": False} if n_workers else {}
    return torch.utils.data.DataLoader(_Batches(tuple(arrays), list(batches)), batch_size=None, shuffle=False,
                                       num_workers=n_workers, pin_memory=cuda, collate_fn=_identity, **kw)


def _identity(x):
    return x


class ArrayWriter:
    """Writes a group of study arrays at ``path`` (a zarr v3 directory or fsspec URL), shard by shard.

    ``append(name, batch)`` adds the next studies of array ``name`` (any batch size); a shard is
    written once ``shard_studies`` studies are buffered, so memory is at most one shard (plus one
    batch) per array.  ``write(name, start, batch)`` writes a shard-aligned block directly (shard
    tasks on several workers each write their own shards of one array created with :meth:`create`).
    ``close()`` writes what is buffered and checks that every array received exactly ``n`` studies.
    ``constant(name, tensor)`` stores a small array without a study axis (a mask shared by all).
    """

    def __init__(self, path: str | Path, n: int, shard_studies: int = DEFAULT_SHARD_STUDIES, *,
                 mode: str = "w") -> None:
        import zarr

        if shard_studies < 1:
            raise ValueError(f"shard_studies must be at least 1, got {shard_studies}")
        self.path = str(path)
        self.n = int(n)
        self.shard = int(shard_studies)
        self.group = zarr.open_group(self.path, mode=mode)
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._written: dict[str, int] = {}

    def create(self, name: str, tail: tuple[int, ...], dtype: np.dtype | str | torch.dtype):
        """Create array ``name`` of shape ``(n, *tail)`` (existing: returned as is)."""
        if name in self.group:
            return self.group[name]
        if isinstance(dtype, torch.dtype):
            dtype = torch.empty(0, dtype=dtype).numpy().dtype
        dtype = np.dtype(dtype)
        inner = (1, *tail)
        outer = (max(1, min(self.shard, self.n)), *tail)
        compressors = None if dtype.kind in "fc" else "auto"
        return self.group.create_array(name, shape=(self.n, *tail), chunks=inner, shards=outer, dtype=dtype,
                                       compressors=compressors, fill_value=0)

    def append(self, name: str, batch: torch.Tensor | np.ndarray) -> None:
        """Add the next ``len(batch)`` studies of array ``name``."""
        a = _np(batch)
        arr = self.create(name, tuple(a.shape[1:]), a.dtype)
        if tuple(arr.shape[1:]) != tuple(a.shape[1:]) or np.dtype(arr.dtype) != a.dtype:
            raise ArrayStoreError(f"{self.path}/{name}: a batch of shape {a.shape[1:]} {a.dtype} does not fit the "
                                  f"array's {tuple(arr.shape[1:])} {arr.dtype}")
        buf = self._buffers.setdefault(name, [])
        buf.append(a)
        if sum(len(b) for b in buf) >= self.shard:
            self._flush(name, final=False)

    def _flush(self, name: str, *, final: bool) -> None:
        buf = self._buffers.get(name, [])
        if not buf:
            return
        data = np.concatenate(buf, 0) if len(buf) > 1 else buf[0]
        done = self._written.get(name, 0)
        k = len(data) if final else (len(data) // self.shard) * self.shard
        if done + k > self.n:
            raise ArrayStoreError(f"{self.path}/{name}: more than the {self.n} studies it was created for")
        if k:
            self.group[name][done : done + k] = data[:k]
        self._written[name] = done + k
        self._buffers[name] = [data[k:]] if k < len(data) else []

    def write(self, name: str, start: int, batch: torch.Tensor | np.ndarray) -> None:
        """Write ``batch`` at studies ``start:start+len(batch)`` of array ``name`` (created beforehand)."""
        if name not in self.group:
            raise ArrayStoreError(f"{self.path}/{name}: create the array before writing blocks into it")
        a = _np(batch)
        arr = self.group[name]
        if tuple(arr.shape[1:]) != tuple(a.shape[1:]) or np.dtype(arr.dtype) != a.dtype:
            raise ArrayStoreError(f"{self.path}/{name}: a batch of shape {a.shape[1:]} {a.dtype} does not fit the "
                                  f"array's {tuple(arr.shape[1:])} {arr.dtype}")
        if start < 0 or start + len(a) > arr.shape[0]:
            raise ArrayStoreError(f"{self.path}/{name}: studies {start}:{start + len(a)} are outside the array's "
                                  f"{arr.shape[0]}")
        arr[start : start + len(a)] = a

    def constant(self, name: str, value: torch.Tensor | np.ndarray) -> None:
        """Store a small array without a study axis (one chunk)."""
        a = _np(value)
        arr = self.group.create_array(name, shape=a.shape, chunks=a.shape or (1,), dtype=a.dtype, fill_value=0,
                                      compressors=None)
        arr[...] = a
        self.group.attrs[f"constant:{name}"] = True

    def close(self) -> None:
        """Write what is buffered; raise :class:`ArrayStoreError` if an appended array is incomplete."""
        for name in list(self._buffers):
            self._flush(name, final=True)
        for name, got in self._written.items():
            if got != self.n:
                raise ArrayStoreError(f"{self.path}/{name}: {got} studies were written, {self.n} expected")


def open_arrays(path: str | Path) -> dict[str, StudyArray | torch.Tensor]:
    """The arrays of a group written by :class:`ArrayWriter`: study arrays lazily, constants in memory."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError) as e:
        raise ArrayStoreError(f"{path}: not a study-array store ({e})") from e
    out: dict[str, StudyArray | torch.Tensor] = {}
    attrs = dict(group.attrs)
    for name in sorted(group.array_keys()):
        arr = group[name]
        if attrs.get(f"constant:{name}"):
            out[name] = torch.from_numpy(np.ascontiguousarray(arr[...]))
        else:
            out[name] = StudyArray(arr, name=f"{Path(str(path)).name}/{name}")
    return out
