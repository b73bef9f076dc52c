"""Image fields: image folders and PIL images converted, decoded with fused crop + resize.

The images are real photographs shipped by scikit-learn (``load_sample_images``), cut into
pieces of varied sizes; every decoded pixel is checked against Pillow decoding the same bytes.
"""

import gc
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from datalflash.batching.images import ATTEMPTS, ImageDecode, plan_crops, sample_uniforms
from datalflash.convert.images import ImageFiles
from datalflash.core import FlashDataLoader, get_dataloaders
from datalflash.errors import ConversionError, ImageError
from datalflash.format.images import MODES_CHANNELS, EncodedImage, header_size
from datalflash.loading import ChunkedDataset
from datalflash.store import open_store
from datalflash.utils import DatasetConverter
from tests.helpers import Samples, survivors

Image = pytest.importorskip("PIL.Image")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def photos():
    return [np.asarray(p) for p in sklearn_datasets.load_sample_images().images]


def cut_pieces(photos, n, seed=0):
    """``n`` RGB pieces of the photographs, 60-300 pixels a side."""
    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = (int(v) for v in rng.integers(60, 300, 2))
        y, x = int(rng.integers(0, src.shape[0] - h)), int(rng.integers(0, src.shape[1] - w))
        pieces.append(Image.fromarray(np.ascontiguousarray(src[y : y + h, x : x + w])))
    return pieces


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    """An image folder of two classes: JPEGs, PNGs, a grayscale and an RGBA PNG."""
    root = tmp_path_factory.mktemp("images") / "folder"
    for i, piece in enumerate(cut_pieces(photos, 30)):
        cls = root / ("flower" if i % 3 == 0 else "china")
        cls.mkdir(parents=True, exist_ok=True)
        if i == 4:
            piece.convert("L").save(cls / f"{i:03d}.png")
        elif i == 7:
            piece.convert("RGBA").save(cls / f"{i:03d}.png")
        elif i % 4 == 0:
            piece.save(cls / f"{i:03d}.png")
        else:
            piece.save(cls / f"{i:03d}.jpg", quality=90)
    return root


def folder_files(root):
    """(path, label) in the converter's order: classes sorted, files sorted."""
    classes = sorted(os.listdir(root))
    return [(root / c / f, k) for k, c in enumerate(classes) for f in sorted(os.listdir(root / c))]


