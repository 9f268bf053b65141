#!/usr/bin/env python3
"""Letterbox warp cases from OpenCV, for crates/detris-io/tests/image.rs.

    pip install opencv-python-headless numpy
    python3 scripts/dev/letterbox_cases.py            # writes crates/detris-io/tests/data/letterbox/
    python3 scripts/dev/letterbox_cases.py --photos ../shared/images --sizes 112,224,448,518 --report

The official pre-processing (getAffineTransform on float32 points, warpAffine
INTER_CUBIC with the CLIP-mean border) is run on synthetic photos that the Rust
test rebuilds from the same integer formula (`synthetic_photo`), so the cases
need no photo files. Each case stores OpenCV's output as a PNG and, in
cases.json, how many values OpenCV's own SIMD path and its scalar path
(`cv2.setUseOptimized(False)`) disagree on: the two do not agree with each other
exactly, which is the reason the Rust test has a tolerance.

--report compares the two OpenCV paths on real photos at several sizes and
prints the counts (nothing is written).
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np

CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "detris-io", "tests", "data", "letterbox")

# (width, height, seed, letterbox size): landscape and portrait photos at a
# reduced model size, an upscaled thumbnail, and a panorama at the real 448.
CASES = [(640, 480, 1, 224), (451, 300, 2, 224), (300, 451, 3, 224), (97, 61, 4, 112), (1200, 160, 5, 448)]


def synthetic_photo(w, h, seed):
    """RGB u8 (h, w, 3) from u32 arithmetic that wraps as Rust's wrapping ops do."""
    y, x = np.mgrid[0:h, 0:w].astype(np.uint32)
    s = np.uint32(seed)
    r = ((np.uint32(3) * x * x + np.uint32(5) * y * y + s * x * y) >> np.uint32(6)) & np.uint32(255)
    g = ((x * (s + np.uint32(7)) + np.uint32(11) * y) ^ ((x * y) >> np.uint32(3))) & np.uint32(255)
    hsh = (x * np.uint32(73856093)) ^ (y * np.uint32(19349663)) ^ (s * np.uint32(83492791))
    hsh = hsh * np.uint32(2654435761)
    b = (np.uint32(2) * (x + y) + (hsh >> np.uint32(26))) & np.uint32(255)
    return np.stack([r, g, b], -1).astype(np.uint8)


def letterbox(rgb, size):
    """The official getTransformMat + warpAffine, as in the DETRIS data loader."""
    h, w = rgb.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = w * scale, h * scale
    bx, by = (size - nw) / 2, (size - nh) / 2
    src = np.array([[0, 0], [w, 0], [0, h]], np.float32)
    dst = np.array([[bx, by], [nw + bx, by], [bx, nh + by]], np.float32)
    mat = cv2.getAffineTransform(src, dst)
    return cv2.warpAffine(rgb, mat, (size, size), flags=cv2.INTER_CUBIC, borderValue=CLIP_MEAN)


def both_paths(rgb, size):
    """OpenCV's output with its dispatched SIMD code, and with its scalar code."""
    cv2.setUseOptimized(True)
    simd = letterbox(rgb, size)
    cv2.setUseOptimized(False)
    scalar = letterbox(rgb, size)
    cv2.setUseOptimized(True)
    return simd, scalar


def dispatch():
    info = cv2.getBuildInformation()
    line = next((l for l in info.splitlines() if "Dispatched code generation" in l), "")
    return line.split(":", 1)[-1].strip()


def report(photos, sizes):
    for name in sorted(os.listdir(photos)):
        bgr = cv2.imread(os.path.join(photos, name))
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for size in sizes:
            simd, scalar = both_paths(rgb, size)
            d = np.abs(simd.astype(int) - scalar)
            print(f"{name} {rgb.shape[1]}x{rgb.shape[0]} at {size}: SIMD vs scalar differ in "
                  f"{int((d > 0).sum())} of {d.size} values, by at most {int(d.max())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--photos", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "images"))
    ap.add_argument("--sizes", default="112,224,448,518")
    a = ap.parse_args()
    if a.report:
        report(a.photos, [int(s) for s in a.sizes.split(",")])
        return
    os.makedirs(a.out, exist_ok=True)
    cases = []
    for w, h, seed, size in CASES:
        rgb = synthetic_photo(w, h, seed)
        simd, scalar = both_paths(rgb, size)
        name = f"synthetic_{w}x{h}_seed{seed}_at{size}.png"
        cv2.imwrite(os.path.join(a.out, name), cv2.cvtColor(simd, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        cases.append({"width": w, "height": h, "seed": seed, "size": size, "warped": name,
                      "simd_vs_scalar_differences": int((simd != scalar).sum())})
        print(f"{name}: SIMD vs scalar differ in {cases[-1]['simd_vs_scalar_differences']} of {simd.size}",
              file=sys.stderr)
    meta = {"opencv": cv2.__version__, "dispatch": dispatch(), "cases": cases}
    with open(os.path.join(a.out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
