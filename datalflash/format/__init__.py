"""The store format in code (``formats/SPEC.md``): manifest, sample structure, dtype rules.

numpy only: nothing here imports torch, so tools that only read or check stores stay light.
"""

from datalflash.format.dtypes import SUPPORTED_DTYPES, storage_dtype
from datalflash.format.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    FieldSpec,
    Manifest,
    SplitInfo,
    parse_manifest,
    read_manifest,
    write_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SUPPORTED_DTYPES",
    "FieldSpec",
    "Manifest",
    "SplitInfo",
    "parse_manifest",
    "read_manifest",
    "storage_dtype",
    "write_manifest",
]
