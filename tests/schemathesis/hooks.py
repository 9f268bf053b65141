"""Schemathesis hooks for `detris serve` (tests/schemathesis/run.sh loads them).

The schema says the photo is a string of bytes (`format: binary` in the
multipart form, `format: byte` in JSON), but the server also needs those bytes
to be a photo. These hooks make every generated photo a real PNG of 8 to 48
pixels a side (what the schema cannot say: the decoder, min_image_side), so
that the checks exercise the sentences, the forms and the limits instead of
stopping at "not an image". Everything else is schemathesis's own generation.
"""

import base64
import struct
import zlib

import schemathesis
from hypothesis import strategies as st


def png(width: int, height: int, shade: int) -> bytes:
    """An RGB PNG with a horizontal ramp (so that it is not one colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 5 + shade) % 256, (y * 7) % 256, shade)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


photos = st.builds(png, st.integers(8, 48), st.integers(8, 48), st.integers(0, 255))

# JSON: base64 text; multipart: the file's bytes.
schemathesis.openapi.format("byte", photos.map(lambda b: base64.b64encode(b).decode("ascii")))
schemathesis.openapi.format("binary", photos)
for media in ("image/png", "image/jpeg", "image/webp"):
    schemathesis.openapi.media_type(media, photos)


@schemathesis.hook
def filter_case(context, case):
    """A multipart form carries text only: a `text` that is a number, an object
    or one string instead of a list is sent as the same bytes as a list of
    strings, so such "negative" cases are not negative on the wire. Drop them
    (JSON bodies keep their types and keep every case)."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return True
    texts = case.body.get("text", [])
    return isinstance(texts, list) and all(isinstance(t, str) for t in texts)
