"""The CelebA reader: the official text files checked strictly, JPEGs decoded and resized as the papers' code does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlscope.data.catalog import MissingDataError, dataset_info, locate
from mtlscope.data.sources import celeba as source
from tests.data.celeba_files import PARTITION, file_name, write_celeba


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    return root, write_celeba(root)


def _read(root: Path) -> source.Annotations:
    return source.read_annotations(root / "list_attr_celeba.txt", root / "list_eval_partition.txt")


def test_annotations_follow_the_partition_and_map_minus_one_to_zero(tiny: tuple[Path, dict]) -> None:
    root, written = tiny
    annotations = _read(root)
    codes = {"train": 0, "val": 1, "test": 2}
    for split, code in codes.items():
        rows = [i for i, c in enumerate(PARTITION) if c == code]
        assert annotations.files[split] == [file_name(i) for i in rows]  # file order within the split
        labels = annotations.labels[split]
        assert labels.dtype == np.uint8 and labels.shape == (len(rows), 40)
        np.testing.assert_array_equal(labels, (written["labels"][rows] == 1).astype(np.uint8))
    assert sorted(name for files in annotations.files.values() for name in files) == [
        file_name(i) for i in range(len(PARTITION))
    ]
    assert len(source.ATTRIBUTES) == len(set(source.ATTRIBUTES)) == 40


def _half_pixel_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres, no antialiasing (tf.image.resize), written out for one image
    [H, W, C] in float64: an independent check of ``source.resize``."""
    height, width = image.shape[:2]

    def weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        position = np.clip(position, 0, None)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, position - low

    y0, y1, wy = weights(size, height)
    x0, x1, wx = weights(size, width)
    data = image.astype(np.float64)
    top = data[y0][:, x0] * (1 - wx)[None, :, None] + data[y0][:, x1] * wx[None, :, None]
    bottom = data[y1][:, x0] * (1 - wx)[None, :, None] + data[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def test_resize_is_half_pixel_bilinear_without_antialiasing() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
    resized = source.resize(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    expected = np.clip(np.round(_half_pixel_bilinear(image, 64)), 0, 255)
    assert resized.dtype == np.uint8 and resized.shape == (64, 64, 3)
    assert np.abs(resized.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 rounding ties
    assert (resized.astype(int) == expected.astype(int)).mean() > 0.99


def test_decode_images_agrees_with_pil_then_resize_in_chunks(tiny: tuple[Path, dict], monkeypatch) -> None:
    from PIL import Image

    root, _ = tiny
    paths = [root / "img_align_celeba" / file_name(i) for i in range(len(PARTITION))]
    monkeypatch.setattr(source, "CHUNK", 5)  # several chunks, the last one short
    out = np.zeros((len(paths), 3, 64, 64), dtype=np.uint8)
    source.decode_images(paths, out, workers=2)
    for index, path in enumerate(paths):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        expected = np.clip(np.round(_half_pixel_bilinear(pixels, 64)), 0, 255).transpose(2, 0, 1)
        assert np.abs(out[index].astype(int) - expected.astype(int)).max() <= 1
    assert len({out[i].tobytes() for i in range(len(paths))}) == len(paths)  # every row written, none repeated


def test_decode_images_of_several_sizes(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for index, size in enumerate([(178, 218), (100, 80)]):
        paths.append(tmp_path / f"{index}.jpg")
        Image.new("RGB", size, color=(10 + 100 * index, 50, 200)).save(paths[-1], format="JPEG", quality=95)
    out = np.zeros((2, 3, 64, 64), dtype=np.uint8)
    source.decode_images(paths, out)
    assert abs(int(out[0, 0].mean()) - 10) <= 2 and abs(int(out[1, 0].mean()) - 110) <= 2


def _rewrite(path: Path, line: int, text: str | None) -> None:
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


ATTR, PART = "list_attr_celeba.txt", "list_eval_partition.txt"
VALUES = " ".join(["1"] * 40)


@pytest.mark.parametrize(
    ("name", "line", "text", "message"),
    [
        (ATTR, 1, "twelve", r"list_attr_celeba.txt line 1: expected the number of images \(a positive integer\)"),
        (ATTR, 1, "13", r"list_attr_celeba.txt: line 1 declares 13 images, the file lists 12"),
        (ATTR, 2, " ".join(source.ATTRIBUTES[:39]), r"list_attr_celeba.txt line 2: expected the 40 CelebA attribute"),
        (
            ATTR,
            2,
            " ".join(("Blurry", *source.ATTRIBUTES[1:])),
            r"list_attr_celeba.txt line 2: attribute 1 is 'Blurry'; expected '5_o_Clock_Shadow'",
        ),
        (
            ATTR,
            5,
            "000003.jpg " + " ".join(["1"] * 39),
            r"list_attr_celeba.txt line 5: expected a file name and 40 values, got 39 values",
        ),
        (ATTR, 5, "000003.jpg " + VALUES + " 1", r"line 5: expected a file name and 40 values, got 41 values"),
        (
            ATTR,
            5,
            "000003.jpg 0 " + " ".join(["1"] * 39),
            r"list_attr_celeba.txt line 5: value '0' of 5_o_Clock_Shadow; expected 1 or -1",
        ),
        (
            ATTR,
            6,
            "000004.jpg " + " ".join(["1"] * 10) + " yes " + " ".join(["1"] * 29),
            r"line 6: value 'yes' of Blurry; expected 1 or -1",
        ),
        (
            ATTR,
            4,
            "000001.jpg " + VALUES,
            r"list_attr_celeba.txt line 4: 000001.jpg is listed again \(first on line 3\)",
        ),
        (PART, 2, "000002.jpg", r"list_eval_partition.txt line 2: expected 'filename split', got 1 fields"),
        (
            PART,
            2,
            "000002.jpg 3",
            r"list_eval_partition.txt line 2: split '3' of 000002.jpg; expected 0 \(train\), 1 \(val\) or 2 \(test\)",
        ),
        (PART, 2, "000001.jpg 0", r"list_eval_partition.txt line 2: 000001.jpg is listed again \(first on line 1\)"),
        (PART, 3, "999999.jpg 1", r"list_eval_partition.txt line 3: 999999.jpg is not in list_attr_celeba.txt"),
        (
            PART,
            12,
            None,
            r"list_attr_celeba.txt line 14: 000012.jpg is not in list_eval_partition.txt .*every image needs a split",
        ),
    ],
)
def test_malformed_annotations_give_one_line(
    tiny: tuple[Path, dict], name: str, line: int, text: str | None, message: str
) -> None:
    root, _ = tiny
    _rewrite(root / name, line, text)
    with pytest.raises(ValueError, match=message) as error:
        _read(root)
    assert "\n" not in str(error.value) and str(root / name).split("/")[-1] in str(error.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (ATTR, b"", r"list_attr_celeba.txt: empty file"),
        (ATTR, b"12\n", r"list_attr_celeba.txt: no line 2"),
        (ATTR, b"12\n5_o_Clock\xff\n", r"list_attr_celeba.txt line 2: not ASCII text \(byte 0xff\)"),
    ],
)
def test_empty_truncated_or_binary_attribute_files(
    tiny: tuple[Path, dict], name: str, content: bytes, message: str
) -> None:
    root, _ = tiny
    (root / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        _read(root)


def test_truncated_attribute_file(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    path = root / ATTR
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut in the middle of a line
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: line 1 declares 12 images, the file lists 5"):
        _read(root)


def test_windows_line_endings_and_trailing_blank_lines_are_read(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    expected = _read(root)
    for name in (ATTR, PART):
        path = root / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    again = _read(root)
    assert again.files == expected.files
    for split in expected.labels:
        np.testing.assert_array_equal(again.labels[split], expected.labels[split])


def test_unreadable_and_non_jpeg_images_give_one_line(tiny: tuple[Path, dict]) -> None:
    root, _ = tiny
    folder = root / "img_align_celeba"
    out = np.zeros((1, 3, 64, 64), dtype=np.uint8)
    (folder / "garbage.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"garbage.jpg: unreadable JPEG \(cannot identify image file"):
        source.decode_images([folder / "garbage.jpg"], out)
    whole = (folder / file_name(0)).read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut.jpg: unreadable JPEG \(image file is truncated"):
        source.decode_images([folder / "cut.jpg"], out)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "png.jpg", format="PNG")
    with pytest.raises(ValueError, match=r"png.jpg: not a JPEG image \(PNG\)"):
        source.decode_images([folder / "png.jpg"], out)
    with pytest.raises(ValueError, match=r"absent.jpg: missing image file"):
        source.decode_images([folder / "absent.jpg"], out)


def test_catalog_entry_has_the_official_files_and_no_download(tmp_path: Path) -> None:
    info = dataset_info("celeba")
    assert [entry.paths[0] for entry in info.files] == ["img_align_celeba", ATTR, PART]
    assert all(entry.url is None for entry in info.files)
    assert info.file("attributes").md5 == "75e246fa4810816ffd6ee81facbd244c"
    assert "mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in info.source
    with pytest.raises(MissingDataError) as error:
        locate("celeba", tmp_path)
    message = str(error.value)
    assert message.startswith(f"celeba: missing {tmp_path / 'img_align_celeba'}") and "\n" not in message
    assert "or run `mtlscope data download" not in message and "CelebA.html" in message


def test_torchvision_layout_is_found(tmp_path: Path) -> None:
    write_celeba(tmp_path / "celeba", count=3)
    found = locate("celeba", tmp_path)
    assert found == {
        "images": tmp_path / "celeba" / "img_align_celeba",
        "attributes": tmp_path / "celeba" / ATTR,
        "partition": tmp_path / "celeba" / PART,
    }
