"""What a prompt carries besides its own text: images (a plot a cell showed, a figure, a
file) and compact summaries of data (a DataFrame, an array, a long list or string).

An image goes to an OpenAI-compatible server as an ``image_url`` part with a ``data:`` URL
beside the prompt's text, as the official client sends one. One larger than servers take
is scaled down (with Pillow, when it is installed) or refused, never sent as tens of MB.
No IPython here: values are recognised by what they are, not imported.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, NamedTuple

from .exceptions import InvalidRequestError

#: The longest side and the size an image may have as sent. OpenAI scales images to fit
#: 2048 px (and takes 20 MB at most); others (llama.cpp, vLLM) take what the model does.
MAX_SIDE = 2048
MAX_BYTES = 5_000_000
#: What an image costs in context, in tokens: OpenAI's count for a "high detail" image of
#: 768 x 1536 px (85, and 170 for each of its 6 tiles of 512 px; a 4:3 plot has 4, 765
#: tokens), a fair guess for others.
IMAGE_TOKENS = 1_105
#: The formats servers take, by the bytes that open them.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


class Picture(NamedTuple):
    """An image in a prompt: its bytes, and where it came from."""

    data: bytes
    mime: str
    width: int | None
    height: int | None
    #: Where it came from, as the prompt named it: ``Out[3]``, ``fig``, ``plot.png``.
    source: str
    #: A notebook output holds these same bytes: a saved notebook keeps them once, there.
    in_output: bool = False
    #: The bytes' SHA-1: how a saved record finds them again in the notebook's outputs.
    sha1: str = ""

    def __repr__(self) -> str:
        return f"Picture({self.describe()})"

    @property
    def missing(self) -> bool:
        """A saved reference whose image was not found again (``--from-notebook``)."""
        return not self.data

    def data_url(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def part(self) -> dict[str, Any]:
        """The image as a message's content part, as the official ``openai`` client sends."""
        return {"type": "image_url", "image_url": {"url": self.data_url()}}

    def describe(self) -> str:
        """``PNG 640x480, 23 kB, from Out[3]``."""
        return f"{self.kind()}, from {self.source}"

    def kind(self) -> str:
        """``PNG 640x480, 23 kB``."""
        size = f" {self.width}x{self.height}" if self.width and self.height else ""
        kind = self.mime.partition("/")[2].upper()
        return f"{kind}{size}, {_kilobytes(len(self.data))}"

    def to_json(self, inline: bool) -> dict[str, Any]:
        """What a record saves: the bytes (``inline``, or when no output holds them), or a
        reference by hash to the output that does."""
        import base64

        data = {k: v for k, v in self._asdict().items() if k != "data"}
        if inline or not self.in_output:
            data["data"] = base64.b64encode(self.data).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: Any) -> Picture:
        import base64

        if not isinstance(data, dict) or not isinstance(data.get("mime"), str):
            raise ValueError("has an image that is not an object with a 'mime'")
        try:
            raw = base64.b64decode(data["data"], validate=True) if "data" in data else b""
        except (TypeError, ValueError):
            raise ValueError("has an image whose 'data' is not base64") from None
        if raw and picture_kind(raw) is None:
            raise ValueError("has an image that is not a PNG, JPEG or GIF")
        width, height = (data.get(side) for side in ("width", "height"))
        return cls(
            raw,
            picture_kind(raw) or data["mime"],
            width if isinstance(width, int) else None,
            height if isinstance(height, int) else None,
            source=str(data.get("source", "an image")),
            in_output=bool(data.get("in_output")),
            sha1=str(data.get("sha1", "")) if raw == b"" else sha1(raw),
        )


def sha1(data: bytes) -> str:
    import hashlib  # (here: its OpenSSL costs loading the extension some 3 ms)

    return hashlib.sha1(data).hexdigest()


def picture_of(value: Any, source: str) -> Picture | None:
    """``value`` as an image, if it is one: a matplotlib Figure, a PIL image or an
    ``IPython.display.Image`` (with its bytes); else None."""
    import io

    module = type(value).__module__
    if module.startswith("matplotlib.") and hasattr(value, "savefig"):
        buffer = io.BytesIO()
        value.savefig(buffer, format="png", bbox_inches="tight")
        return picture_of_bytes(buffer.getvalue(), source)
    if module.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "mode"):
        buffer = io.BytesIO()
        image = value if value.mode in ("RGB", "RGBA", "L", "LA", "P") else value.convert("RGB")
        image.save(buffer, format="PNG")
        return picture_of_bytes(buffer.getvalue(), source)
    if module.startswith("IPython.") and type(value).__name__ == "Image":
        data = getattr(value, "data", None)
        if isinstance(data, bytes) and picture_kind(data):
            return picture_of_bytes(data, source)
        raise InvalidRequestError(
            f"{{{source}}} is an IPython Image without its bytes (one made from a URL, or "
            "with embed=False): make it with Image(filename=...) or Image(data=...), or "
            "give the file with -i PATH."
        )
    return None


def picture_of_bytes(
    data: bytes, source: str, in_output: bool = False, scale: bool = True
) -> Picture:
    """The image ``data`` holds; scaled down to what servers take (see ``fit``), unless
    not ``scale``."""
    mime = picture_kind(data)
    if mime is None:
        raise InvalidRequestError(
            f"{source} is not a PNG, JPEG or GIF image; those are the formats servers "
            "take. Convert it, e.g. with Pillow: Image.open(path).save('image.png')."
        )
    picture = Picture(data, mime, *_dimensions(data, mime), source, in_output, sha1(data))
    return fit(picture) if scale else picture


