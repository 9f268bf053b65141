#!/usr/bin/env python3
"""Polygon rasterisation cases from pycocotools, for the manifest's `mask_polygons`.

    pip install pycocotools numpy
    python3 scripts/dev/polygon_cases.py     # writes crates/detris-io/tests/data/polygon_cases.json

Each case is an image size and a list of COCO polygons `[[x1, y1, x2, y2, ...], ...]`
(at least 3 points each, so that pycocotools' `frPyObjects` takes them as polygons and
never as a 4-number box). It stores what pycocotools makes of them:

* `parts`: the compressed counts of `frPyObjects(polys, h, w)`, one RLE per polygon;
* `union`: the compressed counts of `merge(parts)` (`annToRLE`), whose `decode` is the
  mask; the script checks that it equals the logical OR of the decoded parts;
* `area`: the union's foreground pixels.

The cases are random (convex and star-shaped, fractional coordinates) and edge cases
(degenerate and collinear polygons, repeated points, coordinates on pixel centres and
edges and at .5, vertices outside the image by up to half a frame, self-intersection,
many overlapping polygons, 1-pixel-wide images). Seeded, so the file is reproducible.
"""
import json
import math
import os
import random

import numpy as np
from pycocotools import mask as mask_utils

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "detris-io", "tests", "data", "polygon_cases.json")


def rnd(v, digits):
    return round(v, digits) if digits is not None else v


def star(rng, cx, cy, radius, points, jitter, digits):
    out = []
    for k in range(points):
        a = 2 * math.pi * k / points + rng.uniform(-jitter, jitter) * math.pi / points
        r = radius * rng.uniform(1 - jitter, 1)
        out += [rnd(cx + r * math.cos(a), digits), rnd(cy + r * math.sin(a), digits)]
    return out


def random_cases(rng, n):
    cases = []
    for i in range(n):
        h, w = rng.randint(1, 48), rng.randint(1, 48)
        polys = []
        for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
            digits = rng.choice([0, 1, 2, 3, None])
            cx, cy = rng.uniform(-0.2 * w, 1.2 * w), rng.uniform(-0.2 * h, 1.2 * h)
            radius = rng.uniform(0.3, 0.6 * max(h, w))
            polys.append(star(rng, cx, cy, radius, rng.randint(3, 14), rng.uniform(0, 0.9), digits))
        cases.append({"name": f"random {i}", "height": h, "width": w, "polygons": polys})
    return cases


