"""Image files as a conversion source: a torchvision-style folder or a list of ``(path, label)``.

A folder ``root/<class>/<...>/*.jpg`` gives samples ``(image, class id)``, classes numbered in
sorted order as torchvision's ``ImageFolder`` numbers them (``classes`` keeps their names, and
the converter writes them into the manifest). Images are stored as their files' bytes, verbatim
(:class:`~datalflash.format.images.EncodedImage`); files are read by a pool of threads, a batch
of them at a time (torch's DataLoader hands batches to :meth:`ImageFiles.__getitems__`).

A file that cannot be read or is not an image raises :class:`~datalflash.errors.ImageError`
naming it, or, with ``on_error="skip"``, is left out before conversion starts and listed in
:attr:`ImageFiles.skipped` (each file's header is checked first, by the same threads).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from datalflash.convert.sources import SourceError
from datalflash.errors import ImageError
from datalflash.format.images import EncodedImage
from datalflash.reading.pool import DaemonPool

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""The file name endings taken for images in a folder (torchvision's ``IMG_EXTENSIONS``)."""
ON_ERROR = ("raise", "skip")
READ_THREADS = min(8, 2 * (os.cpu_count() or 1))
"""Files read at once by default. Reads release the GIL and a cold disk or network filesystem
wants several in flight (2 cores, cold: 4 threads read 1.9x faster than 1), but every thread
contends for the GIL: from the page cache 8 threads were 2.4x slower than 1 on 2 cores."""


class ImageFiles(Dataset):
    """Samples ``(EncodedImage, label)`` of image files: ``items`` ``(path, label)`` pairs,
    ``classes`` the name of each label (or empty)."""

    def __init__(
        self,
        items: Sequence[tuple[str | os.PathLike, int]],
        classes: Sequence[str] = (),
        *,
        on_error: str = "raise",
        threads: int = READ_THREADS,
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        checked = []
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (str, os.PathLike))):
                raise SourceError(f"item {i} is {str(item)[:80]!r}; give (path, label) pairs")
            path, label = item
            if isinstance(label, bool) or not isinstance(label, int):
                raise SourceError(f"item {i} ({path}): label {label!r} is not an int")
            checked.append((os.fspath(path), label))
        self.items = checked
        self.classes = list(classes)
        self.threads = threads
        self.skipped: list[tuple[str, str]] = []  # (file, why) of the files left out
        self._checked = False
        self._pool: tuple[int, DaemonPool] | None = None  # (pid that started it, pool)
        if on_error == "skip":
            self.skip_unreadable()

    def skip_unreadable(self) -> None:
        """Leave out the files that cannot be read or are not images (each file's header read by
        :attr:`threads` threads), listing them in :attr:`skipped`; once."""
        if self._checked:
            return
        self._checked = True

        def why(path: str) -> str | None:
            try:
                EncodedImage.from_file(path)
            except ImageError as e:
                return str(e)
            return None

        problems = self._in_threads(why, [path for path, _ in self.items])
        self.skipped = [(path, problem) for (path, _), problem in zip(self.items, problems) if problem is not None]
        self.items = [item for item, problem in zip(self.items, problems) if problem is None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[EncodedImage, int]:
        path, label = self.items[index]
        return EncodedImage.from_file(path), label

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[EncodedImage, int]]:
        """The samples at ``indices``, their files read by :attr:`threads` threads."""
        if len(indices) < 2 or self.threads < 2:
            return [self[i] for i in indices]
        return self._in_threads(self.__getitem__, indices)

    def _in_threads(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        """``[fn(item) for item in items]``, run by this object's reading threads (started once
        per process, stopped when the object goes); the first failure, in order, is raised."""
        if not items:
            return []
        if self._pool is None or self._pool[0] != os.getpid():  # (threads do not survive a fork)
            pool = DaemonPool(self.threads, "datalflash-image-read")
            weakref.finalize(self, pool.shutdown)
            self._pool = (os.getpid(), pool)
        step = -(-len(items) // self.threads)  # (a slice per thread: a task per file costs more than its read)
        futures = [self._pool[1].submit(_each, fn, items[k : k + step]) for k in range(0, len(items), step)]
        return [result for future in futures for result in future.result()]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}  # (a worker process starts its own threads)


def _each(fn: Any, items: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in items]


def image_folder(root: str | os.PathLike, *, on_error: str = "raise", threads: int = READ_THREADS) -> ImageFiles:
    """The images of a torchvision-style folder (``root/<class>/**/<image>``), labelled by class
    (classes sorted by name, numbered from 0)."""
    base = Path(root)
    if not base.is_dir():
        raise SourceError(f"{root}: not a directory")
    classes = sorted(entry.name for entry in os.scandir(base) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise SourceError(f"{root}: no class folders in it (expected {root}/<class>/<image files>)")
    items: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for folder, dirs, files in os.walk(base / name, followlinks=True):
            dirs.sort()
            items += [(os.path.join(folder, f), label) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not items:
        raise SourceError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return ImageFiles(items, classes, on_error=on_error, threads=threads)


def is_image_folder(path: Any) -> bool:
    """Whether ``path`` names a directory whose subdirectories hold image files."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return False
    return any(
        f.lower().endswith(IMAGE_EXTENSIONS)
        for entry in os.scandir(os.fspath(path))
        if entry.is_dir()
        for _, _, files in os.walk(entry.path)
        for f in files
    )


def image_source(source: Any, on_error: str = "raise") -> ImageFiles | None:
    """The image files ``source`` names, if it names some: a folder (a ``str`` or path) or a
    list of ``(path, label)`` pairs, or :class:`ImageFiles`; else None."""
    if isinstance(source, ImageFiles):
        if on_error == "skip":
            source.skip_unreadable()
        return source
    if isinstance(source, (str, os.PathLike)):
        return image_folder(source, on_error=on_error)
    if (
        isinstance(source, (list, tuple))
        and source
        and all(
            isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (str, os.PathLike))
            for item in source
        )
    ):
        return ImageFiles(source, on_error=on_error)
    return None