def picture_of_file(path: str) -> Picture:
    """An image file, for ``-i PATH``."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as error:
        raise InvalidRequestError(
            f"-i {path}: could not read it ({error.strerror or error}). Give the path of "
            "an image file (PNG, JPEG or GIF)."
        ) from None
    return picture_of_bytes(data, file.name)


def picture_kind(data: bytes) -> str | None:
    """The image's MIME type, by its first bytes; None if it is not one servers take."""
    for signature, mime in _SIGNATURES.items():
        if data.startswith(signature):
            return mime
    return None


def fit(picture: Picture) -> Picture:
    """``picture``, scaled down if it is larger than servers take; refused if it is and
    Pillow is not there to scale it."""
    width, height = picture.width or 0, picture.height or 0
    if max(width, height) <= MAX_SIDE and len(picture.data) <= MAX_BYTES:
        return picture
    try:
        from PIL import Image
    except ImportError:
        raise InvalidRequestError(
            f"The image from {picture.source} is too large to send ({width}x{height}, "
            f"{_kilobytes(len(picture.data))}; servers take at most {MAX_SIDE} px a side and "
            f"{_kilobytes(MAX_BYTES)}). Install Pillow (pip install pillow) to have it scaled "
            "down, or make it smaller."
        ) from None
    import io

    image = Image.open(io.BytesIO(picture.data))
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    if buffer.tell() > MAX_BYTES:  # (a photograph: JPEG holds it in far less)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    data = buffer.getvalue()
    mime = picture_kind(data) or "image/png"
    width, height = image.size
    return picture._replace(
        data=data, mime=mime, width=width, height=height, in_output=False, sha1=sha1(data)
    )


def _dimensions(data: bytes, mime: str) -> tuple[int | None, int | None]:
    """Width and height from the image's header (PNG, GIF, JPEG); None if unreadable."""
    try:
        if mime == "image/png":
            return struct.unpack(">II", data[16:24])
        if mime == "image/gif":
            return struct.unpack("<HH", data[6:10])
        at = 2  # JPEG: the frame's header (an SOFn marker) holds them
        while at + 9 < len(data):
            marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[at + 5 : at + 9])
                return width, height
            at += 2 + length
    except struct.error:
        pass
    return None, None


def _kilobytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(1, round(size / 1e3))} kB"


# -- data --------------------------------------------------------------------------------


def summary_of(value: Any, cap: int) -> tuple[str, str] | None:
    """A compact, labelled summary of a data value (its kind, and the text to send), or None
    for a value whose ``str()`` is sent as it is (short, or not data)."""
    module = type(value).__module__.partition(".")[0]
    name = type(value).__name__
    if module == "pandas" and name in ("DataFrame", "Series"):
        return name, _cap(_frame(value if name == "DataFrame" else value.to_frame(), cap), cap)
    if module == "numpy" and name == "ndarray":
        return "ndarray", _cap(_array(value), cap)
    if isinstance(value, (list, tuple, dict, set)) and len(text := str(value)) > cap:
        return type(value).__name__, _cap(_collection(value, text), cap)
    if isinstance(value, str) and len(value) > cap:
        return "str", _cap(value, cap)
    return None


#: A frame of more rows than this is never made into a whole table (it would not fit).
WHOLE_ROWS = 2_000


def _frame(frame: Any, cap: int, rows: int = 5) -> str:
    """``frame`` as its shape and dtypes and a Markdown table: all of it, when that fits in
    ``cap`` characters; else its first and last ``rows`` rows."""
    header = (
        f"pandas DataFrame, {len(frame):,} rows x {len(frame.columns):,} columns; dtypes: "
        + ", ".join(f"{column} {dtype}" for column, dtype in frame.dtypes.items())
    )
    if len(frame) <= WHOLE_ROWS:
        whole = f"{header}\n\n{_table(frame)}"
        if len(frame) <= 2 * rows or len(whole) <= cap:
            return whole
    return (
        f"{header}\n\nFirst {rows} rows:\n\n{_table(frame.head(rows))}\n\n"
        f"Last {rows} rows:\n\n{_table(frame.tail(rows))}"
    )


def _table(frame: Any) -> str:
    """A Markdown table of ``frame``, its index first (no ``tabulate`` needed)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    columns = [cell(frame.index.name or ""), *map(cell, frame.columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        lines.append("| " + " | ".join(map(cell, (index, *row))) + " |")
    return "\n".join(lines)


def _array(array: Any) -> str:
    import numpy

    text = numpy.array2string(array, threshold=200, edgeitems=3)
    return f"numpy ndarray, shape {array.shape}, dtype {array.dtype}:\n{text}"


def _collection(value: Any, text: str, items: int = 10) -> str:
    listed = list(value.items() if isinstance(value, dict) else value)
    if len(listed) <= 2 * items:
        return f"{type(value).__name__} of {len(listed):,} items: {text}"
    return (
        f"{type(value).__name__} of {len(listed):,} items; the first {items}: "
        f"{listed[:items]!r} … the last {items}: {listed[-items:]!r}"
    )


def _cap(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    return f"{text[:cap]}\n[… cut: {cap:,} of {len(text):,} characters sent]"
