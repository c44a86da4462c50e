"""Helpers the dataset converters share: index files, image bytes, masks, messages.

Everything here runs in the writer's worker processes too, so it imports
neither TensorFlow nor OpenCV at module level (PIL and numpy only).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from tfrecords.errors import BadRecord

# PIL's format names -> the schema's; anything else is re-encoded as PNG.
_STORED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}


@dataclasses.dataclass(frozen=True)
class IndexLine:
    """One non-empty line of an index file: where it is and its fields."""

    path: str
    lineno: int
    fields: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path} line {self.lineno}"


def read_text(path: str, *, what: str) -> str:
    """Reads a UTF-8 text file, with an error that says which file the converter needs."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} not found: {path} (check --data_dir: it must be the dataset's folder "
            "as its publishers ship it)"
        ) from None


def parse_index(
    text: str,
    path: str,
    *,
    sep: str | None = None,
    num_fields: int | None = None,
    maxsplit: int = -1,
) -> list[IndexLine]:
    """Splits an index file into lines of fields, skipping empty lines.

    Args:
      text: the file's content.
      path: the file's name, for messages.
      sep: field separator (``None``: any whitespace).
      num_fields: required number of fields per line (``None``: any).
      maxsplit: as ``str.split``.

    Raises:
      ValueError: a line with the wrong number of fields, naming file and line.
    """
    lines = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = tuple(field.strip() for field in line.split(sep, maxsplit))
        if num_fields is not None and len(fields) != num_fields:
            raise ValueError(
                f"{path} line {lineno}: expected {num_fields} fields, got {len(fields)} in "
                f"{raw!r}: the file is not in its dataset's published format"
            )
        lines.append(IndexLine(path, lineno, fields))
    return lines


def read_index(path: str, *, what: str, **kwargs) -> list[IndexLine]:
    """``parse_index`` of a file on disk."""
    return parse_index(read_text(path, what=what), path, **kwargs)


def to_number(line: IndexLine, index: int, kind: type = float) -> float | int:
    """Field ``index`` of ``line`` as a number, or a ValueError naming the line."""
    try:
        value = kind(line.fields[index])
    except (ValueError, IndexError):
        wanted = "an integer" if kind is int else "a number"
        got = line.fields[index] if index < len(line.fields) else "(missing)"
        raise ValueError(f"{line.where}: field {index + 1} must be {wanted}, got {got!r}") from None
    if kind is float and not np.isfinite(value):
        raise ValueError(f"{line.where}: field {index + 1} is not finite: {value}")
    return value


def listed(file: str, index: str | None) -> str:
    """``"<file> (listed in <index>)"``: how messages name a record's file."""
    return f"{file} (listed in {index})" if index else file


def read_bytes(path: str, *, where: str) -> bytes:
    """Reads a file a record needs; a missing or unreadable file is a BadRecord."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise BadRecord(
            f"{where}: file not found: restore it from the dataset's archive, or skip the "
            "record with --skip_bad"
        ) from None
    except OSError as error:
        raise BadRecord(f"{where}: cannot read it ({error})") from None


def decode_image(data: bytes, *, where: str, mode: str | None = None):
    """Fully decodes encoded image bytes with PIL (catches truncated files).

    Returns:
      The loaded ``PIL.Image`` (converted to ``mode`` when given).

    Raises:
      BadRecord: the bytes do not decode, naming ``where``.
    """
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises several types for undecodable data
        raise BadRecord(
            f"{where} does not decode as an image ({type(error).__name__}: {error}): replace "
            "the file from the dataset's archive, or skip the record with --skip_bad"
        ) from None
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    return image


def stored_image(data: bytes, *, where: str) -> tuple[bytes, str, int, int]:
    """The bytes to store for an image file, its format, width and height.

    JPEG and PNG files are stored as they are (no re-encoding); other formats
    (GIF, BMP, ...) are re-encoded losslessly as PNG.
    """
    image = decode_image(data, where=where)
    fmt = _STORED_FORMATS.get(image.format or "")
    width, height = image.size
    if fmt is None:
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return encode_png(image), "png", width, height
    return data, fmt, width, height


def encode_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image, quality: int = 95) -> bytes:
    """JPEG bytes of a PIL image (RGB or L), at ``quality`` with 4:4:4 chroma."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def mask_png(foreground: np.ndarray) -> bytes:
    """A boolean ``[H, W]`` array as the schema's mask: 1-channel PNG, 255 = set, 0 = not."""
    from PIL import Image

    array = np.where(np.asarray(foreground, bool), 255, 0).astype(np.uint8)
    return encode_png(Image.fromarray(array, mode="L"))


def gray_mask(data: bytes, *, where: str, size: tuple[int, int]) -> np.ndarray:
    """Decodes a mask file as 8-bit grayscale ``[H, W]`` and checks it has the image's size.

    Args:
      size: the image's ``(width, height)``.
    """
    image = decode_image(data, where=where, mode="L")
    if image.size != tuple(size):
        raise BadRecord(
            f"{where}: the mask is {image.size[0]}x{image.size[1]} but its image is "
            f"{size[0]}x{size[1]}: the mask does not belong to this image"
        )
    return np.asarray(image, dtype=np.uint8)


def check_box(box, *, where: str) -> None:
    """A box with ``x1 < x0`` or ``y1 < y0`` is a BadRecord naming its line."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise BadRecord(
            f"{where}: box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has x1 < x0 or y1 < y0: "
            "fix the annotation, or skip the record with --skip_bad"
        )


def require_dir(path: str, *, what: str) -> str:
    """``path`` if it is a folder, else a FileNotFoundError saying what was expected."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path} is not a folder")
    return path
