"""cached_images and CachedImageDataset: cache hits and misses, damage, concurrency, normalization, memory."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlscope.data.formats import read_idx
from mtlscope.data.image_cache import CachedImageDataset, cache_key, cached_images, entry_key

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "mtlscope.data.image_cache"


def images_of(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


class CountingDecoder:
    """Decodes a source written by ``write_source`` (raw uint8 bytes of a known shape) and counts its calls."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.calls = 0

    def __call__(self, sources: Sequence[Path]) -> np.ndarray:
        self.calls += 1
        return np.concatenate([np.fromfile(source, dtype=np.uint8).reshape(-1, *self.shape) for source in sources])


def write_source(path: Path, images: np.ndarray) -> Path:
    images.tofile(path)
    return path


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, np.ndarray]:
    images = images_of(0, (12, 3, 4, 5))
    return write_source(tmp_path / "images.bin", images), images


def entry_files(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.iterdir())


# -- cached_images ---------------------------------------------------------------------------------------------


def test_miss_then_hit_returns_a_readonly_memmap_of_the_decoded_array(
    tmp_path: Path, source: tuple[Path, np.ndarray]
) -> None:
    path, images = source
    decode = CountingDecoder((3, 4, 5))
    first = cached_images([path], decode, tmp_path / "cache", decoder="raw/1", name="toy")
    second = cached_images([path], decode, tmp_path / "cache", decoder="raw/1", name="toy")
    assert decode.calls == 1  # the hit does not decode
    for array in (first, second):
        assert isinstance(array, np.memmap) and array.dtype == np.uint8 and not array.flags.writeable
        np.testing.assert_array_equal(array, images)
    key = cache_key([path], "raw/1")
    stem = f"toy-{key[:16]}"
    assert entry_files(tmp_path / "cache") == [f"{stem}.json", f"{stem}.lock", f"{stem}.npy"]  # no temporary left
    header = json.loads((tmp_path / "cache" / f"{stem}.json").read_text())
    assert header["key"] == key and header["shape"] == [12, 3, 4, 5] and header["dtype"] == "uint8"
    assert entry_key(second) == key and entry_key(np.asarray(images)) is None and entry_key(second[1:]) is None
    np.testing.assert_array_equal(np.load(tmp_path / "cache" / f"{stem}.npy", allow_pickle=False), images)


def test_changed_source_byte_or_decoder_version_gives_a_new_key_and_rebuilds(
    tmp_path: Path, source: tuple[Path, np.ndarray]
) -> None:
    path, images = source
    decode = CountingDecoder((3, 4, 5))
    cached_images([path], decode, tmp_path, decoder="raw/1")
    changed = images.copy()
    changed[5, 1, 2, 3] ^= 1
    write_source(path, changed)
    stat = path.stat()
    os.utime(
        path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9)
    )  # a new modification time, whatever the clock's tick
    rebuilt = cached_images([path], decode, tmp_path, decoder="raw/1")
    assert decode.calls == 2
    np.testing.assert_array_equal(rebuilt, changed)
    cached_images([path], decode, tmp_path, decoder="raw/2")
    assert decode.calls == 3
    assert len(list(tmp_path.glob("images-*.npy"))) == 3  # entries of other keys stay side by side
    cached_images([path], decode, tmp_path, decoder="raw/1")
    assert decode.calls == 3


def test_sources_in_order_and_several_files(tmp_path: Path) -> None:
    a, b = images_of(1, (2, 1, 2, 2)), images_of(2, (3, 1, 2, 2))
    paths = [write_source(tmp_path / "a", a), write_source(tmp_path / "b", b)]
    assert cache_key(paths, "d") != cache_key(paths[::-1], "d")
    array = cached_images(paths, CountingDecoder((1, 2, 2)), tmp_path / "c", decoder="d")
    np.testing.assert_array_equal(array, np.concatenate([a, b]))


def _damage_truncate(npy: Path, header: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) - 7])


def _damage_missing_header(npy: Path, header: Path) -> None:
    header.unlink()


def _damage_other_key(npy: Path, header: Path) -> None:
    record = json.loads(header.read_text())
    header.write_text(json.dumps(record | {"key": "0" * 64}))


