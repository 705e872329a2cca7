"""Preprocessed items streamed from disk: one memory-mapped shard per dataset.

For datasets whose float32 arrays do not fit comfortably in memory, every item is
preprocessed once (decode, resize, steps, normalise: :func:`medclf.data.preprocess.finish`)
into one NumPy ``.npy`` file (``numpy.lib.format``; created sparse with ``open_memmap``) of
shape ``(N, C, *spatial)`` in ``data.storage_dtype`` (float16 by default, half the bytes of
float32 and within 1e-3 relative of it; float32 bit-exact). Training, evaluation and
prediction read rows through :class:`DiskImages` with ``os.pread`` (rows written with
``os.pwrite``), which the DataLoader's worker processes re-open by path; the operating
system's page cache holds what fits, outside the processes' resident memory (a memory map
would count every touched page), so resident memory does not grow with the number of images.

The shard lives in ``<cache root>/shards/<key>/`` (:func:`medclf.data.preprocess.cache_root`):

* ``images.npy``: the arrays, in manifest order;
* ``status.npy``: uint8 ``(N,)``, 0 = not yet written, 1 = written, 2 = unreadable;
* ``sha.npy``: the content hash of each item (``S64``), the ``sha`` column of ``split.csv``;
* ``bad.jsonl``: ``{"index", "reason"}`` of each unreadable item;
* ``index.json``: the paths, the item shape and dtype, and ``complete``.

The key hashes the preprocessing settings, the storage dtype and every item's path, size
and modification time, so a changed setting or file gives a new shard. Writing is resumable:
an interrupted run (killed, out of memory, power cut of the process) leaves the items
written so far marked in ``status.npy``, and the next run decodes only the others. Items are
decoded in parallel by the worker processes of a PyTorch ``DataLoader`` and written by the
main process, with a tqdm progress bar (rate and ETA). A file lock (``fcntl.flock``) lets
several processes (DDP ranks, nodes sharing the cache on a network file system) build the
same shard once: the others wait and then read it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError, UnreadableImage
from ..io import atomic_write
from .formats import content_digest
from .preprocess import cache_root, decode_file, finish, settings_key

log = logging.getLogger("medclf")

TODO, WRITTEN, BAD = 0, 1, 2
MEMORY_SHARE = 0.15  # in-memory arrays may take at most this share of the available memory
MEMORY_LIMIT = 2 ** 30  # ... and at most this many bytes (float32), else "auto" streams from disk
FLUSH_SECONDS = 2.0


def available_memory() -> int:
    """Bytes of memory available to new processes (``MemAvailable`` of /proc/meminfo; where
    there is none, the physical memory from ``os.sysconf``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimated_bytes(n_items: int, config) -> int:
    """Bytes of the float32 arrays ``(N, C, *image_size)`` the in-memory path would hold."""
    return 4 * n_items * config.data.in_channels * int(np.prod(config.data.image_size))


def choose_storage(n_items: int, config, available: int | None = None) -> tuple[str, str]:
    """Where the preprocessed items of a run are kept: ``'memory'`` or ``'disk'``.

    ``data.storage`` ``'memory'``/``'disk'`` are taken as given; ``'auto'`` streams from
    disk when the float32 arrays would exceed :data:`MEMORY_LIMIT` bytes or
    :data:`MEMORY_SHARE` of the available memory (:func:`available_memory`), which leaves
    room for the copies the in-memory path makes while stacking.

    Returns:
        ``(storage, reason)``, the reason a sentence for the log.

    Raises:
        ConfigError: ``data.storage='disk'`` with ``preprocess.resize='none'`` (items of
            different shapes cannot share one shard).
    """
    setting = getattr(config.data, "storage", "auto")
    need = estimated_bytes(n_items, config)
    if setting == "disk" and config.preprocess.resize == "none":
        raise ConfigError("data.storage=disk needs preprocess.resize=resize (one item shape per shard)")
    if setting != "auto":
        return setting, f"data.storage={setting}"
    if config.preprocess.resize == "none":
        return "memory", "preprocess.resize=none (item shapes may differ)"
    available = available_memory() if available is None else available
    limit = min(MEMORY_LIMIT, int(MEMORY_SHARE * available))
    gib = 2 ** 30
    if need > limit:
        return "disk", (f"{n_items} items need {need / gib:.2f} GiB as float32, more than "
                        f"{limit / gib:.2f} GiB (min of {MEMORY_LIMIT / gib:.0f} GiB and {MEMORY_SHARE:.0%} "
                        f"of {available / gib:.1f} GiB available)")
    return "memory", f"{n_items} items need {need / gib:.2f} GiB as float32, at most {limit / gib:.2f} GiB"


def _stat(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path.split("#", 1)[0])
        return info.st_size, info.st_mtime_ns
    except OSError:
        return -1, -1


def shard_key(paths: list[str], config) -> str:
    """Hash of the preprocessing settings, the storage dtype and every item's path, size and
    modification time (``os.stat``; no file is read)."""
    hasher = hashlib.sha1(f"{settings_key(config)}|{storage_dtype(config)}|".encode())
    for path in paths:
        size, mtime = _stat(path)
        hasher.update(f"{path}\0{size}\0{mtime}\n".encode())
    return hasher.hexdigest()[:20]


def storage_dtype(config) -> str:
    """``data.storage_dtype`` (float16 unless set)."""
    return getattr(config.data, "storage_dtype", "float16")


def item_shape(config) -> tuple[int, ...]:
    """``(C, *image_size)`` of every stored item."""
    return (config.data.in_channels, *config.data.image_size)


class _DecodeItems(Dataset):
    """Decodes and preprocesses the items ``todo`` (manifest positions) of ``paths``."""

    def __init__(self, paths: list[str], todo: np.ndarray, config):
        self.paths, self.todo, self.config = paths, todo, config

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        index = int(self.todo[k])
        return (index, *preprocess_item(self.paths[index], self.config))


def preprocess_item(path: str, config) -> tuple[np.ndarray | None, str, str]:
    """Read, decode and preprocess one item without the per-file cache.

    Returns:
        ``(array, content_hash, error)``: float32 ``(C, *spatial)`` and ``''`` or, for an
        unreadable item, ``(None, '', reason)``.
    """
    try:
        digest, data = content_digest(path)
        raw, full_scale = decode_file(path, config, data)
        return finish(raw, full_scale, config), digest, ""
    except UnreadableImage as err:
        return None, "", str(err)
    except OSError as err:
        return None, "", f"cannot read file ({err.strerror or err})"


def _identity(item):
    return item


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the workers are the parallelism


def decode_workers(n_items: int) -> int:
    """Worker processes that decode while building a shard: one per CPU (at most 8), none for
    fewer than 64 items (starting workers costs more than it saves)."""
    return 0 if n_items < 64 else max(1, min(8, os.cpu_count() or 1))


@contextlib.contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Shard:
    """One built (or partly built) shard folder; see the module docstring for the files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text(encoding="utf-8"))

    @property
    def images_path(self) -> Path:
        return self.folder / "images.npy"

    def status(self) -> np.ndarray:
        """uint8 ``(N,)``: 0 not written, 1 written, 2 unreadable."""
        return np.load(self.folder / "status.npy", mmap_mode="r")

    def hashes(self) -> list[str]:
        return [h.decode() for h in np.load(self.folder / "sha.npy")]

    def bad(self) -> dict[int, str]:
        """``{manifest position: reason}`` of the unreadable items."""
        path = self.folder / "bad.jsonl"
        if not path.exists():
            return {}
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                out[int(record["index"])] = record["reason"]
        return out

    def images(self, rows) -> DiskImages:
        """A :class:`DiskImages` view of the given manifest positions."""
        return DiskImages(self.images_path, rows)


def build_shard(paths: list[str], config, workers: int | None = None, progress: bool = True) -> Shard:
    """Preprocess every item into the shard of ``paths`` (resuming one left unfinished).

    Args:
        paths: the manifest's item paths, in order.
        config: the run's configuration (``data``, ``preprocess``, ``model.spatial_dims``).
        workers: decoding processes (default :func:`decode_workers`).
        progress: show a tqdm progress bar with the rate and the ETA.

    Returns:
        the :class:`Shard`, every item written (status 1) or unreadable (status 2).

    Raises:
        DataError: the cache's disk lacks the space for the items still to write, or an
            item preprocesses to another shape than the shard's.
        OSError: the cache folder cannot be written.
    """
    folder = cache_root(config) / "shards" / shard_key(paths, config)
    shape, dtype = item_shape(config), storage_dtype(config)
    with _locked(folder):
        index_path = folder / "index.json"
        if index_path.exists() and json.loads(index_path.read_text(encoding="utf-8")).get("complete"):
            return Shard(folder)
        n = len(paths)
        if not (folder / "images.npy").exists() or not index_path.exists():
            np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=dtype, shape=(n, *shape)).flush()
            np.save(folder / "sha.npy", np.zeros(n, dtype="S64"))
            np.save(folder / "status.npy", np.zeros(n, dtype=np.uint8))
            (folder / "bad.jsonl").write_text("", encoding="utf-8")
            _write_index(index_path, paths, shape, dtype, complete=False)
        layout = NpyLayout(folder / "images.npy")
        status = np.load(folder / "status.npy", mmap_mode="r+")
        hashes = np.load(folder / "sha.npy", mmap_mode="r+")
        todo = np.flatnonzero(status == TODO)
        done = n - len(todo)
        need, free = len(todo) * layout.row_bytes, shutil.disk_usage(folder).free
        if need > free:
            raise DataError(f"the disk cache {folder} needs {need / 2 ** 30:.1f} GiB more but its disk has "
                            f"{free / 2 ** 30:.1f} GiB free: free space, or set data.cache_dir (or $MEDCLF_CACHE) "
                            "to a larger disk")
        if done:
            log.warning("resuming the disk cache %s: %d of %d items already written", folder, done, n)
        workers = decode_workers(len(todo)) if workers is None else workers
        loader = DataLoader(_DecodeItems(paths, todo, config), batch_size=None, shuffle=False,
                            num_workers=workers, collate_fn=_identity, worker_init_fn=_one_thread,
                            prefetch_factor=4 if workers else None)
        from tqdm.auto import tqdm
        bar = tqdm(total=n, initial=done, desc="preprocessing to disk cache", unit="img",
                   disable=not progress or not len(todo), mininterval=1.0, smoothing=0.1)
        last_flush = time.monotonic()
        fd = os.open(layout.path, os.O_RDWR)
        try:
            with open(folder / "bad.jsonl", "a", encoding="utf-8") as bad_log:
                for index, array, digest, error in loader:
                    if error:
                        bad_log.write(json.dumps({"index": index, "reason": error}) + "\n")
                        bad_log.flush()
                        status[index] = BAD
                    else:
                        if tuple(array.shape) != shape:
                            raise DataError(f"{paths[index]}: preprocessed to shape {tuple(array.shape)}, "
                                            f"but the disk cache holds {shape} (data.in_channels, data.image_size)")
                        layout.write(fd, index, array)  # pwrite: the pages stay out of this process's RSS
                        hashes[index] = digest.encode()
                        status[index] = WRITTEN  # after the data: a killed run redoes at most this item
                    bar.update(1)
                    if time.monotonic() - last_flush > FLUSH_SECONDS:
                        hashes.flush(), status.flush()
                        last_flush = time.monotonic()
        finally:
            os.close(fd)
        bar.close()
        hashes.flush(), status.flush()
        del status, hashes
        _write_index(index_path, paths, shape, dtype, complete=True)
        return Shard(folder)


class NpyLayout:
    """Where the rows of an ``.npy`` array ``(N, *item)`` lie in its file (header offset,
    row bytes, dtype), to read and write single rows with ``os.pread``/``os.pwrite``: unlike
    a memory map, these leave the file's pages in the page cache only, outside the resident
    memory of the process."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        mapped = np.load(self.path, mmap_mode="r")  # parses the header; no page is read
        if not mapped.flags.c_contiguous:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.offset, self.shape, self.dtype = int(mapped.offset), tuple(mapped.shape), mapped.dtype
        del mapped
        self.item_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.item_shape)) * self.dtype.itemsize

    def write(self, fd: int, row: int, array: np.ndarray) -> None:
        """Write one item ``(C, *spatial)`` at ``row`` (converted to the file's dtype)."""
        data = np.ascontiguousarray(array, dtype=self.dtype).tobytes()
        os.pwrite(fd, data, self.offset + row * self.row_bytes)

    def read(self, fd: int, rows: np.ndarray) -> np.ndarray:
        """Float32 ``(len(rows), C, *spatial)``; runs of consecutive rows are read at once."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.item_shape), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and sorted_rows[stop] == sorted_rows[stop - 1] + 1:
                stop += 1
            count = stop - start
            data = os.pread(fd, count * self.row_bytes, self.offset + int(sorted_rows[start]) * self.row_bytes)
            if len(data) != count * self.row_bytes:
                raise OSError(f"{self.path}: short read (the shard is truncated)")
            block = np.frombuffer(data, dtype=self.dtype).reshape(count, *self.item_shape)
            out[order[start:stop]] = block
            start = stop
        return out


def _write_index(path: Path, paths: list[str], shape, dtype: str, complete: bool) -> None:
    record = {"n": len(paths), "item_shape": list(shape), "dtype": dtype, "complete": complete, "paths": paths}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record), encoding="utf-8"))


class DiskImages:
    """Rows of a shard as a read-only, tensor-like sequence ``(N, C, *spatial)``.

    Indexing with an int gives a float32 tensor ``(C, *spatial)``; with a slice, a list,
    an array or a tensor of positions, a float32 tensor ``(n, C, *spatial)``. Only the rows
    asked for are read (``os.pread``, so the file's pages stay in the page cache and out of
    the resident memory); pickling keeps the path and the rows only, so DataLoader worker
    processes open their own file descriptor.

    Args:
        path: the shard's ``images.npy``.
        rows: int ``(N,)`` positions in the shard of the items of this view.
    """

    def __init__(self, path: str | Path, rows):
        self.path = str(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._layout = NpyLayout(self.path)
        self._fd = None
        self._pid = None

    def __getstate__(self):
        return {"path": self.path, "rows": self.rows, "_layout": self._layout, "_fd": None, "_pid": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self):
        # at interpreter exit the os module may already be torn down (AttributeError, TypeError)
        with contextlib.suppress(OSError, AttributeError, TypeError):
            if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
                os.close(self._fd)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self._layout.item_shape))

    @property
    def ndim(self) -> int:
        return len(self._layout.shape)

    @property
    def dtype(self) -> np.dtype:
        """The stored number type (float16 or float32); items are returned as float32."""
        return self._layout.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def item_numpy(self, i: int) -> np.ndarray:
        """Item ``i`` as float32 ``(C, *spatial)``."""
        return self._layout.read(self._descriptor(), self.rows[i:i + 1] if i >= 0 else self.rows[[i]])[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) or (torch.is_tensor(key) and key.ndim == 0):
            return torch.from_numpy(self.item_numpy(int(key)))
        if torch.is_tensor(key):
            key = key.numpy()
        return torch.from_numpy(self._layout.read(self._descriptor(), self.rows[key]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def subset(self, positions) -> DiskImages:
        """The view of ``positions`` (of this view) without reading anything."""
        return DiskImages(self.path, self.rows[np.asarray(positions, dtype=np.int64)])


class ItemsByPath(Mapping):
    """``{path: float32 (C, *spatial) array}`` over preprocessed splits, each item read when
    asked for (the inspection's thumbnails), so the mapping holds no pixels itself.

    Args:
        paths_of: ``{split: [path, ...]}`` in the order of the split's images.
        splits: ``{split: (images, labels)}`` with images a tensor or :class:`DiskImages`.
    """

    def __init__(self, paths_of: dict[str, list[str]], splits: dict):
        self._where = {path: (split, i) for split, paths in paths_of.items() for i, path in enumerate(paths)}
        self._splits = splits

    def __getitem__(self, path: str) -> np.ndarray:
        split, i = self._where[path]
        images = self._splits[split][0]
        return images.item_numpy(i) if isinstance(images, DiskImages) else images[i].numpy()

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
