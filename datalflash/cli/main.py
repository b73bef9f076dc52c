"""The ``datalflash`` command (also ``python -m datalflash``).

Exit codes: 0 success, 1 the check failed (bad chunks, accuracy below target), 2 bad arguments,
a missing or unusable store or source.
"""

from __future__ import annotations

import argparse
import json
import sys

from datalflash.errors import ConversionError, DataLFlashError

LEVEL_OPTION = {"zarr": "clevel", "hdf5": "level"}  # each backend's name for a compression level


CLI_TERMS = {"pass overwrite=True": "pass --overwrite"}  # (library messages, said in the CLI's terms)


def _fail(command: str, error: Exception) -> int:
    message = str(error)
    for library, cli in CLI_TERMS.items():
        message = message.replace(library, cli)
    print(f"datalflash {command}: error: {message}", file=sys.stderr)
    return 2


def _splits(text: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> dict (argparse type)."""
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): float(ratio) for name, ratio in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not like train=0.8,val=0.1,test=0.1") from None


def _convert(args: argparse.Namespace) -> int:
    from datalflash.convert import DatasetConverter
    from datalflash.convert.sources import load_source

    try:
        compression = args.compression
        if args.level is not None:
            if args.backend not in LEVEL_OPTION:
                raise ConversionError(f"--level: backend {args.backend!r} takes no compression level")
            compression = {"compression": compression, LEVEL_OPTION[args.backend]: args.level}
        dataset = load_source(args.source)
        out = DatasetConverter.create_chunked_dataset(
            dataset,
            args.output,
            chunk_size=args.chunk_size,
            split_ratios=args.splits,
            shuffle=not args.no_shuffle,
            seed=args.seed,
            backend=args.backend,
            compression=compression,
            num_workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
            on_error=args.on_error,
        )
    except (DataLFlashError, FileExistsError) as e:
        return _fail("convert", e)
    print(f"wrote {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from datalflash.store.info import format_info, store_info

    try:
        info = store_info(args.store)
    except DataLFlashError as e:
        return _fail("info", e)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from datalflash.store.verify import verify_store

    try:
        report = verify_store(args.store, progress=not args.quiet)
    except DataLFlashError as e:
        return _fail("verify", e)
    print(report)
    return 0 if report.ok else 1


def _bench(args: argparse.Namespace) -> int:
    from datalflash.cli.bench import bench_store

    try:
        rows = bench_store(args.store, args.split, args.batch_size, args.epochs, args.workers, args.max_seconds)
    except (DataLFlashError, KeyError) as e:
        return _fail("bench", e)
    base = next(r["samples_per_s"] for r in rows if "TensorDataset" in r["loader"]) or 1  # (1.0x: the README's)
    print(f"{args.store} split {args.split!r}, batch {args.batch_size}, shuffled, best of {args.epochs}")
    for r in rows:
        note = "" if r["full_epoch"] else f" (first {r['samples']:,} samples, {args.max_seconds:g} s cap)"
        print(f"  {r['loader']:<48} {r['samples_per_s']:>12,} samples/s {r['samples_per_s'] / base:>8.1f}x{note}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from datalflash.cli.demo import DEFAULT_WORKDIR, run

    if args.images:
        from datalflash.cli.demo_images import run_images

        accuracy = run_images(args.workdir or DEFAULT_WORKDIR, epochs=args.epochs or 4)
    else:
        accuracy = run(workdir=args.workdir, epochs=args.epochs or 15)
    return 0 if accuracy >= 0.9 else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``datalflash`` command."""
    parser = argparse.ArgumentParser(
        prog="datalflash", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert a dataset into a chunked store",
        description="Convert SOURCE into a store at OUTPUT. SOURCE is module:callable (returns a torch "
        "Dataset), a.npy[,b.npy...], data.npz, data.h5[:dataset], an array.zarr / group, a saved Hugging Face "
        "dataset or an image folder (root/<class>/<image files>: images kept as their files' bytes).",
    )
    convert.add_argument("source")
    convert.add_argument("output")
    convert.add_argument("--backend", default="zarr", help="zarr (default), hdf5 or memmap")
    convert.add_argument(
        "--compression", default="default", help="zarr: lz4 (default), zstd, none; hdf5: none, gzip, lzf"
    )
    convert.add_argument(
        "--level",
        type=int,
        default=None,
        help="compression level: zarr Blosc 0-9 (default 5), hdf5 gzip 0-9 (default 4)",
    )
    convert.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per chunk (default 10000, fewer for samples above 6.7 KB: ~64 MiB a chunk)",
    )
    convert.add_argument("--splits", type=_splits, default=None, help="e.g. train=0.8,val=0.1,test=0.1 (the default)")
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--no-shuffle", action="store_true", help="keep the source order")
    convert.add_argument("--workers", type=int, default=0, help="DataLoader workers reading the source")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing store at OUTPUT")
    convert.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="image folders: stop at an unreadable image file (raise, the default) or leave it out and list it (skip)",
    )
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(func=_convert)

    info = commands.add_parser(
        "info",
        help="what a store holds",
        description="Backend, fields, splits, chunks, bytes on disk and compression ratio of STORE.",
    )
    info.add_argument("store")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    verify = commands.add_parser(
        "verify",
        help="check every chunk of a store against its checksums",
        description="Check every chunk of STORE; exit 0 if all are good, 1 if some are bad, "
        "2 if STORE is not a usable store.",
    )
    verify.add_argument("store")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=_verify)

    bench = commands.add_parser(
        "bench",
        help="FlashDataLoader against torch's DataLoader on a store",
        description="Epoch throughput of FlashDataLoader and torch's DataLoader on a split of STORE.",
    )
    bench.add_argument("store")
    bench.add_argument("--split", default="train")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--epochs", type=int, default=3)
    bench.add_argument("--workers", type=int, default=0)
    bench.add_argument("--max-seconds", type=float, default=20.0, help="cap on each pass (per-item reading is slow)")
    bench.set_defaults(func=_bench)

    demo = commands.add_parser("demo", help="the main job: real digits -> Zarr store -> training, and a speed check")
    demo.add_argument("--workdir", help="where the demo keeps its stores (default: ./datalflash-demo)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15, with --images 4)")
    demo.add_argument(
        "--images",
        action="store_true",
        help="the image variant: real photographs as a folder of JPEGs -> store -> decoded with crops while training",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``datalflash`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