def reference(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("backend", ["zarr", "hdf5", "memmap"])
def test_folder_converts_to_the_files_bytes_sizes_and_classes(tmp_path, folder, backend):
    out = DatasetConverter.create_chunked_dataset(
        str(folder), tmp_path / "s", chunk_size=8, shuffle=False, backend=backend, progress=False
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fields"]["0"]["kind"] == "image" and "encoding" not in manifest["fields"]["0"]
    assert manifest["fields"]["1"]["classes"] == ["china", "flower"]
    assert manifest["structure"]["items"][0] == {"kind": "field", "name": "0", "size": "0.size"}
    store = open_store(out)
    files = folder_files(folder)
    start = 0
    for split in ("train", "val", "test"):
        rows = store.read_chunks(split, range(store.num_chunks(split)))
        for k in range(store.num_samples(split)):
            path, label = files[start + k]
            assert rows["0"].sample(k).tobytes() == path.read_bytes()  # verbatim
            with Image.open(path) as image:
                h, w, c = rows["0.size"][k]
                assert (w, h) == image.size and c == len(image.getbands())
            assert rows["1"][k] == label
        start += store.num_samples(split)
    store.close()
    # plain readers see the same bytes
    path, _ = files[0]
    if backend == "zarr":
        g = zarr.open_group(str(out / "train.zarr"), mode="r")
        first = g["0/values/0"][: int(g["0/shapes"][0, 0])]
    elif backend == "hdf5":
        with h5py.File(out / "train.h5", "r") as f:
            first = f["0/values/0"][: int(f["0/shapes"][0, 0])]
    else:
        first = np.load(out / "train" / "0" / "values" / "0.npy")[
            : int(np.load(out / "train" / "0" / "shapes.npy")[0, 0])
        ]
    assert first.tobytes() == path.read_bytes()
    size_on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    folder_bytes = sum(p.stat().st_size for p, _ in files)
    assert size_on_disk < 1.15 * folder_bytes + 200_000


def test_info_describes_images_and_classes(store):
    done = subprocess.run(
        [sys.executable, "-m", "datalflash", "info", str(store)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    opened = open_store(store)
    sizes = np.concatenate([opened.read_field(split, "0.size") for split in opened.splits])
    low, high = sizes[:, :2].min(axis=0), sizes[:, :2].max(axis=0)
    assert f"image (encoded), {low[0]}-{high[0]} x {low[1]}-{high[1]} px" in done.stdout
    assert "channels 1/3/4" in done.stdout and "classes: china, flower" in done.stdout
    assert "from image folder" in done.stdout
    with pytest.raises(ValueError, match="read_chunks"):
        opened.read_field("train", "0")


def test_list_of_path_label_pairs_converts(tmp_path, folder):
    files = folder_files(folder)[:10]
    out = DatasetConverter.create_chunked_dataset(
        [(str(p), 5 + k) for p, k in files], tmp_path / "s", split_ratios={"train": 1.0}, shuffle=False, progress=False
    )
    rows = open_store(out).read_chunks("train", [0])
    assert [int(v) for v in rows["1"]] == [5 + k for _, k in files]
    assert rows["0"].sample(3).tobytes() == files[3][0].read_bytes()


def _reading_threads() -> int:
    return sum(t.name.startswith("datalflash-image-read") for t in threading.enumerate())


def test_files_read_by_one_pool_per_process_stopped_with_its_source(tmp_path, folder):
    files = folder_files(folder)
    source = ImageFiles([(str(p), k) for p, k in files], threads=3)
    before = _reading_threads()
    for start in range(0, len(files), 7):  # (the converter asks batch by batch)
        got = source.__getitems__(list(range(start, min(start + 7, len(files)))))
        assert [image.data for image, _ in got] == [p.read_bytes() for p, _ in files[start : start + 7]]
    assert 0 < _reading_threads() - before <= 3
    del source, got
    gc.collect()
    assert _reading_threads() == before
    # worker processes each read with threads of their own and convert the same bytes
    pairs = [(str(p), k) for p, k in files]
    one = DatasetConverter.create_chunked_dataset(pairs, tmp_path / "a", split_ratios={"train": 1.0}, progress=False)
    two = DatasetConverter.create_chunked_dataset(
        pairs, tmp_path / "b", split_ratios={"train": 1.0}, num_workers=2, progress=False
    )
    a, b = (open_store(out).read_chunks("train", [0]) for out in (one, two))
    assert [a["0"].sample(k).tobytes() for k in range(len(files))] == [
        b["0"].sample(k).tobytes() for k in range(len(files))
    ]


def test_unreadable_file_named_or_skipped_and_listed(tmp_path, folder):
    bad_root = tmp_path / "folder"
    for path, _ in folder_files(folder)[:6]:
        target = bad_root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = bad_root / "china" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(ConversionError, match=r"broken\.jpg: not a readable image"):
        DatasetConverter.create_chunked_dataset(str(bad_root), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    out = DatasetConverter.create_chunked_dataset(str(bad_root), tmp_path / "b", on_error="skip", progress=False)
    created = json.loads((out / "manifest.json").read_text())["created"]
    assert created["num_skipped"] == 1 and created["skipped"][0][0] == str(bad)
    store = open_store(out)
    assert sum(store.num_samples(s) for s in store.splits) == 6
    with pytest.raises(ConversionError, match="on_error"):
        DatasetConverter.create_chunked_dataset(Samples([(1,)]), tmp_path / "c", on_error="skip", progress=False)


def test_pil_images_stored_as_png_losslessly_or_jpeg_or_raw(tmp_path, photos):
    pieces = cut_pieces(photos, 12, seed=1)
    data = Samples([(p, i) for i, p in enumerate(pieces)])
    png = DatasetConverter.create_chunked_dataset(
        data, tmp_path / "png", split_ratios={"train": 1.0}, shuffle=False, progress=False
    )
    assert json.loads((png / "manifest.json").read_text())["fields"]["0"]["encoding"] == "png"
    images, _ = next(iter(FlashDataLoader(ChunkedDataset(open_store(png), "train"), batch_size=12)))
    for piece, image in zip(pieces, images):
        assert torch.equal(image, torch.from_numpy(np.asarray(piece)).permute(2, 0, 1))
    jpeg = DatasetConverter.create_chunked_dataset(
        data,
        tmp_path / "jpeg",
        split_ratios={"train": 1.0},
        shuffle=False,
        progress=False,
        fields={"0": {"kind": "image", "encoding": "jpeg:80"}},
    )
    rows = open_store(jpeg).read_chunks("train", [0])
    stored = rows["0"].sample(2).tobytes()
    assert stored[:2] == b"\xff\xd8"
    images, _ = next(iter(FlashDataLoader(ChunkedDataset(open_store(jpeg), "train"), batch_size=12)))
    assert torch.equal(images[2], torch.from_numpy(reference(io.BytesIO(stored)).copy()).permute(2, 0, 1))
    raw = DatasetConverter.create_chunked_dataset(
        data, tmp_path / "raw", split_ratios={"train": 1.0}, shuffle=False, progress=False, fields={"0": "ragged"}
    )
    store = open_store(raw)
    assert store.fields["0"].kind == "ragged" and store.fields["0"].shape == (None, None, 3)
    assert "0.size" not in store.fields
    assert np.array_equal(store.read_chunks("train", [0])["0"].sample(5), np.asarray(pieces[5]))
    with pytest.raises(ConversionError, match="encoding"):
        DatasetConverter.create_chunked_dataset(
            data, tmp_path / "x", progress=False, fields={"0": {"kind": "image", "encoding": "gif"}}
        )


@pytest.fixture(scope="module")
def store(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("store") / "s"
    return DatasetConverter.create_chunked_dataset(str(folder), out, chunk_size=8, shuffle=False, progress=False)


def test_full_decode_equals_pillow_decode_of_each_file(store, folder):
    files = folder_files(folder)
    loader = FlashDataLoader(ChunkedDataset(open_store(store), "train"), batch_size=5)
    seen = 0
    for images, labels in loader:
        for image, label in zip(images, labels.tolist()):
            path, expected_label = files[seen]
            assert label == expected_label
            assert torch.equal(image, torch.from_numpy(reference(path).copy()).permute(2, 0, 1))
            seen += 1
    assert seen == open_store(store).num_samples("train")


def center_box(w, h, size, fraction=0.875):
    side_w, side_h = min(w, h * size[1] / size[0]) * fraction, min(h, w * size[0] / size[1]) * fraction
    return ((w - side_w) / 2, (h - side_h) / 2, (w + side_w) / 2, (h + side_h) / 2)


def crop_and_resize(pixels, box, size):
    """The reference: whole pixels of ``box`` cut from decoded ``pixels``, resized by torch's
    antialiased bilinear interpolation."""
    left, top, right, bottom = (round(float(v)) for v in box)
    region = torch.from_numpy(np.ascontiguousarray(pixels[top:bottom, left:right])).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(region, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0]


def test_cmyk_and_gray_jpegs_decode_to_pillows_rgb(tmp_path, photos):
    piece = cut_pieces(photos, 1, seed=4)[0]
    for mode in ("CMYK", "L"):
        path = tmp_path / mode / "x" / "image.jpg"
        path.parent.mkdir(parents=True)
        piece.convert(mode).save(path, quality=90)
        out = DatasetConverter.create_chunked_dataset(
            str(tmp_path / mode), tmp_path / f"{mode}-store", split_ratios={"train": 1.0}, progress=False
        )
        (image,), _ = next(iter(FlashDataLoader(ChunkedDataset(open_store(out), "train"), batch_size=1)))
        assert torch.equal(image, torch.from_numpy(reference(path).copy()).permute(2, 0, 1)), mode


def pillow_header(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size[1], image.size[0], MODES_CHANNELS[image.mode]


def test_fast_header_reads_what_pillow_reads(photos):
    piece = cut_pieces(photos, 1, seed=5)[0]
    made = {}
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        out = io.BytesIO()
        piece.convert(mode).save(out, format="PNG")
        made[f"png {mode}"] = out.getvalue()
    for mode in ("L", "RGB", "CMYK"):
        out = io.BytesIO()
        piece.convert(mode).save(out, format="JPEG", quality=80)
        made[f"jpeg {mode}"] = out.getvalue()
    fast_jpeg = importlib.util.find_spec("simplejpeg") is not None  # (without it JPEG headers go to Pillow)
    for name, data in made.items():
        expected = pillow_header(data) if fast_jpeg or name.startswith("png") else None
        assert header_size(data) == expected, name
        assert EncodedImage.from_bytes(data).channels == pillow_header(data)[2], name
    png = bytearray(made["png RGB"])
    png[20] ^= 1  # (the height, no longer matching the chunk's CRC: left to Pillow, which refuses it)
    assert header_size(bytes(png)) is None
    with pytest.raises(ImageError, match=r"broken\.png: not a readable image"):
        EncodedImage.from_bytes(bytes(png), "broken.png")
    out = io.BytesIO()
    piece.save(out, format="BMP")  # (another format: Pillow reads it)
    assert header_size(out.getvalue()) is None and EncodedImage.from_bytes(out.getvalue()).height == piece.size[1]


def test_center_crops_equal_the_crop_of_the_decode_resized(store, folder):
    files = folder_files(folder)
    size = (48, 64)
    loader = FlashDataLoader(
        ChunkedDataset(open_store(store), "train"), batch_size=7, collate={"0": ImageDecode(size=size, crop="center")}
    )
    images = torch.cat([x for x, _ in loader])
    assert images.shape == (len(images), 3, 48, 64) and images.dtype == torch.uint8
    for k, image in enumerate(images):
        path, _ = files[k]
        pixels = reference(path)
        left, top, right, bottom = box = center_box(pixels.shape[1], pixels.shape[0], size)
        expected = crop_and_resize(pixels, box, size)
        full_scale = min((right - left) / size[1], (bottom - top) / size[0]) < 2
        if path.suffix == ".png" or full_scale:  # (decoded at full scale: exactly these pixels)
            assert torch.equal(image, expected), path
        else:  # (a JPEG decoded at a reduced scale first: close, not equal)
            assert (image.float() - expected.float()).abs().mean() < 6, path
    pil = Image.open(files[0][0]).convert("RGB")  # (and close to Pillow's own crop + resize)
    box = center_box(*pil.size, size)
    by_pillow = torch.from_numpy(np.array(pil.resize((64, 48), Image.Resampling.BILINEAR, box=box))).permute(2, 0, 1)
    assert (images[0].float() - by_pillow.float()).abs().mean() < 4


def test_get_dataloaders_image_size_random_train_center_eval(store):
    loaders = get_dataloaders(store, batch_size=4, image_size=32, seed=3)
    x, y = next(iter(loaders["train"]))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert loaders["train"]._images["0"].crop == "random" and loaders["val"]._images["0"].crop == "center"
    x, _ = next(iter(loaders["val"]))
    assert x.shape == (3, 3, 32, 32)  # (the 3 samples of val)
    nhwc = FlashDataLoader(
        ChunkedDataset(open_store(store), "val"),
        batch_size=4,
        collate={"0": ImageDecode(size=32, layout="NHWC", dtype=torch.float32)},
    )
    f, _ = next(iter(nhwc))
    assert f.shape == (3, 32, 32, 3) and f.dtype == torch.float32
    assert torch.allclose(f, x.permute(0, 2, 3, 1).float() / 255)


def epoch_images(store, **kwargs):
    loader = FlashDataLoader(ChunkedDataset(open_store(store), "train"), shuffle=True, seed=7, image_size=24, **kwargs)
    return loader, torch.cat([x for x, _ in loader])


def test_random_crops_follow_seed_epoch_and_sample_and_resume_exactly(store):
    _, a = epoch_images(store, batch_size=4)
    _, b = epoch_images(store, batch_size=6)  # (same order, other batches: same crops)
    assert torch.equal(a, b)
    loader, _ = epoch_images(store, batch_size=4)
    second = torch.cat([x for x, _ in loader])  # (epoch 1)
    assert not torch.equal(a, second)
    loader = FlashDataLoader(
        ChunkedDataset(open_store(store), "train"), batch_size=4, shuffle=True, seed=7, image_size=24
    )
    it = iter(loader)
    head = [next(it)[0] for _ in range(2)]
    state = loader.state_dict()
    resumed = FlashDataLoader(
        ChunkedDataset(open_store(store), "train"), batch_size=4, shuffle=True, seed=7, image_size=24
    )
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat(head + [x for x, _ in resumed]), a)


@pytest.mark.parametrize("context", [None, "spawn"])
def test_worker_processes_decode_what_threads_decode(store, context):
    """Decoding in worker processes (shared-memory buffers, reused) gives the threads' pixels,
    batch after batch and epoch after epoch."""

    def epochs(decode):
        loader = FlashDataLoader(
            ChunkedDataset(open_store(store), "train"),
            batch_size=5,
            shuffle=True,
            seed=1,
            collate={"0": decode},
            num_workers=1 if context else 0,  # (a context is for worker processes, reading and decoding)
            multiprocessing_context=context,
        )
        return [torch.cat([x for x, _ in loader]) for _ in range(2)]

    threads = epochs(ImageDecode(size=(24, 40), crop="random", processes=0, threads=2))
    processes = epochs(ImageDecode(size=(24, 40), crop="random", processes=2))
    assert all(torch.equal(a, b) for a, b in zip(threads, processes))
    assert not torch.equal(processes[0], processes[1])  # (epoch 1 crops anew)


def _slow_decode(*args):
    time.sleep(3)


def _die(*args):
    os._exit(3)


def test_slow_decoding_times_out_and_a_dead_worker_is_named(store, monkeypatch):
    from datalflash.errors import DataLFlashError, LoaderTimeoutError
    from datalflash.loading import decoders

    split = ChunkedDataset(open_store(store), "train")
    monkeypatch.setattr(decoders, "decode_rows", _slow_decode)
    slow = FlashDataLoader(split, batch_size=4, timeout=0.5, collate={"0": ImageDecode(16, processes=0)})
    with pytest.raises(LoaderTimeoutError, match=r"split 'train': decoding a batch's images"):
        next(iter(slow))
    monkeypatch.setattr(decoders, "decode_part", _die)
    dying = FlashDataLoader(split, batch_size=4, collate={"0": ImageDecode(16, processes=1)})
    with pytest.raises(DataLFlashError, match=r"split 'train': a decoding worker process died"):
        next(iter(dying))


IMAGE_TRAINER = """
import sys, time, multiprocessing
from datalflash import ImageDecode
from datalflash.core import ChunkedDataset, FlashDataLoader
split = ChunkedDataset(sys.argv[1], "train")
loader = FlashDataLoader(split, batch_size=4, collate={"0": ImageDecode(16, processes=2)})
batches = iter(loader)
next(batches)
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(600)
"""


def test_decoding_workers_exit_when_their_trainer_is_killed(store):
    trainer = subprocess.Popen(
        [sys.executable, "-c", IMAGE_TRAINER, str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        workers = [int(pid) for pid in trainer.stdout.readline().split()]
        assert len(workers) == 2, trainer.stderr.read() if trainer.poll() is not None else workers
        trainer.kill()
        trainer.wait(30)
        assert not survivors(workers), "decoding workers outlived their killed trainer"
    finally:
        trainer.kill()


def test_collate_fn_gets_pil_images_as_image_folder_gives_them(store, folder):
    loader = FlashDataLoader(
        ChunkedDataset(open_store(store), "train"), batch_size=3, collate_fn=lambda samples: samples
    )
    samples = next(iter(loader))
    image, label = samples[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and int(label) == folder_files(folder)[0][1]
    assert np.array_equal(np.asarray(image), reference(folder_files(folder)[0][0]))
    with pytest.raises(ValueError, match="PIL image"):
        FlashDataLoader(ChunkedDataset(open_store(store), "train"), batch_size=3, collate_fn=list, image_size=8)


def test_bad_image_at_load_names_store_split_and_sample(tmp_path, folder):
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    for path, _ in folder_files(folder)[:4]:
        (root / "a" / path.name).write_bytes(path.read_bytes())
    jpeg = next(p for p in sorted((root / "a").iterdir()) if p.suffix == ".jpg")
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # (a header Pillow reads, the pixels cut off)
    out = DatasetConverter.create_chunked_dataset(
        str(root), tmp_path / "s", split_ratios={"train": 1.0}, shuffle=False, progress=False
    )
    position = sorted(p.name for p in (root / "a").iterdir()).index(jpeg.name)
    for processes in (0, 2):
        loader = FlashDataLoader(
            ChunkedDataset(open_store(out), "train"), batch_size=4, collate={"0": ImageDecode(16, processes=processes)}
        )
        with pytest.raises(ImageError, match=rf"split 'train' sample {position}: cannot decode"):
            next(iter(loader))


def test_image_size_refused_where_there_are_no_images(tmp_path):
    out = DatasetConverter.create_chunked_dataset(
        Samples([(torch.zeros(2), 1)] * 4), tmp_path / "s", split_ratios={"train": 1.0}, progress=False
    )
    with pytest.raises(ValueError, match="no image fields"):
        FlashDataLoader(ChunkedDataset(open_store(out), "train"), batch_size=2, image_size=8)


def test_cli_converts_an_image_folder(tmp_path, folder):
    out = tmp_path / "s"
    done = subprocess.run(
        [sys.executable, "-m", "datalflash", "convert", str(folder), str(out), "--chunk-size", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert open_store(out).fields["1"].classes == ("china", "flower")


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 2000),
    w=st.integers(1, 2000),
    low=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32),
    index=st.integers(0, 2**40),
)
def test_random_crop_boxes_lie_in_the_image_with_allowed_area(h, w, low, seed, index):
    decode = ImageDecode(size=32, crop="random", scale=(low, 1.0))
    uniforms = sample_uniforms(seed, 0, np.array([index]), 2 * ATTEMPTS + 2)
    assert ((uniforms >= 0) & (uniforms < 1)).all()
    left, top, right, bottom = plan_crops(np.array([h]), np.array([w]), decode, uniforms)[0]
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    assert all(float(v).is_integer() for v in (left, top, right, bottom))
    cw, ch = right - left, bottom - top
    fallback = math.isclose(left, (w - cw) // 2) and math.isclose(top, (h - ch) // 2) and (cw == w or ch == h)
    area = cw * ch / (h * w)
    assert fallback or low * 0.9 - 2 / min(h, w) <= area <= 1.0


def test_sample_uniforms_are_a_function_of_seed_epoch_and_index():
    idx = np.arange(1000)
    a = sample_uniforms(1, 0, idx, 4)
    assert np.array_equal(a, sample_uniforms(1, 0, idx, 4))
    assert np.array_equal(a[500:], sample_uniforms(1, 0, idx[500:], 4))
    assert not np.allclose(a, sample_uniforms(1, 1, idx, 4)) and not np.allclose(a, sample_uniforms(2, 0, idx, 4))
    assert abs(a.mean() - 0.5) < 0.02 and len(np.unique(a)) == a.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU decode needs CUDA")
def test_gpu_decode_is_close_to_cpu_decode(tmp_path, folder):
    pytest.importorskip("torchvision")
    jpegs = [(str(p), k) for p, k in folder_files(folder) if p.suffix == ".jpg"]
    out = DatasetConverter.create_chunked_dataset(jpegs, tmp_path / "s", split_ratios={"train": 1.0}, progress=False)
    split = ChunkedDataset(open_store(out), "train")
    batches = {
        gpu: next(
            iter(FlashDataLoader(split, batch_size=8, device="cuda", collate={"0": ImageDecode(size=32, gpu=gpu)}))
        )
        for gpu in (True, False)
    }
    (on_gpu, labels_gpu), (on_cpu, labels_cpu) = batches[True], batches[False]
    assert on_gpu.is_cuda and on_gpu.shape == on_cpu.shape == (8, 3, 32, 32) and on_gpu.dtype == torch.uint8
    assert torch.equal(labels_gpu, labels_cpu)
    assert (on_gpu.float() - on_cpu.float()).abs().mean() < 8