def _damage_garbage_header(npy: Path, header: Path) -> None:
    header.write_text("{not json")


def _damage_npy_header(npy: Path, header: Path) -> None:
    data = bytearray(npy.read_bytes())
    data[:6] = b"NOTNPY"
    npy.write_bytes(bytes(data))


def _damage_flipped_pixel(npy: Path, header: Path) -> None:
    data = bytearray(npy.read_bytes())
    data[-100] ^= 0xFF  # same size, same headers: only the checksum tells
    npy.write_bytes(bytes(data))


def _damage_wrong_shape(npy: Path, header: Path) -> None:
    record = json.loads(header.read_text())
    header.write_text(json.dumps(record | {"shape": [6, 6, 4, 5]}))


def _damage_offset_type(npy: Path, header: Path) -> None:
    record = json.loads(header.read_text())
    header.write_text(json.dumps(record | {"offset": "128"}))


DAMAGES = [
    (_damage_offset_type, "no data offset and size"),
    (_damage_truncate, "unreadable"),
    (_damage_missing_header, "header file is missing"),
    (_damage_other_key, "does not carry this entry's key"),
    (_damage_garbage_header, "header file is unreadable"),
    (_damage_npy_header, "array file is unreadable"),
    (_damage_flipped_pixel, "differ from the checksum"),
    (_damage_wrong_shape, "its header says uint8 [6, 6, 4, 5]"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGES, ids=[d.__name__[8:] for d, _ in DAMAGES])
def test_damaged_entry_is_reported_in_one_line_and_rebuilt(
    tmp_path: Path, source: tuple[Path, np.ndarray], caplog: pytest.LogCaptureFixture, damage, reason: str
) -> None:
    path, images = source
    decode = CountingDecoder((3, 4, 5))
    cache = tmp_path / "cache"
    first = cached_images([path], decode, cache, decoder="raw/1")
    npy = Path(first.filename)
    del first
    damage(npy, npy.with_suffix(".json"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rebuilt = cached_images([path], decode, cache, decoder="raw/1")
    assert decode.calls == 2
    np.testing.assert_array_equal(rebuilt, images)
    warnings = [record for record in caplog.records if record.name == LOGGER]
    assert len(warnings) == 1, caplog.text
    message = warnings[0].getMessage()
    assert "\n" not in message and str(npy) in message and "damaged" in message and reason in message, message
    caplog.clear()
    cached_images([path], decode, cache, decoder="raw/1")  # and the rebuilt entry is a hit
    assert decode.calls == 2 and not caplog.records


def test_full_check_reads_all_the_data(tmp_path: Path) -> None:
    images = images_of(3, (1000, 3, 32, 32))  # 3 MB: the quick check samples the first and last MiB only
    path = write_source(tmp_path / "big", images)
    decode = CountingDecoder((3, 32, 32))
    npy = Path(cached_images([path], decode, tmp_path / "c", decoder="d").filename)
    data = bytearray(npy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npy.write_bytes(bytes(data))
    cached_images([path], decode, tmp_path / "c", decoder="d")  # the quick check does not see the middle
    assert decode.calls == 1
    np.testing.assert_array_equal(cached_images([path], decode, tmp_path / "c", decoder="d", check="full"), images)
    assert decode.calls == 2


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, _ = source
    stem = f"images-{cache_key([path], 'raw/1')[:16]}"
    tmp_path.joinpath(f".{stem}.npy.abc123.tmp").write_bytes(b"half")
    tmp_path.joinpath(".other-0123.npy.x.tmp").write_bytes(b"someone else's")
    cached_images([path], CountingDecoder((3, 4, 5)), tmp_path, decoder="raw/1")
    assert not tmp_path.joinpath(f".{stem}.npy.abc123.tmp").exists()
    assert tmp_path.joinpath(".other-0123.npy.x.tmp").exists()


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.zeros((2, 3), dtype=np.float32), "returned a float32 array; expected uint8"),
        (np.zeros((2, 3), dtype=np.int64), "returned a int64 array; expected uint8"),
        ([[1, 2]], "returned list; expected a uint8 numpy array"),
        (np.zeros((0, 3), dtype=np.uint8), "returned an empty array"),
    ],
)
def test_decoder_output_that_is_not_uint8_is_refused(
    tmp_path: Path, source: tuple[Path, np.ndarray], output, expected
) -> None:
    path, _ = source
    with pytest.raises(ValueError) as error:
        cached_images([path], lambda _: output, tmp_path, decoder="bad/1")
    assert "\n" not in str(error.value) and "'bad/1'" in str(error.value) and expected in str(error.value)
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.json"))  # nothing half-written


def test_bad_arguments_raise_one_line(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, _ = source
    decode = CountingDecoder((3, 4, 5))
    cases = [
        ({"sources": [tmp_path / "missing"]}, "missing: cannot read the file"),
        ({"sources": []}, "no source files"),
        ({"sources": str(path)}, "sources must be a list of file paths, got the single path"),
        ({"decoder": " "}, "decoder must name the decoder and its version"),
        ({"name": "../escape"}, "cache name '../escape'"),
        ({"check": "sometimes"}, "cache check 'sometimes'"),
        ({"cache_dir": path}, "exists and is not a directory"),
    ]
    for change, expected in cases:
        arguments = {"sources": [path], "decode": decode, "cache_dir": tmp_path / "c", "decoder": "d"} | change
        with pytest.raises(ValueError) as error:
            cached_images(**arguments)
        assert "\n" not in str(error.value) and expected in str(error.value), str(error.value)
    assert decode.calls == 0


def test_a_failed_write_leaves_nothing_and_raises_one_line(
    tmp_path: Path, source: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, images = source

    def disk_full(handle, array, allow_pickle) -> None:
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(ValueError) as error:
        cached_images([path], CountingDecoder((3, 4, 5)), tmp_path, decoder="raw/1")
    assert "\n" not in str(error.value) and "cannot write it (No space left on device)" in str(error.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith((".lock", ".bin"))] == []
    monkeypatch.undo()
    np.testing.assert_array_equal(cached_images([path], CountingDecoder((3, 4, 5)), tmp_path, decoder="raw/1"), images)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only directories")
def test_read_only_cache_directory_raises_one_line(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, _ = source
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        with pytest.raises(ValueError) as error:
            cached_images([path], CountingDecoder((3, 4, 5)), cache, decoder="raw/1")
    finally:
        cache.chmod(0o700)
    assert "\n" not in str(error.value) and "cannot write in it" in str(error.value)


def test_unwritable_lock_file_raises_one_line(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, _ = source
    (tmp_path / f"images-{cache_key([path], 'raw/1')[:16]}.lock").mkdir()  # what even root cannot open for writing
    with pytest.raises(ValueError) as error:
        cached_images([path], CountingDecoder((3, 4, 5)), tmp_path, decoder="raw/1")
    assert "\n" not in str(error.value) and f"{tmp_path}: cannot write in it (Is a directory)" in str(error.value)


def _fill_in_a_process(source: str, cache: str, calls: str, barrier, results) -> None:
    def slow_decode(sources: Sequence[Path]) -> np.ndarray:
        with open(calls, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the other process reaches the lock while this one is still writing
        return CountingDecoder((3, 4, 5))(sources)

    barrier.wait()
    array = cached_images([source], slow_decode, cache, decoder="raw/1")
    results.put((os.getpid(), np.asarray(array).tobytes()))


def test_two_processes_filling_at_once_decode_once_and_share_one_entry(
    tmp_path: Path, source: tuple[Path, np.ndarray]
) -> None:
    path, images = source
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    calls = tmp_path / "calls"
    workers = [
        context.Process(
            target=_fill_in_a_process, args=(str(path), str(tmp_path / "cache"), str(calls), barrier, results)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    got = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(calls.read_text().splitlines()) == 1  # the second process waited on the lock, then hit
    assert all(data == images.tobytes() for _, data in got)
    assert [name for name in entry_files(tmp_path / "cache") if not name.endswith(".lock")] == [
        f"images-{cache_key([path], 'raw/1')[:16]}.json",
        f"images-{cache_key([path], 'raw/1')[:16]}.npy",
    ]


# -- CachedImageDataset ----------------------------------------------------------------------------------------


def test_items_are_normalized_per_channel_as_computed_by_hand(tmp_path: Path) -> None:
    images = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    images[1, 0, 0, 1], images[1, 1, 1, 0], images[1, 2, 1, 1], images[0, 2, 0, 0] = 255, 51, 102, 0
    dataset = CachedImageDataset(images, torch.tensor([4, 7]), mean=[0.5, 0.2, 0.1], std=[0.25, 0.5, 2.0])
    x, y = dataset[1]
    assert x.dtype == torch.float32 and x.shape == (3, 2, 2) and int(y) == 7
    # (255/255 - 0.5)/0.25 = 2; (51/255 - 0.2)/0.5 = 0; (102/255 - 0.1)/2 = 0.15; (0 - 0.1)/2 = -0.05
    assert x[0, 0, 1].item() == pytest.approx(2.0, abs=1e-6)
    assert x[0, 0, 0].item() == pytest.approx(-2.0, abs=1e-6)
    assert x[1, 1, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert x[2, 1, 1].item() == pytest.approx(0.15, abs=1e-6)
    assert dataset[0][0][2, 0, 0].item() == pytest.approx(-0.05, abs=1e-6)
    reference = (
        torch.from_numpy(images).double() / 255 - torch.tensor([0.5, 0.2, 0.1]).double().view(1, 3, 1, 1)
    ) / torch.tensor([0.25, 0.5, 2.0]).double().view(1, 3, 1, 1)
    torch.testing.assert_close(dataset.batch([0, 1])[0].double(), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NHW"])
def test_layouts_give_chw_items_and_batches_equal_stacked_items(layout: str) -> None:
    chw = images_of(4, (9, 3, 4, 5)) if layout != "NHW" else images_of(4, (9, 1, 4, 5))
    stored = {"NCHW": chw, "NHWC": chw.transpose(0, 2, 3, 1).copy(), "NHW": chw[:, 0].copy()}[layout]
    channels = chw.shape[1]
    mean, std = [0.1, 0.4, 0.7][:channels], [0.3, 0.2, 0.25][:channels]
    reference = CachedImageDataset(chw, torch.arange(9), mean=mean, std=std)
    dataset = CachedImageDataset(stored, torch.arange(9), mean=mean, std=std, layout=layout)  # type: ignore[arg-type]
    assert dataset.input_shape == (channels, 4, 5) and len(dataset) == 9
    indices = [7, 0, 3, 3, -1]
    items = dataset.__getitems__(indices)
    assert len(items) == len(indices)
    for (x, y), index in zip(items, indices):
        single_x, single_y = dataset[index]
        torch.testing.assert_close(x, single_x, atol=0, rtol=0)
        torch.testing.assert_close(x, reference[index][0], atol=0, rtol=0)
        assert int(y) == int(single_y) == index % 9
    inputs, targets = dataset.batch(indices)
    torch.testing.assert_close(inputs, torch.stack([dataset[i][0] for i in indices]), atol=0, rtol=0)
    assert targets.tolist() == [7, 0, 3, 3, 8]


def test_mapping_targets_give_shared_input_items() -> None:
    images = images_of(5, (6, 1, 2, 2))
    targets = {"digit": torch.arange(6), "box": torch.arange(12.0).view(6, 2)}
    dataset = CachedImageDataset(images, targets, mean=0.5, std=0.5)
    x, labels = dataset[4]
    assert set(labels) == {"digit", "box"} and int(labels["digit"]) == 4 and labels["box"].tolist() == [8.0, 9.0]
    items = dataset.__getitems__([4, 1])
    assert int(items[1][1]["digit"]) == 1 and items[0][1]["box"].tolist() == [8.0, 9.0]
    torch.testing.assert_close(items[0][0], x, atol=0, rtol=0)
    inputs, batch_targets = dataset.batch(np.array([4, 1]))
    assert inputs.shape == (2, 1, 2, 2) and batch_targets["digit"].tolist() == [4, 1]
    assert batch_targets["box"].shape == (2, 2)


@pytest.mark.parametrize(
    ("images", "targets", "options", "expected"),
    [
        (np.zeros((2, 1, 2, 2), dtype=np.float32), torch.zeros(2), {}, "expected a uint8 numpy array, got float32"),
        (
            np.zeros((2, 2, 2), dtype=np.uint8),
            torch.zeros(2),
            {},
            "layout NCHW expects 4 dimensions, got shape (2, 2, 2)",
        ),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), torch.zeros(3), {}, "expected 2 rows (one per image), got shape (3,)"),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), {"a": torch.zeros(2), "b": torch.zeros(1)}, {}, "targets of task 'b'"),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), {}, {}, "an empty mapping"),
        (
            np.zeros((2, 3, 2, 2), dtype=np.uint8),
            torch.zeros(2),
            {"mean": [0.1, 0.2]},
            "expected one finite number or 3",
        ),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), torch.zeros(2), {"std": 0.0}, "expected positive numbers"),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), torch.zeros(2), {"mean": float("nan")}, "expected one finite number"),
        (np.zeros((2, 1, 2, 2), dtype=np.uint8), torch.zeros(2), {"layout": "CHW"}, "layout 'CHW'"),
    ],
)
def test_bad_dataset_arguments_raise_one_line(images, targets, options, expected: str) -> None:
    with pytest.raises(ValueError) as error:
        CachedImageDataset(images, targets, **({"mean": 0.5, "std": 0.5} | options))
    assert "\n" not in str(error.value) and expected in str(error.value), str(error.value)