def edge_cases():
    c = []

    def add(name, h, w, polys):
        c.append({"name": name, "height": h, "width": w, "polygons": polys})

    add("triangle", 10, 12, [[1, 1, 9, 2, 4, 8]])
    add("one point three times", 8, 8, [[3, 3, 3, 3, 3, 3]])
    add("collinear", 8, 8, [[1, 1, 4, 4, 7, 7]])
    add("horizontal line", 8, 8, [[1, 4, 6, 4, 3, 4]])
    add("vertical line", 8, 8, [[4, 1, 4, 6, 4, 3]])
    add("zero-area spike", 9, 9, [[1, 1, 7, 1, 7, 7, 7, 1]])
    add("repeated points", 10, 10, [[1, 1, 1, 1, 8, 1, 8, 1, 8, 8, 1, 8, 1, 8]])
    add("square on pixel centres", 6, 6, [[1, 1, 4, 1, 4, 4, 1, 4]])
    add("square on pixel edges", 6, 6, [[0.5, 0.5, 4.5, 0.5, 4.5, 4.5, 0.5, 4.5]])
    add("square at -.5", 6, 6, [[-0.5, -0.5, 5.5, -0.5, 5.5, 5.5, -0.5, 5.5]])
    add("whole frame and more", 5, 7, [[-3, -2, 10, -2, 10, 8, -3, 8]])
    add("fractions near .5", 7, 7, [[0.49, 0.51, 5.5, 0.5, 5.51, 5.49, 0.5, 5.5]])
    add("tiny fractions", 4, 4, [[1.0001, 1.0001, 2.9999, 1.0001, 2.0, 2.9999]])
    add("clockwise", 10, 10, [[1, 1, 1, 8, 8, 8, 8, 1]])
    add("counter-clockwise", 10, 10, [[1, 1, 8, 1, 8, 8, 1, 8]])
    add("bow tie", 10, 10, [[1, 1, 8, 8, 8, 1, 1, 8]])
    add("concave U", 12, 12, [[1, 1, 4, 1, 4, 8, 7, 8, 7, 1, 10, 1, 10, 10, 1, 10]])
    add("left of the image", 8, 8, [[-4, 1, -1, 1, -1, 6, -4, 6]])
    add("right of the image", 8, 8, [[9, 1, 11, 1, 11, 6, 9, 6]])
    add("above and below", 8, 8, [[2, -4, 6, -4, 6, -1, 2, -1], [2, 9, 6, 9, 6, 11, 2, 11]])
    add("straddling the left edge", 8, 8, [[-3, 2, 3, 2, 3, 6, -3, 6]])
    add("straddling the bottom edge", 8, 8, [[2, 5, 6, 5, 6, 11, 2, 11]])
    add("half a frame out", 10, 10, [[-5, -5, 15, -5, 15, 15]])
    add("1x1 inside", 1, 1, [[0, 0, 0.9, 0, 0.9, 0.9]])
    add("1x1 covering", 1, 1, [[-1, -1, 2, -1, 2, 2, -1, 2]])
    add("1x1 missing", 1, 1, [[0.2, 0.2, 0.4, 0.2, 0.3, 0.4]])
    add("1 row", 1, 9, [[1, -0.5, 7, -0.5, 7, 0.5, 1, 0.5]])
    add("1 column", 9, 1, [[-0.5, 1, 0.5, 1, 0.5, 7, -0.5, 7]])
    add("2x2", 2, 2, [[0, 0, 1, 0, 1, 1, 0, 1]])
    add("two overlapping", 12, 12, [[1, 1, 8, 1, 8, 8, 1, 8], [4, 4, 11, 4, 11, 11, 4, 11]])
    add("nested", 12, 12, [[0, 0, 11, 0, 11, 11, 0, 11], [3, 3, 8, 3, 8, 8, 3, 8]])
    add("identical twice", 9, 9, [[1, 1, 7, 2, 3, 7], [1, 1, 7, 2, 3, 7]])
    add("one empty, one not", 9, 9, [[4, 4, 4, 4, 4, 4], [1, 1, 7, 2, 3, 7]])
    add("ten polygons", 20, 30, [[x, y, x + 3.3, y + 0.7, x + 1.2, y + 4.1] for x in range(0, 30, 3) for y in (2.5,)][:10])
    add("steep and shallow edges", 30, 30, [[0.2, 0.1, 29.7, 1.3, 28.4, 29.9, 1.1, 28.2]])
    add("long thin diagonal", 40, 40, [[0, 0, 39, 39, 39, 38.6]])
    add("circle", 40, 50, [[round(25 + 18 * math.cos(t / 100 * 2 * math.pi), 3),
                            round(20 + 15 * math.sin(t / 100 * 2 * math.pi), 3)] for t in range(100)])
    c[-1]["polygons"] = [sum(c[-1]["polygons"], [])]
    add("wide image", 3, 64, [[0, 0, 63, 1, 40, 2.7]])
    add("tall image", 64, 3, [[0, 0, 1, 63, 2.7, 40]])
    return c


def run(case):
    h, w = case["height"], case["width"]
    parts = mask_utils.frPyObjects(case["polygons"], h, w)
    union = mask_utils.merge(parts)
    decoded = mask_utils.decode(union)
    ored = np.zeros((h, w), dtype=np.uint8)
    for p in parts:
        ored |= mask_utils.decode(p)
    assert (decoded == ored).all(), case["name"]
    case["parts"] = [p["counts"].decode() for p in parts]
    case["union"] = union["counts"].decode()
    case["area"] = int(mask_utils.area(union))
    return case


def main():
    rng = random.Random(23)
    cases = [run(c) for c in edge_cases() + random_cases(rng, 220)]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/dev/polygon_cases.py", "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases, {os.path.getsize(OUT)} bytes → {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
