"""Check every chunk of a store against its checksums, naming each bad one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from datalflash.errors import StoreFormatError, StoreReadError
from datalflash.store.registry import open_store


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: chunks checked and ``bad`` ``(split, chunk, message)``."""

    path: str
    chunks: int = 0
    bad: list[tuple[str, int, str]] = field(default_factory=list)
    unchecksummed: list[str] = field(default_factory=list)  # splits stored without checksums

    @property
    def ok(self) -> bool:
        """True when every chunk read back and matched its checksum."""
        return not self.bad

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.chunks} chunks checked, {len(self.bad)} bad"]
        lines += [f"  BAD split {split!r} chunk {chunk}: {message}" for split, chunk, message in self.bad]
        if self.unchecksummed:
            lines.append(f"  splits without checksums (read back only): {', '.join(self.unchecksummed)}")
        return "\n".join(lines)


def verify_store(path: str | os.PathLike, *, progress: bool = True) -> VerifyReport:
    """Read every chunk of every split of the store at ``path``, checking checksums; a bad chunk
    is recorded and checking goes on. A store whose manifest is unusable raises StoreFormatError."""
    store = open_store(path, verify="always")
    report = VerifyReport(str(path))
    total = sum(store.num_chunks(s) for s in store.splits)
    buffer = store.allocate(store.chunk_size)
    with tqdm(total=total, desc=f"verify {path}", unit="chunk", disable=not progress) as bar:
        for split in store.splits:
            try:
                if not store.has_checksums(split):
                    report.unchecksummed.append(split)
            except StoreFormatError as e:
                report.bad.extend((split, c, str(e)) for c in range(store.num_chunks(split)))
                bar.update(store.num_chunks(split))
                continue
            for chunk in range(store.num_chunks(split)):
                try:
                    store.read_chunks(split, [chunk], buffer)
                except (StoreReadError, StoreFormatError) as e:
                    report.bad.append((split, chunk, str(e)))
                report.chunks += 1
                bar.update()
    store.close()
    return report
