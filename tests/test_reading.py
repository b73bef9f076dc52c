"""The read stage on its own: spare buffers, thread and process readers, the window prefetcher."""

import multiprocessing
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from datalflash.convert import DatasetConverter
from datalflash.errors import StoreReadError
from datalflash.reading import ProcessReader, SpareBuffers, ThreadReader, WindowPrefetcher, make_reader
from datalflash.store import open_store
from datalflash.store.integrity import ReadAttempt
from datalflash.store.memmap import MemmapChunkStore

CHUNK = 10


@pytest.fixture
def store(tmp_path):
    """A memmap store of 95 samples ``(x[i] = [i, i+0.5], i)`` in chunks of 10, unshuffled."""
    x = torch.stack([torch.arange(95, dtype=torch.float32), torch.arange(95) + 0.5], dim=1)
    data = TensorDataset(x, torch.arange(95))
    DatasetConverter.create_chunked_dataset(
        data,
        tmp_path / "s",
        chunk_size=CHUNK,
        split_ratios={"train": 1.0},
        shuffle=False,
        backend="memmap",
        progress=False,
    )
    return open_store(tmp_path / "s")


def labels_of(arrays, rows):
    return arrays["1"][:rows].tolist()


def reading_threads():
    return [t for t in threading.enumerate() if t.name.startswith("datalflash-read")]


def test_spare_buffers_keep_the_most_recent_and_hand_out_one_large_enough():
    spare = SpareBuffers(keep=2)
    for rows in (10, 30, 20):
        spare.give((rows, f"payload-{rows}"))
    assert len(spare) == 2  # the oldest (10 rows) was dropped
    assert spare.take(25) == (30, "payload-30")
    assert spare.take(25) is None  # only the 20-row buffer is left
    assert spare.take(5) == (20, "payload-20")
    assert spare.take(1) is None


def test_thread_reader_reads_a_chunk_at_an_offset_and_reuses_buffers(store):
    reader = ThreadReader(store, threads=2)
    buffer = reader.allocate(2 * CHUNK)
    futures = [reader.read("train", 3, buffer, 0), reader.read("train", 9, buffer, CHUNK)]
    for f in futures:
        f.result(timeout=10)
    arrays = reader.arrays(buffer)
    assert labels_of(arrays, 15) == list(range(30, 40)) + list(range(90, 95))  # chunk 9 holds 5 samples
    reader.recycle(buffer)
    assert reader.allocate(CHUNK)[1] is buffer[1]  # a spare one large enough is reused
    reader.close()
    assert reading_threads() == []


def test_thread_reader_uses_the_threads_the_store_declares(store):
    class ThreeThreads(MemmapChunkStore):
        read_threads = 3

    store = ThreeThreads(store.path, store.manifest)
    started, release = threading.Event(), threading.Event()

    def block(attempt: ReadAttempt) -> None:
        started.set()
        release.wait(10)

    store.read_hook = block
    reader = make_reader(store, num_workers=0)
    buffer = reader.allocate(10 * CHUNK)
    futures = [reader.read("train", c, buffer, c * CHUNK) for c in range(8)]
    started.wait(10)
    time.sleep(0.2)
    assert len(reading_threads()) == 3
    release.set()
    for f in futures:
        f.result(timeout=10)
    reader.close()
    assert labels_of(reader.arrays(buffer), 80) == list(range(80))


def worker_init(worker_id):
    torch.manual_seed(1000 + worker_id)


def test_process_reader_reads_into_shared_memory(store):
    reader = ProcessReader(store, workers=2, context="fork", worker_init_fn=worker_init)
    assert isinstance(reader, ThreadReader) and make_reader(store, 0).__class__ is ThreadReader
    buffer = reader.allocate(3 * CHUNK)
    for chunk, offset in ((5, 0), (0, CHUNK), (9, 2 * CHUNK)):
        reader.read("train", chunk, buffer, offset).result(timeout=30)
    arrays = reader.arrays(buffer)
    assert labels_of(arrays, 25) == list(range(50, 60)) + list(range(10)) + list(range(90, 95))
    np.testing.assert_array_equal(arrays["0"][:10, 1], np.arange(50, 60) + 0.5)
    reader.close()
    assert multiprocessing.active_children() == []


