from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import DataError
from pdml_ray.data.io import atomic_directory, atomic_file, image_size, read_image, read_label


@pytest.mark.parametrize("mode, dtype", [("L", np.uint8), ("I;16", np.uint16), ("P", np.uint8)])
def test_single_channel_label_modes_are_read_as_stored(tmp_path, mode, dtype):
    values = (np.arange(48).reshape(6, 8) * (1000 if mode == "I;16" else 5)).astype(dtype)
    img = Image.fromarray(values, mode="L" if mode == "P" else None)
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 0, 0)])
        img.putdata(values.ravel().tolist())
    img.save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as stored:
        assert stored.mode == mode
    out = read_label(tmp_path / "x.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_label_pngs_are_refused(tmp_path, mode):
    Image.new(mode, (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match=f"mode {mode}"):
        read_label(tmp_path / "x.png")


def test_images_are_rgb_and_headers_give_the_size(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8 and (image == 7).all()
    assert image_size(tmp_path / "g.png") == (3, 5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_and_garbage_files_fail_with_the_path(tmp_path, fmt):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="cannot decode image") as info:
        read_image(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot decode"):
        read_image(path)
    with pytest.raises(DataError, match="image not found"):
        read_image(tmp_path / "missing.jpg")


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]


def test_atomic_directory_loses_a_race_cleanly(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as mine:
            (mine / "a").write_text("mine")
            target.mkdir()
            (target / "b").write_text("theirs")
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["d"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty) as mine:
        (mine / "a").write_text("mine")
    assert os.listdir(empty) == ["a"]


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o022)``; the old one is put back."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_atomic_files_and_folders_get_the_modes_open_and_mkdir_would_give(tmp_path, umask):
    """Not the owner-only modes of their temporary files: under umask 022 teammates on a
    shared filesystem can read them."""
    with atomic_file(tmp_path / "new.txt") as tmp:
        tmp.write_text("x")
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "a").write_text("a")
    assert (mode(tmp_path / "new.txt"), mode(tmp_path / "folder")) == (0o644, 0o755)
    umask(0o077)
    with atomic_file(tmp_path / "private.txt") as tmp:
        tmp.write_text("x")
    with atomic_directory(tmp_path / "private") as tmp:
        pass
    assert (mode(tmp_path / "private.txt"), mode(tmp_path / "private")) == (0o600, 0o700)
    # An existing file keeps its own mode, as open(path, "w") keeps it.
    (tmp_path / "shared.txt").write_text("old")
    os.chmod(tmp_path / "shared.txt", 0o664)
    with atomic_file(tmp_path / "shared.txt") as tmp:
        tmp.write_text("new")
    assert mode(tmp_path / "shared.txt") == 0o664


def test_the_umask_is_read_without_being_changed(umask):
    from pdml_ray.data.io import current_umask

    umask(0o027)
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still in force


def test_data_error_names_the_source_and_survives_pickling():
    import pickle

    error = DataError("a/b.png", "label PNG has mode RGB")
    assert str(error) == "a/b.png: label PNG has mode RGB" and isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.source == "a/b.png"


# -- files that are not what their name says ------------------------------------------------
def test_jpeg_data_named_png_is_refused_as_a_label_map(tmp_path):
    """JPEG compression moves class ids (31% of the pixels of a real case): never read one."""
    path = tmp_path / "x.png"
    Image.fromarray(np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4),
                            np.ones((8, 8), np.uint8))).save(path, format="JPEG")
    with Image.open(path) as stored:
        assert stored.format == "JPEG" and stored.mode == "L"
    with pytest.raises(DataError) as info:
        read_label(path)
    assert str(info.value) == (f"{path}: label map is JPEG data, not PNG (lossy compression has "
                               "changed its class ids); save label maps as PNG")


def png_header(width: int, height: int) -> bytes:
    """The first bytes of an 8-bit grey PNG of ``width`` x ``height``: enough for a
    header, no pixel data (as a decompression bomb is tiny until decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    first_row = zlib.compress(bytes(1 + width))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", first_row)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(10000, 10000), (20000, 20000)])
def test_images_beyond_the_pixel_cap_are_refused_from_the_header(tmp_path, width, height):
    from pdml_ray.data import io as data_io

    assert data_io.MAX_IMAGE_PIXELS == 64_000_000
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))
    for read in (read_image, read_label, image_size):
        with pytest.raises(DataError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "data.max_image_pixels = 64000000" in message
    if width == 10000:  # below Pillow's own bomb limit: the size is ours to report
        assert message == (f"{path}: image is 10000x10000 (HxW), 100000000 pixels: more than "
                           "data.max_image_pixels = 64000000; downscale it, or raise "
                           "data.max_image_pixels (--set data.max_image_pixels=N)")
    path.write_bytes(png_header(8000, 8000))  # 64 megapixels exactly: allowed, header only
    assert image_size(path) == (8000, 8000)


def test_symlink_loop_broken_symlink_and_folder_are_told_apart(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError) as info:
        read_label(loop)
    assert str(info.value) == f"{loop}: label map is a symlink loop (the link leads back to itself)"
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataError) as info:
        read_image(broken)
    assert str(info.value) == f"{broken}: image is a broken symlink (to {tmp_path / 'gone.jpg'})"
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(DataError) as info:
        image_size(tmp_path / "folder.jpg")
    assert str(info.value) == f"{tmp_path / 'folder.jpg'}: image is a folder, not a file"


# -- output folders, checked before a job's long work -----------------------------------------
def test_output_folder_that_is_a_file_lies_under_a_file_or_cannot_be_written(tmp_path):
    from pdml_ray.data.io import check_output_folder

    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    with pytest.raises(DataError) as info:
        check_output_folder(a_file, "--out")
    assert str(info.value) == f"{a_file}: is a file; --out must be a folder"
    under = a_file / "sub" / "out"
    with pytest.raises(DataError) as info:
        check_output_folder(under, "--out")
    assert str(info.value) == f"{under}: cannot create --out there: {a_file} is a file"
    # sysfs refuses new files, to root as well: a place no job can write to.
    with pytest.raises(DataError) as info:
        check_output_folder("/sys/kernel/pdml_out", "--out")
    assert str(info.value) == ("/sys/kernel/pdml_out: cannot write --out there (in /sys/kernel): "
                               "Permission denied")
    fine = tmp_path / "new" / "out"
    assert check_output_folder(fine) == fine
    assert os.listdir(tmp_path) == ["taken.txt"]  # nothing created, no probe file left
