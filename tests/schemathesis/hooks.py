"""Schemathesis hooks for `detris serve` (tests/schemathesis/run.sh loads them).

The schema says the photo is a string of bytes (`format: binary` in the
multipart form, `format: byte` in JSON), but the server also needs those bytes
to be a photo. These hooks make every generated photo a real PNG of 8 to 48
pixels a side (what the schema cannot say: the decoder, min_image_side), so
that the checks exercise the sentences, the forms and the limits instead of
stopping at "not an image", and keep only the multipart cases whose form, as
sent, is what the case claims (valid or not). Everything else is schemathesis's
own generation.
"""

import base64
import json
import struct
import zlib

import jsonschema_rs
import schemathesis
from schemathesis.core.parameters import ParameterLocation
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


def wire_form(body: dict) -> dict:
    """What the server reads from a multipart form built from `body`: one part per
    list item (an empty list sends nothing), every field text except the photo, and
    `text` always a list (one part or many), `image` one value unless repeated."""
    parts: dict[str, list] = {}
    for name, value in body.items():
        for item in value if isinstance(value, list) else [value]:
            is_file = isinstance(item, (bytes, bytearray)) or type(item).__name__ == "Binary"
            # A file validates as "" (its bytes are not JSON); text as what the wire carries.
            parts.setdefault(name, []).append("" if is_file else item if isinstance(item, str) else json.dumps(item))
    return {name: items if name == "text" or len(items) > 1 else items[0] for name, items in parts.items()}


_validators: dict[tuple[str, str], jsonschema_rs.Validator] = {}


def multipart_validator(operation) -> jsonschema_rs.Validator:
    """The operation's multipart body schema, its `$ref`s resolved in the whole document."""
    key = (operation.path, operation.method.lower())
    if key not in _validators:
        raw = operation.schema.raw_schema
        schema = raw["paths"][key[0]][key[1]]["requestBody"]["content"]["multipart/form-data"]["schema"]
        _validators[key] = jsonschema_rs.Draft4Validator({**schema, "components": raw.get("components", {})})
    return _validators[key]


@schemathesis.hook
def filter_case(context, case):
    """A multipart form cannot carry every "negative" body: a `text` that is a
    number is sent as the same bytes as its spelling, an extra field holding an
    empty list sends no part at all. Keep a multipart case only if the form the
    server receives is as valid or invalid as the generated body (judged by the
    operation's own schema); JSON bodies keep their types and every case."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return True
    validator = multipart_validator(case.operation)
    meta = case.meta
    negative = meta is not None and meta.is_negative_at(ParameterLocation.BODY)
    return validator.is_valid(wire_form(case.body)) != negative