def test_prefetcher_serves_windows_in_order_reading_only_needed_chunks(store):
    reads = []
    store.read_hook = lambda attempt: reads.append(attempt.start // CHUNK)
    windows = [[4, 1], [7, 2, 9], [0]]
    needed = [[4, 1], [9], [0]]  # of window 1, only chunk 9 is served
    prefetcher = WindowPrefetcher(store, "train", windows, needed, ahead=1)
    first = prefetcher.get(0)
    assert labels_of(first, 20) == list(range(40, 50)) + list(range(10, 20))
    prefetcher.release(0)
    second = prefetcher.get(1)
    assert labels_of(second, 25)[20:] == list(range(90, 95))  # rows of chunk 9, after chunks 7 and 2
    prefetcher.release(1)
    assert labels_of(prefetcher.get(2), 10) == list(range(10))
    prefetcher.close()
    assert sorted(set(reads)) == [0, 1, 4, 9]  # chunks 7 and 2 were never read


def test_prefetcher_reads_at_most_ahead_windows_beyond_the_one_in_use(store):
    reads = []
    store.read_hook = lambda attempt: reads.append(attempt.start // CHUNK)
    prefetcher = WindowPrefetcher(store, "train", [[c] for c in range(10)], ahead=1)
    prefetcher.get(0)
    time.sleep(0.3)
    assert sorted(set(reads)) == [0, 1]  # the window in use and one ahead, nothing more
    prefetcher.release(0)
    prefetcher.get(1)
    time.sleep(0.3)
    assert sorted(set(reads)) == [0, 1, 2]
    prefetcher.close()
    assert reading_threads() == []


def test_prefetcher_raises_read_errors_and_timeouts_naming_the_chunk(store):
    def broken(attempt: ReadAttempt) -> None:
        if attempt.start == 2 * CHUNK:
            raise ValueError("bad bytes")

    store.read_hook = broken
    prefetcher = WindowPrefetcher(store, "train", [[0], [2]], ahead=1)
    prefetcher.get(0)
    prefetcher.release(0)
    with pytest.raises(StoreReadError, match=r"chunk 2: ValueError: bad bytes"):
        prefetcher.get(1)
    prefetcher.close()

    store.read_hook = lambda attempt: time.sleep(1.5)
    prefetcher = WindowPrefetcher(store, "train", [[6]], timeout=0.2)
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"chunk 6 took longer than timeout=0\.2s"):
        prefetcher.get(0)
    assert time.perf_counter() - start < 1.0
    prefetcher.close()
    assert reading_threads() == []


def test_a_window_read_whole_is_kept_and_served_again_without_reading(store):
    reads = []
    store.read_hook = lambda attempt: reads.append(attempt.start // CHUNK)
    spare = SpareBuffers()
    reader = ThreadReader(store, spare=spare)
    first = WindowPrefetcher(store, "train", [[3, 0, 5]], reader=reader)
    rows = labels_of(first.get(0), 30)
    first.release(0)
    first.close()
    assert sorted(set(reads)) == [0, 3, 5]
    before = len(reads)
    again = WindowPrefetcher(store, "train", [[5, 3, 0], [1]], reader=reader)  # the same chunks, another order
    assert labels_of(again.get(0), 30) == rows and again.layout(0) == [3, 0, 5]  # as read the first time
    again.release(0)
    assert labels_of(again.get(1), 10) == list(range(10, 20)) and again.layout(1) == [1]
    again.release(1)
    again.close()
    assert set(reads[before:]) == {1}  # only chunk 1 read again
    partial = WindowPrefetcher(store, "train", [[2, 4]], [[4]], reader=reader)  # only chunk 4 needed
    partial.get(0)
    partial.release(0)
    partial.close()
    assert spare.holding("train", [2, 4]) is None  # a window not read whole is not kept as read
    reader.close()


def test_a_window_whose_read_failed_is_not_kept(store):
    failing = [True]

    def broken(attempt: ReadAttempt) -> None:
        if failing[0] and attempt.start == 2 * CHUNK:
            raise ValueError("bad bytes")

    store.read_hook = broken
    reader = ThreadReader(store)
    prefetcher = WindowPrefetcher(store, "train", [[1, 2]], reader=reader)
    with pytest.raises(StoreReadError):
        prefetcher.get(0)
    prefetcher.release(0)
    prefetcher.close()
    failing[0] = False
    assert reader.reuse("train", [1, 2]) is None
    again = WindowPrefetcher(store, "train", [[1, 2]], reader=reader)
    assert labels_of(again.get(0), 20) == list(range(10, 30))
    again.close()
    reader.close()
