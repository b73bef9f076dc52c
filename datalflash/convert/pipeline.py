"""The fill pipeline of a conversion: read the source in blocks, write the store chunk by chunk.

Three write strategies, chosen per chunk: a streaming store gets a TensorDataset's chunks as small
pieces (gathered, checksummed and written while in cache); an unshuffled TensorDataset chunk is
written straight from the source's memory; any other chunk is gathered into one of rotating
chunk buffers and written by a writer thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from datalflash.convert.layout import chunk_blocks, owner
from datalflash.convert.samples import BlockReader, block_size
from datalflash.errors import DataLFlashError, StoreWriteError
from datalflash.store.base import ChunkStore

WRITERS = 2  # chunks compressed and written at once, by threads (codecs and writes release the GIL)
PIECE_BYTES = 2 * 2**20  # rows handed to a streaming store at a time: they stay in cache from gather to write


def fill_store(
    store: ChunkStore,
    dataset: Dataset,
    order: np.ndarray,
    num_workers: int,
    progress: bool,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Read every sample in ``order`` and write each split chunk by chunk (of the chunk list,
    only those :func:`~datalflash.convert.layout.owner` gives to ``rank``).

    Up to ``WRITERS`` threads compress and write chunks while the next one is read (a
    TensorDataset's chunks are also gathered by those threads); ``WRITERS + 1`` chunk buffers
    rotate, so a buffer is refilled only after its write finished. A store that
    :attr:`~datalflash.store.base.ChunkStore.streams_writes` gets a TensorDataset's chunks as
    small pieces instead, each gathered, checksummed and written while it is in cache.
    """
    chunk_size = store.chunk_size
    block = block_size(dataset, store.fields, chunk_size)
    chunks = chunk_blocks(store.splits, order, chunk_size, block)  # in the order the blocks are read
    chunks = [c for k, c in enumerate(chunks) if owner(k, world_size) == rank]
    reader = BlockReader(
        dataset, [b for *_, blocks in chunks for b in blocks], store.structure, store.fields, num_workers
    )
    largest = min(chunk_size, max(info.num_samples for info in store.splits.values()))
    piece_rows = max(1, PIECE_BYTES // max(1, store.manifest.sample_nbytes))
    buffers: list[dict[str, np.ndarray]] = []

    def fill(blocks: list[np.ndarray], buffer: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        filled = 0
        for b in blocks:
            filled += reader.read(b, buffer, filled)
        return {name: values[:filled] for name, values in buffer.items()}

    def gather_and_write(split: str, chunk: int, blocks: list[np.ndarray], buffer: dict[str, np.ndarray]) -> None:
        store.write_chunk(split, chunk, fill(blocks, buffer))

    def written(write: Callable[..., None], split: str, chunk: int, *args: Any) -> None:
        try:
            write(split, chunk, *args)
        except OSError as e:
            if isinstance(e, DataLFlashError):
                raise
            raise StoreWriteError.caused_by(e, f"split {split!r} chunk {chunk}: {e}") from e

    pending: deque[tuple[Future, int]] = deque()
    with (
        ThreadPoolExecutor(WRITERS, thread_name_prefix="datalflash-writer") as writers,
        tqdm(
            total=sum(len(b) for *_, blocks in chunks for b in blocks),
            unit="sample",
            desc="converting",
            disable=not progress,
        ) as bar,
    ):

        def collect() -> None:  # the oldest write: its errors raise here, its samples count as done
            future, samples = pending.popleft()
            future.result()
            bar.update(samples)

        streamed = reader.vectorized and store.streams_writes
        try:
            for k, (split, chunk, blocks) in enumerate(chunks):
                while len(pending) >= WRITERS and not streamed:  # streamed writes share no buffer: all queue
                    collect()
                if streamed:
                    future = writers.submit(
                        written, store.write_chunk_pieces, split, chunk, reader.pieces(blocks, piece_rows)
                    )
                elif len(blocks) == 1 and (view := reader.view(blocks[0])) is not None:
                    # an unshuffled TensorDataset chunk: written from the source
                    future = writers.submit(written, store.write_chunk, split, chunk, view)
                else:
                    if len(buffers) <= WRITERS:
                        buffers.append(store.allocate(largest))
                    buffer = buffers[k % (WRITERS + 1)]
                    if reader.vectorized:
                        future = writers.submit(written, gather_and_write, split, chunk, blocks, buffer)
                    else:  # blocks come in order from torch's DataLoader, in this thread
                        future = writers.submit(written, store.write_chunk, split, chunk, fill(blocks, buffer))
                pending.append((future, sum(map(len, blocks))))
            while pending:
                collect()
        finally:
            for future, _ in pending:
                future.cancel()
            reader.close()