def test_out_of_range_and_bad_indices() -> None:
    dataset = CachedImageDataset(images_of(6, (3, 1, 2, 2)), torch.arange(3), mean=0.5, std=0.5)
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(IndexError):
        dataset.__getitems__([0, 3])
    with pytest.raises(IndexError):
        dataset.batch([0.5])
    with pytest.raises(TypeError):
        dataset["0"]  # type: ignore[index]


def test_fingerprint_covers_images_normalization_and_targets(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, images = source
    mapped = cached_images([path], CountingDecoder((3, 4, 5)), tmp_path, decoder="raw/1")
    targets = torch.arange(12)

    def fingerprint(images=mapped, targets=targets, **options) -> str:
        return CachedImageDataset(images, targets, **({"mean": 0.5, "std": 0.25} | options)).fingerprint()

    base = fingerprint()
    assert base == fingerprint() and len(base) == 64
    assert CachedImageDataset(mapped, targets, mean=0.5, std=0.25).images_key() == cache_key([path], "raw/1")
    in_memory = fingerprint(images=np.array(images))  # the bytes' digest: another identity than the cache key
    assert in_memory == fingerprint(images=np.array(images)) != base
    changed = np.array(images)
    changed[0, 0, 0, 0] ^= 1
    others = [
        fingerprint(mean=0.4),
        fingerprint(std=0.3),
        fingerprint(targets=torch.arange(12).flip(0)),
        fingerprint(targets={"t": targets}),
        fingerprint(images=changed),
        fingerprint(key="another"),
    ]
    assert len({base, in_memory, *others}) == len(others) + 2


def test_pickling_sends_the_memmap_file_name_not_the_data(tmp_path: Path) -> None:
    images = images_of(7, (400, 3, 16, 16))  # 307 kB
    path = write_source(tmp_path / "src", images)
    mapped = cached_images([path], CountingDecoder((3, 16, 16)), tmp_path / "c", decoder="d")
    dataset = CachedImageDataset(mapped, torch.arange(400), mean=0.5, std=0.5)
    data = pickle.dumps(dataset)
    assert len(data) < 20_000
    copy = pickle.loads(data)
    assert isinstance(copy.images, np.memmap) and copy.fingerprint() == dataset.fingerprint()
    torch.testing.assert_close(copy.batch([5, 399])[0], dataset.batch([5, 399])[0], atol=0, rtol=0)
    in_memory = CachedImageDataset(np.array(images), torch.arange(400), mean=0.5, std=0.5)
    assert len(pickle.dumps(in_memory)) > images.nbytes  # a plain array travels whole
    assert len(pickle.dumps(CachedImageDataset(mapped[:10], torch.arange(10), mean=0.5, std=0.5))) < 20_000


def test_dataloader_with_workers_gives_the_batches_of_the_main_process(tmp_path: Path) -> None:
    images = images_of(8, (40, 3, 4, 4))
    path = write_source(tmp_path / "src", images)
    mapped = cached_images([path], CountingDecoder((3, 4, 4)), tmp_path / "c", decoder="d")
    dataset = CachedImageDataset(
        mapped, {"a": torch.arange(40), "b": torch.arange(40) % 3}, mean=[0.1] * 3, std=[0.2] * 3
    )

    def batches(workers: int) -> list:
        loader = DataLoader(
            dataset, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(3), num_workers=workers
        )
        return list(loader)

    main, parallel = batches(0), batches(2)
    assert len(main) == len(parallel) == 7
    for (x0, y0), (x2, y2) in zip(main, parallel):
        torch.testing.assert_close(x2, x0, atol=0, rtol=0)
        assert y0["a"].tolist() == y2["a"].tolist() and y0["b"].tolist() == y2["b"].tolist()
        expected = dataset.batch(y0["a"])  # the index is the "a" target
        torch.testing.assert_close(x0, expected[0], atol=0, rtol=0)


# -- memory ----------------------------------------------------------------------------------------------------


def test_dataset_holds_the_uint8_memmap_and_numpy_allocates_only_batches(tmp_path: Path) -> None:
    count, shape = 2000, (3, 16, 16)
    path = write_source(tmp_path / "src", images_of(9, (count, *shape)))
    mapped = cached_images([path], CountingDecoder(shape), tmp_path / "c", decoder="d")
    whole_float = count * int(np.prod(shape)) * 4
    tracemalloc.start()
    try:
        dataset = CachedImageDataset(mapped, torch.arange(count), mean=0.5, std=0.5)
        for start in range(0, 320, 32):
            dataset.batch(np.arange(start, start + 32))
            dataset.__getitems__(list(range(start, start + 32)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(dataset.images, np.memmap) and dataset.images.dtype == np.uint8
    assert not any(
        isinstance(value, (np.ndarray, torch.Tensor)) and value.nbytes >= count * 4 * 10
        for value in vars(dataset).values()
        if value is not dataset.images
    )
    assert peak < whole_float / 50, peak  # a batch of 32 uint8 rows is 24 kB; the float32 set would be 6 MB


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from mtlscope.data.image_cache import CachedImageDataset, cached_images

    def status_mb(field):  # VmHWM: this process's peak resident memory (ru_maxrss would count the parent's)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024

    def peak_mb():
        return status_mb("VmHWM")

    source, cache, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    def decode(_):
        raise AssertionError("the cache was filled by the test")
    torch.ones(64, 64).mul(2)  # torch's own first-use allocations before the baseline
    before, anonymous_before = peak_mb(), status_mb("RssAnon")
    images = cached_images([source], decode, cache, decoder="d")
    dataset = CachedImageDataset(images, torch.arange(count), mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    generator = np.random.default_rng(0)
    for _ in range(20):
        dataset.batch(generator.integers(0, count, 64))
        dataset.__getitems__(generator.integers(0, count, 64).tolist())
    dataset.fingerprint()
    cached = peak_mb() - before
    anonymous = status_mb("RssAnon") - anonymous_before
    whole = torch.from_numpy(np.asarray(images)).float()  # the control: what the dataset must not do
    control = peak_mb() - before
    print(cached, anonymous, control, whole.nbytes / 2**20, images.nbytes / 2**20)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc (Linux)")
def test_building_and_reading_batches_takes_far_less_memory_than_a_float32_copy(tmp_path: Path) -> None:
    count, shape = 8000, (3, 32, 32)  # 24.6 MB of uint8, 98 MB as float32
    path = write_source(tmp_path / "src", images_of(10, (count, *shape)))
    cached_images([path], CountingDecoder(shape), tmp_path / "c", decoder="d")
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(tmp_path / "c"), str(count)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cached, anonymous, control, float_mb, uint8_mb = map(float, done.stdout.split())
    assert control > 0.9 * float_mb, (cached, control)  # the measurement sees a float32 copy of the set ...
    # ... and the dataset makes none: its peak is at most the memory map's file pages (the kernel maps the pages
    # around each row read, so random batches end up mapping most of the file; the page cache holds them, not the
    # process's own memory) and a few batches; the memory it allocated itself stays small
    assert cached < uint8_mb + float_mb / 8, (cached, uint8_mb, float_mb)
    assert anonymous < float_mb / 8, (anonymous, float_mb)


def test_idx_files_through_the_cache(tmp_path: Path) -> None:
    import gzip
    import struct

    images = images_of(11, (5, 28, 28))
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 5, 28, 28)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    mapped = cached_images(
        [tmp_path / "train-images-idx3-ubyte.gz"], lambda paths: read_idx(paths[0]), tmp_path / "c", decoder="idx/1"
    )
    dataset = CachedImageDataset(mapped, torch.arange(5), mean=0.0, std=1.0, layout="NHW")
    torch.testing.assert_close(
        dataset.batch([2])[0][0, 0], torch.from_numpy(images[2]).float() / 255, atol=1e-7, rtol=0
    )


# -- decoding in place (shape=): a set larger than memory is written chunk by chunk --------------------------------


class ChunkedDecoder:
    """Writes the source's images into the given array a few rows at a time (what a streaming decoder does)."""

    def __init__(self, shape: tuple[int, ...], chunk: int = 5) -> None:
        self.shape, self.chunk, self.calls = shape, chunk, 0

    def __call__(self, sources: Sequence[Path], out: np.ndarray) -> None:
        self.calls += 1
        assert isinstance(out, np.memmap) and out.flags.writeable and out.dtype == np.uint8
        images = np.fromfile(sources[0], dtype=np.uint8).reshape(-1, *self.shape)
        for start in range(0, len(images), self.chunk):
            out[start : start + self.chunk] = images[start : start + self.chunk]


def test_in_place_decode_gives_the_same_entry_as_a_returned_array(
    tmp_path: Path, source: tuple[Path, np.ndarray]
) -> None:
    path, images = source
    decode = ChunkedDecoder(images.shape[1:])
    first = cached_images([path], decode, tmp_path / "a", decoder="chunked/1", shape=images.shape)
    assert decode.calls == 1 and first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, images)
    again = cached_images([path], decode, tmp_path / "a", decoder="chunked/1", shape=images.shape, check="full")
    assert decode.calls == 1  # a hit: not decoded again, and the full checksum of the header holds
    np.testing.assert_array_equal(again, images)
    returned = cached_images([path], CountingDecoder(images.shape[1:]), tmp_path / "b", decoder="chunked/1")
    header_a = json.loads(next((tmp_path / "a").glob("*.json")).read_text())
    header_b = json.loads(next((tmp_path / "b").glob("*.json")).read_text())
    assert header_a == header_b  # same key, offset, size and checksums as the in-memory path
    np.testing.assert_array_equal(returned, first)
    assert entry_key(first) == header_a["key"]
    assert not [name for name in entry_files(tmp_path / "a") if name.endswith(".tmp")]


def test_in_place_decode_that_fails_leaves_nothing(tmp_path: Path, source: tuple[Path, np.ndarray]) -> None:
    path, images = source

    def broken(sources: Sequence[Path], out: np.ndarray) -> None:
        out[:3] = 7
        raise ValueError("image 4 is unreadable")

    with pytest.raises(ValueError, match="image 4 is unreadable"):
        cached_images([path], broken, tmp_path / "cache", decoder="broken/1", shape=images.shape)
    assert entry_files(tmp_path / "cache") == [next((tmp_path / "cache").glob("*.lock")).name]

    def returns(sources: Sequence[Path], out: np.ndarray) -> np.ndarray:
        return images

    with pytest.raises(ValueError, match="must write into the array it is given and return None"):
        cached_images([path], returns, tmp_path / "cache", decoder="returns/1", shape=images.shape)
    assert all(name.endswith(".lock") for name in entry_files(tmp_path / "cache"))


@pytest.mark.parametrize("shape", [(), (0, 3), (2, -1), (2.0, 3), (True, 3), "12"])
def test_in_place_decode_refuses_a_bad_shape(tmp_path: Path, source: tuple[Path, np.ndarray], shape: object) -> None:
    path, images = source
    with pytest.raises(ValueError, match=r"image cache 'images': shape .*: expected positive integers"):
        cached_images([path], ChunkedDecoder(images.shape[1:]), tmp_path, decoder="x/1", shape=shape)  # type: ignore[arg-type]
