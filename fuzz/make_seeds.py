#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ (committed; rerun to
regenerate). Standard library only: no torch, no PIL.

Seeds come from ../shared/fixtures, made small: the official checkpoints'
pickles are re-pickled with every tensor cut to at most 2 elements per
dimension (the pickle structure, globals and opcodes stay those of torch.save /
TorchScript), and hand-made files cover the rest (legacy torch.save, strided
views, safetensors dtypes, PNG colour types, JPEG with EXIF orientation).
The WebP seeds were encoded once with the `image` crate (lossless) and are
kept as they are.

    python3 fuzz/make_seeds.py [FIXTURES_DIR]
"""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "fixtures")
SEEDS = os.path.join(HERE, "seeds")


def out(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixture(rel):
    with open(os.path.join(FIXTURES, rel), "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------
# Stand-ins for torch, so that Python's own pickler writes what torch.save does.

ELEMENT = {
    "FloatStorage": ("<f", 4), "HalfStorage": ("<e", 2), "DoubleStorage": ("<d", 8),
    "LongStorage": ("<q", 8), "IntStorage": ("<i", 4), "ShortStorage": ("<h", 2),
    "CharStorage": ("<b", 1), "ByteStorage": ("<B", 1), "BoolStorage": ("<?", 1),
    "BFloat16Storage": (None, 2),
}

torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")
sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod
for _name in ELEMENT:
    _cls = type(_name, (), {"__module__": "torch"})
    setattr(torch_mod, _name, _cls)


class Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel

    def data(self):
        fmt, size = ELEMENT[self.cls.__name__]
        if fmt is None:  # bf16: the top half of an f32
            return b"".join(struct.pack("<f", 0.5 + i)[2:] for i in range(self.numel))
        if fmt == "<?":
            return bytes(i % 2 for i in range(self.numel))
        values = [(i % 7) * 0.25 - 0.5 if fmt in "<f<e<d" else (i % 5) - 2 for i in range(self.numel)]
        if fmt == "<B":
            values = [v % 256 for v in values]
        return b"".join(struct.pack(fmt, v) for v in values)


class Tensor:
    def __init__(self, storage, offset, size, stride, rest):
        self.storage, self.offset, self.size, self.stride, self.rest = storage, offset, size, stride, rest

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride) + self.rest)


def _rebuild_tensor_v2(storage, offset, size, stride, *rest):
    return Tensor(storage, offset, tuple(size), tuple(stride), rest)


_rebuild_tensor_v2.__module__ = "torch._utils"
utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2


def torchscript_class(module, name):
    """A class that pickles as `module.name` (TorchScript's `__torch__.*`)."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):  # parents first, as packages, so that import finds them
        name_i = ".".join(parts[:i])
        if name_i not in sys.modules:
            sys.modules[name_i] = types.ModuleType(name_i)
            sys.modules[name_i].__path__ = []
    mod = sys.modules[module]
    if not hasattr(mod, name):
        setattr(mod, name, type(name, (), {"__module__": module, "__qualname__": name}))
    return getattr(mod, name)


class Reader(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in ELEMENT:
            return getattr(torch_mod, name)
        if module == "collections":
            return getattr(collections, name)
        if module.startswith("__torch__"):
            return torchscript_class(module, name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        tag, cls, key, _location, numel = pid
        assert tag == "storage"
        return Storage(cls, key, numel)


def shrink(obj, storages):
    """Every tensor cut to at most 2 elements per dim, contiguous, each on a
    storage of its own (new keys 0, 1, ...)."""
    if isinstance(obj, Tensor):
        size = tuple(min(d, 2) for d in obj.size)
        stride, n = [], 1
        for d in reversed(size):
            stride.insert(0, n)
            n *= d
        st = Storage(obj.storage.cls, str(len(storages)), max(n, 1))
        storages.append(st)
        return Tensor(st, 0, size, tuple(stride), obj.rest)
    if isinstance(obj, collections.OrderedDict):
        new = collections.OrderedDict((k, shrink(v, storages)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            new._metadata = obj._metadata
        return new
    if isinstance(obj, dict):
        return type(obj)((k, shrink(v, storages)) for k, v in obj.items())
    if isinstance(obj, list):
        return [shrink(v, storages) for v in obj]
    if isinstance(obj, tuple):
        return tuple(shrink(v, storages) for v in obj)
    if type(obj).__module__.startswith("__torch__"):
        new = type(obj).__new__(type(obj))
        new.__dict__.update({k: shrink(v, storages) for k, v in obj.__dict__.items()})
        return new
    return obj


class Writer(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def dumps(obj):
    f = io.BytesIO()
    Writer(f, protocol=2).dump(obj)
    return f.getvalue()


def torch_zip(folder, pkl, storages, extra=()):
    """The torch.save zip layout: stored entries under `<folder>/`."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        for name, data in extra:
            z.writestr(f"{folder}/{name}", data)
        z.writestr(f"{folder}/byteorder", b"little")
        for st in storages:
            z.writestr(f"{folder}/data/{st.key}", st.data())
        z.writestr(f"{folder}/version", b"3\n")
    return f.getvalue()


def load_real(rel):
    z = zipfile.ZipFile(os.path.join(FIXTURES, rel))
    name = next(n for n in z.namelist() if n.endswith("data.pkl"))
    return name.split("/")[0], z.read(name), z


def small_torch_file(rel, prune=None):
    folder, pkl, z = load_real(rel)
    obj = Reader(io.BytesIO(pkl)).load()
    if prune:
        obj = prune(obj)
    storages = []
    obj = shrink(obj, storages)
    extra = [(n.split("/", 1)[1], z.read(n)) for n in z.namelist() if n.split("/", 1)[1] in ("constants.pkl",)]
    return torch_zip(folder, dumps(obj), storages, extra), dumps(obj)


def prune_training_checkpoint(ckpt):
    """A few state-dict entries and optimizer states; the rest as it is."""
    ckpt = dict(ckpt)
    sd = ckpt["state_dict"]
    keep = list(sd.items())[:12]
    new = collections.OrderedDict(keep)
    if hasattr(sd, "_metadata"):
        new._metadata = collections.OrderedDict(list(sd._metadata.items())[:6])
    ckpt["state_dict"] = new
    opt = dict(ckpt["optimizer"])
    opt["state"] = dict(list(opt["state"].items())[:3])
    opt["param_groups"] = [dict(g, params=g["params"][:3]) for g in opt["param_groups"][:2]]
    ckpt["optimizer"] = opt
    return ckpt


# ---------------------------------------------------------------------------
# Hand-made checkpoints: a strided view, dtypes, and the legacy format.

def handmade_state_dict():
    f32 = Storage(torch_mod.FloatStorage, "0", 6)
    i64 = Storage(torch_mod.LongStorage, "1", 1)
    f16 = Storage(torch_mod.HalfStorage, "2", 4)
    bf16 = Storage(torch_mod.BFloat16Storage, "3", 2)
    hooks = collections.OrderedDict()
    sd = collections.OrderedDict([
        ("module.w", Tensor(f32, 0, (3, 2), (1, 3), (False, hooks))),     # x.t()
        ("module.b", Tensor(f32, 3, (3,), (1,), (False, hooks))),         # x[1]
        ("module.e", Tensor(f32, 0, (2, 3), (0, 1), (False, hooks))),     # x[0].expand(2, 3)
        ("bn.num_batches_tracked", Tensor(i64, 0, (), (), (False, hooks))),
        ("half", Tensor(f16, 0, (2, 2), (2, 1), (False, hooks))),
        ("bf", Tensor(bf16, 0, (2,), (1,), (False, hooks))),
    ])
    return sd, [f32, i64, f16, bf16]


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_file(obj, storages):
    out = io.BytesIO()
    for part in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                      "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(part, out, protocol=2)
    out.write(dumps(obj))
    pickle.dump(sorted(st.key for st in storages), out, protocol=2)
    for st in sorted(storages, key=lambda s: s.key):
        out.write(struct.pack("<q", st.numel))
        out.write(st.data())
    return out.getvalue()


def safetensors(tensors, metadata=None):
    header, offset, blob = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


# ---------------------------------------------------------------------------
# Images.

def png(width, height, color_type, bit_depth, rows, interlace=0, palette=None, trns=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if interlace:  # Adam7: seven sub-images, each row with its filter byte (8-bit samples only)
        bpp = len(rows[0]) // width
        raw = b""
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            for y in range(y0, height, dy):
                if x0 < width:
                    raw += b"\x00" + b"".join(rows[y][x * bpp:(x + 1) * bpp] for x in range(x0, width, dx))
    else:
        raw = b"".join(b"\x00" + r for r in rows)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace))
    if palette:
        body += chunk(b"PLTE", palette)
    if trns:
        body += chunk(b"tRNS", trns)
    body += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def png_seeds():
    w, h = 7, 5
    grey = [bytes((x * 37 + y * 11) % 256 for x in range(w)) for y in range(h)]
    rgb = [bytes(v for x in range(w) for v in ((x * 40) % 256, (y * 60) % 256, 128)) for y in range(h)]
    rgba = [bytes(v for x in range(w) for v in ((x * 40) % 256, (y * 60) % 256, 9, x * 30)) for y in range(h)]
    grey16 = [b"".join(struct.pack(">H", x * 9000 + y) for x in range(w)) for y in range(h)]
    rgba16 = [b"".join(struct.pack(">HHHH", x * 9000, y * 9000, 77, 65535) for x in range(w)) for y in range(h)]
    grey_a = [bytes(v for x in range(w) for v in (x * 30, 200)) for y in range(h)]
    pal = [bytes((x + y) % 4 for x in range(w)) for y in range(h)]
    bits1 = [bytes([0b10110010]) for y in range(h)]
    return {
        "grey8.png": png(w, h, 0, 8, grey),
        "rgb8.png": png(w, h, 2, 8, rgb),
        "rgba8.png": png(w, h, 6, 8, rgba),
        "grey16.png": png(w, h, 0, 16, grey16),
        "rgba16.png": png(w, h, 6, 16, rgba16),
        "grey_alpha.png": png(w, h, 4, 8, grey_a),
        "palette.png": png(w, h, 3, 8, pal, palette=bytes(range(12)), trns=b"\x00\x80"),
        "grey1.png": png(w, h, 0, 1, bits1),
        "rgb8_interlaced.png": png(w, h, 2, 8, rgb, interlace=1),
        "one_pixel.png": png(1, 1, 2, 8, [b"\x01\x02\x03"]),
    }


def exif_orientation(orientation):
    """An APP1 Exif segment (little-endian TIFF) holding only Orientation."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def main():
    # pickle: the real pickles, as they are, and plain data in every protocol.
    _, dinov2_pkl, _ = load_real("tiny/dinov2.pth")
    _, clip_pkl, clip_zip = load_real("tiny/clip.pt")
    out("pickle", "dinov2_data.pkl", dinov2_pkl)
    out("pickle", "clip_data.pkl", clip_pkl)
    out("pickle", "clip_constants.pkl", clip_zip.read("clip/constants.pkl"))
    refs = fixture("data/refer_mini/refcoco/refs(unc).p")
    out("pickle", "refs_unc.p", refs)
    plain = {"a": [1, -2, 2**40, -(2**70), 1.5, None, True, False], "b": (b"bytes", "t\u00e9xt", b"\x00\xff"),
             "c": {frozenset({1, 2}), 3}, "d": collections.OrderedDict(x=1), "e": collections.Counter(y=2)}
    for proto in range(6):
        out("pickle", f"plain_protocol{proto}.pkl", pickle.dumps(plain, protocol=proto))

    # checkpoint: small torch.save zips, legacy, safetensors and TorchScript.
    small_dinov2, _ = small_torch_file("tiny/dinov2.pth")
    small_ckpt, small_ckpt_pkl = small_torch_file("tiny/detris_ckpt.pth", prune_training_checkpoint)
    small_clip, _ = small_torch_file("tiny/clip.pt")
    out("pickle", "small_ckpt_data.pkl", small_ckpt_pkl)
    sd, storages = handmade_state_dict()
    handmade = torch_zip("archive", dumps(sd), storages)
    legacy = legacy_file(sd, storages)
    st_small = safetensors([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                            ("n", "I64", [], struct.pack("<q", 7))], {"format": "pt"})
    for name, data in [("dinov2_small.pth", small_dinov2), ("detris_ckpt_small.pth", small_ckpt),
                       ("handmade_strided.pth", handmade), ("legacy.pth", legacy),
                       ("small.safetensors", st_small), ("clip_small.pt", small_clip)]:
        out("checkpoint", name, data)

    # torchscript: the CLIP layout, made small.
    out("torchscript", "clip_small.pt", small_clip)
    out("torchscript", "dinov2_small.pth", small_dinov2)

    # safetensors: every dtype, metadata, empty and 0-dim tensors.
    out("safetensors", "small.safetensors", st_small)
    out("safetensors", "dtypes.safetensors", safetensors([
        ("f64", "F64", [1], struct.pack("<d", 0.1)), ("f32", "F32", [2], struct.pack("<2f", 1, 2)),
        ("i32", "I32", [1, 1], struct.pack("<i", -3)), ("f16", "F16", [2], b"\x00\x3c\x00\xc0"),
        ("bf16", "BF16", [1], b"\x80\x3f"), ("i16", "I16", [1], b"\x01\x00"), ("u8", "U8", [3], b"abc"),
        ("i8", "I8", [1], b"\xff"), ("b", "BOOL", [2], b"\x00\x01"), ("empty", "F32", [0, 3], b""),
    ], {"config": "{\"variant\": \"tiny\"}", "checksum": "0"}))
    out("safetensors", "empty.safetensors", safetensors([]))

    # image: PNG colour types, JPEGs from the fixtures (one with an EXIF rotation).
    for name, data in png_seeds().items():
        out("image", name, data)
    jpeg = fixture("data/refer_mini/images/train2014/COCO_train2014_000000000100.jpg")
    out("image", "coco.jpg", jpeg)
    out("image", "coco_exif_rot90.jpg", jpeg[:2] + exif_orientation(6) + jpeg[2:])

    # tokenizer: referring and adversarial sentences from the official cases.
    rows = json.loads(fixture("aux/tokenizer_cases.json"))["rows"]
    texts = []
    for row in rows:
        t = row.get("text") if isinstance(row, dict) else row[0]
        if isinstance(t, str) and t not in texts:
            texts.append(t)
    step = max(1, len(texts) // 64)
    for i, t in enumerate(texts[::step][:64]):
        out("tokenizer", f"case{i:02d}.txt", t.encode("utf-8"))

    # REFER: the mini refs pickle and instances.json, as they are.
    out("refer_refs", "refs_unc.p", refs)
    out("refer_refs", "refs_unc_protocol0.p", pickle.dumps(pickle.loads(refs, encoding="bytes"), protocol=0))
    out("refer_instances", "instances.json", fixture("data/refer_mini/refcoco/instances.json"))

    # coco_mask: height, width (u16 LE each), then the segmentation JSON.
    cases = json.loads(fixture("data/rasterise_cases.json"))["cases"]
    for i, c in enumerate(cases):
        seg = c.get("polygons") or c.get("rle_uncompressed")
        head = struct.pack("<HH", c["height"] - 1, c["width"] - 1)
        out("coco_mask", f"case{i:02d}.bin", head + json.dumps(seg, separators=(",", ":")).encode())
        if "rle_compressed" in c:
            out("coco_mask", f"case{i:02d}_compressed.bin",
                head + json.dumps(c["rle_compressed"], separators=(",", ":")).encode())
    out("coco_mask", "boxes.bin", struct.pack("<HH", 19, 29) + b"[[1.5,2.5,10,7],[0,0,3,3]]")

    # http_segment: the content type, a newline, then the body of POST /v1/segment.
    photo = png(9, 8, 2, 8, [bytes(v for x in range(9) for v in (x * 25, y * 30, 90)) for y in range(8)])
    for name, ctype, body in http_segment_seeds(photo, jpeg):
        out("http_segment", name, ctype.encode() + b"\n" + body)

    # manifest: JSON Lines of `detris segment --manifest`, good and bad lines mixed.
    for name, text in manifest_seeds():
        out("manifest", name, text.encode())


def multipart(boundary, parts):
    body = b""
    for name, filename, data in parts:
        file = f'; filename="{filename}"' if filename else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n'.encode()
        if filename:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def http_segment_seeds(photo, jpeg):
    import base64
    b64 = base64.b64encode(photo).decode()
    form = "multipart/form-data; boundary=detris"
    return [
        ("form_png.txt", form, multipart("detris", [("image", "a.png", photo), ("text", None, b"the red cup"),
                                                    ("text", None, "le caf\u00e9 &amp; tea".encode())])),
        ("form_jpeg.txt", form, multipart("detris", [("text", None, b"the man on the left"),
                                                     ("image", "photo.jpg", jpeg)])),
        ("form_unknown_field.txt", form, multipart("detris", [("image", "a.png", photo), ("colour", None, b"red")])),
        ("json_plain.txt", "application/json", json.dumps({"image": b64, "texts": ["a cup", "the dog"]}).encode()),
        ("json_data_url.txt", "application/json; charset=utf-8",
         json.dumps({"image": "data:image/png;base64," + b64, "texts": ["  "]}).encode()),
        ("other_type.txt", "text/plain", b"hello"),
    ]


def manifest_seeds():
    line = lambda **kw: json.dumps(kw)
    return [
        ("plain.jsonl", line(image="a.jpg", sentences=["the dog on the left", "the red car"]) + "\n"),
        ("ground_truths.jsonl", "\n".join([
            line(id="ref-1", image="photos/b.png", sentences=["the cup"], mask="masks/1.png"),
            line(id=2, image="/abs/c.jpg", sentences=["the man"],
                 mask_rle={"size": [4, 3], "counts": [2, 5, 5]}),
            line(image="d.jpg", sentences=["a bird"], mask_rle={"size": [427, 640], "counts": "fQi12`<2N2O1N"}),
        ]) + "\r\n"),
        ("bad_lines.jsonl", "\n".join([
            "not json",
            line(image="e.jpg", sentences=[""]),
            line(image="e.jpg", sentences=[]),
            line(id="../x", image="e.jpg", sentences=["x"]),
            line(id="1", image="e.jpg", sentences=["x"]),
            line(id="1", image="f.jpg", sentences=["y"]),
            line(image="g.jpg", sentences=["z"], mask="m.png", mask_rle={"size": [1, 1], "counts": [1]}),
            line(image="g.jpg", sentences=["z"], mask_rle={"size": [2, 2], "counts": [1]}),
            line(image="h.jpg", sentence="typo"),
            "",
            "   ",
        ])),
        ("polygons.jsonl", "\n".join([
            line(id="p1", image="a.jpg", sentences=["the kite"], mask_polygons=[[1, 1, 5.5, 1, 3, 4.25]]),
            line(image="b.jpg", sentences=["two parts"], mask_polygons=[[0, 0, 6, 0, 6, 2], [-3, 1, 9, 1, 4, 9]]),
            line(image="c.jpg", sentences=["odd"], mask_polygons=[[1, 2, 3, 4, 5, 6, 7]]),
            line(image="c.jpg", sentences=["two points"], mask_polygons=[[1, 2, 3, 4]]),
            line(image="c.jpg", sentences=["text"], mask_polygons=[[1, 2, "3", 4, 5, 6]]),
            line(image="c.jpg", sentences=["far"], mask_polygons=[[0, 0, 1e9, 0, 0, 1e9]]),
            line(image="c.jpg", sentences=["all"], mask="m.png", mask_polygons=[[1, 1, 2, 2, 3, 1]]),
        ]) + "\n"),
    ]


if __name__ == "__main__":
    main()
