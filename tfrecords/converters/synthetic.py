"""A generated fine-grained data set that recreates the WSOL problem in miniature.

Every image holds one drawn "creature": body, head, eye, beak, tail, wing and
two legs, in colours drawn from one shared palette. Classes differ ONLY in
three small parts: the crest's shape, the pattern of bars on the wing and the
beak's colour (together about a tenth of the object). Body colour, wing
colour, tail length, pose, size and lighting are random and carry no class
information. A classifier can therefore succeed by looking at a small part,
which is exactly why a class activation map covers too little of the
object, and what the WSOL methods try to fix.

The object is placed at a random position, scale (its longest side 15% to
70% of the image), rotation and flip, with random lighting, on a cluttered,
textured background with distractor shapes from the same palette. The pixel
mask is exact (drawn with the object) and the box is computed from it.

Generation is deterministic: image ``index`` of ``split`` is drawn from a
random generator seeded by ``(seed, crc32(split), index)``, so any number of
worker processes gives identical images.

Command line (writes the preview grid shown in the README)::

    python -m tfrecords.converters.synthetic --preview docs/synthetic.png
"""

from __future__ import annotations

import argparse
import functools
import itertools
import zlib

import cv2
import numpy as np

from tfrecords.schema import Record
from tfrecords.source import Source

VERSION = "1"
DEFAULT_SIZES = {"train": 4000, "val": 400, "test": 400}

# The attributes that tell classes apart (the small parts).
CRESTS = ("no-crest", "spike-crest", "triple-crest", "round-crest", "plume-crest")
WING_BARS = ("plain-wing", "one-bar", "two-bars", "spotted-wing")
BEAK_COLOURS = {
    "red-beak": (205, 35, 30),
    "yellow-beak": (240, 200, 25),
    "blue-beak": (40, 85, 225),
    "black-beak": (25, 25, 25),
}
MAX_CLASSES = len(CRESTS) * len(WING_BARS) * len(BEAK_COLOURS)

# The shared palette (RGB): bodies, wings and distractors draw from it.
BODY_COLOURS = np.array(
    [
        (140, 90, 50),
        (128, 128, 128),
        (110, 120, 50),
        (200, 170, 120),
        (70, 90, 110),
        (170, 80, 40),
        (60, 130, 70),
        (110, 70, 130),
        (210, 190, 140),
        (60, 50, 45),
    ],
    np.float64,
)
BAR_COLOUR = (245, 240, 225)
LEG_COLOURS = ((200, 120, 40), (90, 70, 50))
PALETTE = np.concatenate(
    [BODY_COLOURS, np.array(list(BEAK_COLOURS.values()), np.float64), [BAR_COLOUR]]
)

# Encloses every crest, and the beak (creature coordinates).
BEAK = np.array([[0.66, -0.33], [0.67, -0.2], [0.88, -0.26]])
PARTS_ENVELOPE = np.array([[0.2, -0.72], [0.6, -0.72], [0.6, -0.4], [0.2, -0.4], *BEAK])

_CIRCLE = np.linspace(0.0, 2.0 * np.pi, 28, endpoint=False)
_COS, _SIN = np.cos(_CIRCLE), np.sin(_CIRCLE)


@functools.cache
def class_attributes(num_classes: int) -> list[tuple[int, int, int]]:
    """(crest, wing bar, beak colour) indices of each class, spread out.

    Greedy: each next class is the combination farthest (Hamming distance)
    from those already chosen, so small sets differ in two or three parts.
    The choice is fixed (independent of the data seed).
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    combos = list(
        itertools.product(range(len(CRESTS)), range(len(WING_BARS)), range(len(BEAK_COLOURS)))
    )
    chosen = [combos.pop(0)]
    while len(chosen) < num_classes:
        # Ties go to the combination farthest from all chosen ones in total,
        # which keeps every attribute value about equally used.
        distances = [
            [sum(a != b for a, b in zip(c, o, strict=True)) for o in chosen] for c in combos
        ]
        best = combos[max(range(len(combos)), key=lambda i: (min(distances[i]), sum(distances[i])))]
        combos.remove(best)
        chosen.append(best)
    return chosen


@functools.cache
def _class_names(num_classes: int) -> tuple[str, ...]:
    beaks = list(BEAK_COLOURS)
    return tuple(
        f"{CRESTS[c]}/{WING_BARS[w]}/{beaks[b]}" for c, w, b in class_attributes(num_classes)
    )


def class_names(num_classes: int) -> list[str]:
    """``crest/wing-bars/beak`` name of each class."""
    return list(_class_names(num_classes))


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    x, y = ax * _COS, ay * _SIN
    return np.stack([cx + x * np.cos(t) - y * np.sin(t), cy + x * np.sin(t) + y * np.cos(t)], -1)


def _bar(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """A thick segment as a quad."""
    d = np.array([x1 - x0, y1 - y0])
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.array([[x0, y0] + n, [x1, y1] + n, [x1, y1] - n, [x0, y0] - n])


def _creature_parts(rng: np.random.Generator, attributes: tuple[int, int, int]) -> list:
    """Parts in creature coordinates (facing +x, body length ~1), in drawing order.

    Each part: (polygon [K, 2], RGB colour, discriminative?).
    """
    crest, wing_bar, beak = attributes
    body = BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
    wing = BODY_COLOURS[rng.integers(len(BODY_COLOURS))]
    leg = LEG_COLOURS[rng.integers(len(LEG_COLOURS))]
    tail_length = rng.uniform(0.3, 0.5)
    body_height = rng.uniform(0.27, 0.33)
    parts = []
    for x in (-0.1, 0.1):  # legs and feet
        parts.append((_bar(x, 0.2, x + 0.02, 0.55, 0.045), leg, False))
        parts.append((_bar(x - 0.03, 0.55, x + 0.1, 0.55, 0.035), leg, False))
    parts.append(
        (
            np.array(
                [
                    [-0.4, -0.08],
                    [-0.4 - tail_length, -0.22],
                    [-0.4 - tail_length, 0.06],
                    [-0.4, 0.1],
                ]
            ),
            wing,
            False,
        )
    )
    parts.append((_ellipse(0.0, 0.0, 0.5, body_height), body, False))
    # Wing, and the class's bar pattern on it (in wing coordinates u, v).
    wing_angle = -8.0
    parts.append((_ellipse(-0.05, -0.03, 0.32, 0.15, wing_angle), wing, False))
    t = np.deg2rad(wing_angle)

    def on_wing(points):
        u, v = points[:, 0], points[:, 1]
        return np.stack(
            [-0.05 + u * np.cos(t) - v * np.sin(t), -0.03 + u * np.sin(t) + v * np.cos(t)], -1
        )

    def band(u):
        half = 0.15 * np.sqrt(max(0.0, 1 - (u / 0.32) ** 2)) * 0.92
        return on_wing(
            np.array([[u - 0.03, -half], [u + 0.03, -half], [u + 0.03, half], [u - 0.03, half]])
        )

    if WING_BARS[wing_bar] == "one-bar":
        parts.append((band(0.02), BAR_COLOUR, True))
    elif WING_BARS[wing_bar] == "two-bars":
        parts.append((band(-0.1), BAR_COLOUR, True))
        parts.append((band(0.1), BAR_COLOUR, True))
    elif WING_BARS[wing_bar] == "spotted-wing":
        for u in (-0.15, 0.0, 0.15):
            parts.append((on_wing(_ellipse(u, 0.0, 0.04, 0.04)), BAR_COLOUR, True))
    # Head, crest (darker than the head so its shape shows), beak, eye.
    head = (0.5, -0.28, 0.2)
    crest_colour = body * 0.6
    name = CRESTS[crest]
    if name == "spike-crest":
        parts.append((np.array([[0.43, -0.42], [0.55, -0.44], [0.44, -0.7]]), crest_colour, True))
    elif name == "triple-crest":
        for dx in (-0.08, 0.0, 0.08):
            parts.append(
                (
                    np.array([[0.47 + dx, -0.43], [0.52 + dx, -0.43], [0.48 + dx, -0.64]]),
                    crest_colour,
                    True,
                )
            )
    elif name == "round-crest":
        parts.append((_ellipse(0.47, -0.47, 0.085, 0.085), crest_colour, True))
    elif name == "plume-crest":
        parts.append(
            (
                np.array([[0.5, -0.46], [0.4, -0.56], [0.2, -0.6], [0.33, -0.5], [0.42, -0.42]]),
                crest_colour,
                True,
            )
        )
    parts.append((_ellipse(head[0], head[1], head[2], head[2]), body, False))
    beak_colour = list(BEAK_COLOURS.values())[beak]
    parts.append((BEAK, beak_colour, True))
    parts.append((_ellipse(0.56, -0.32, 0.04, 0.04), (15, 15, 15), False))
    return parts


def _fill(image: np.ndarray, polygon: np.ndarray, colour, antialias: bool = True) -> None:
    # shift=4: sub-pixel vertices (1/16 px) so small parts keep their shape.
    points = np.round(polygon * 16).astype(np.int32)
    cv2.fillPoly(image, [points], colour, cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise, twigs and distractor shapes from the palette."""
    colours = PALETTE[rng.choice(len(BODY_COLOURS), 2, replace=False)]
    field = rng.random((5, 5, 1))
    coarse = (colours[0] * field + colours[1] * (1 - field)).astype(np.float32)
    # Interpolating the 5x5 colour field (not the image) keeps this cheap.
    image = cv2.convertScaleAbs(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))
    for _ in range(rng.integers(6, 14)):  # twigs
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        colour = PALETTE[rng.integers(len(PALETTE))] * 0.6
        _fill(image, _bar(x0, y0, x1, y1, rng.uniform(0.5, 2.0) * size / 128), colour.tolist())
    for _ in range(rng.integers(5, 11)):  # distractor shapes
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(0.03, 0.14) * size
        colour = PALETTE[rng.integers(len(PALETTE))].tolist()
        kind = rng.integers(3)
        if kind == 0:
            polygon = _ellipse(cx, cy, radius, radius * rng.uniform(0.3, 1), rng.uniform(0, 180))
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 3 + kind))
            polygon = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], -1)
        _fill(image, polygon, colour)
    # Slightly out of focus, so the object stands in front of its background.
    return cv2.GaussianBlur(image, (0, 0), 0.8)


def render(
    rng: np.random.Generator,
    label: int,
    size: int,
    num_classes: int,
    *,
    scale: float | None = None,
    plain_background: bool = False,
    return_parts: bool = False,
):
    """Draws one image.

    Args:
      rng: the image's random generator.
      label: class id.
      size: image side in pixels.
      num_classes: number of classes (selects the class attributes).
      scale: the object's longest side as a fraction of ``size`` (default:
        uniform in [0.15, 0.7]).
      plain_background: a flat grey background, no distractors (for previews).
      return_parts: also return the mask of the discriminative parts.

    Returns:
      ``(image uint8 [S, S, 3] RGB, mask uint8 [S, S] in {0, 1})`` and, when
      asked, the discriminative parts' mask.
    """
    attributes = class_attributes(num_classes)[label]
    parts = _creature_parts(rng, attributes)
    if scale is None:
        scale = rng.uniform(0.15, 0.7)
    angle = np.deg2rad(rng.uniform(-30, 30))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    transform = rotation @ np.diag([flip, 1.0])
    # Size and placement come from the body plan plus the tallest crest's
    # envelope, not from this class's parts: the same draws give the same
    # creature, in the same place, for every class.
    plan = [polygon for polygon, _, discriminative in parts if not discriminative]
    outline = np.concatenate([*plan, PARTS_ENVELOPE]) @ transform.T
    low, high = outline.min(0), outline.max(0)
    pixels = scale * size / (high - low).max()
    # Place the object's extent fully inside the image, at a random position.
    room = size - 1 - (high - low) * pixels
    offset = rng.uniform(0, 1, 2) * room - low * pixels

    image = np.full((size, size, 3), 150, np.uint8) if plain_background else _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    part_mask = np.zeros((size, size), np.uint8) if return_parts else None
    for polygon, colour, discriminative in parts:
        placed = polygon @ transform.T * pixels + offset
        _fill(image, placed, tuple(float(c) for c in colour))
        _fill(mask, placed, 1, antialias=False)
        if part_mask is not None:
            # Later non-discriminative parts (e.g. the head over the crest's base) cover it.
            _fill(part_mask, placed, int(discriminative), antialias=False)

    # Lighting: a global gain and a linear ramp in a random direction.
    gain = rng.uniform(0.75, 1.25)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = rng.uniform(-0.3, 0.3)
    grid = (np.arange(size) - size / 2) / size
    light = gain * (1 + ramp * (grid[None, :] * np.cos(theta) + grid[:, None] * np.sin(theta)))
    # convertScaleAbs saturates to uint8 (the product is never negative).
    image = cv2.convertScaleAbs(image.astype(np.float32) * light.astype(np.float32)[..., None])
    if return_parts:
        return image, mask, part_mask
    return image, mask


def box_of_mask(mask: np.ndarray) -> np.ndarray:
    """Inclusive pixel box (x0, y0, x1, y1) of a mask's foreground."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one image: a function of (seed, split, index) only."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def load(item: tuple) -> Record:
    """Renders item ``(seed, split, index, num_classes, image_size)`` as a Record."""
    seed, split, index, num_classes, size = item
    label = index % num_classes
    image, mask = render(image_rng(seed, split, index), label, size, num_classes)
    # JPEG like the real data sets; the mask is exact (lossless PNG).
    ok_image, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    ok_mask, png = cv2.imencode(".png", mask * 255)
    assert ok_image and ok_mask, "OpenCV failed to encode a generated image"
    return Record(
        image=jpeg.tobytes(),
        image_format="jpeg",
        height=size,
        width=size,
        filename=f"synthetic/{split}/{index:06d}.jpg",
        source_id=f"{split}/{index:06d}",
        label=label,
        label_text=_class_names(num_classes)[label],
        boxes=box_of_mask(mask)[None],
        mask_png=png.tobytes(),
    )


def make_source(
    data_dir: str | None = None,
    *,
    num_classes: int = 20,
    image_size: int = 128,
    train_size: int = DEFAULT_SIZES["train"],
    val_size: int = DEFAULT_SIZES["val"],
    test_size: int = DEFAULT_SIZES["test"],
    seed: int = 0,
) -> Source:
    """The synthetic set as a Source (``data_dir`` is not used: nothing is read).

    Labels cycle through the classes (image ``i`` has label ``i % num_classes``),
    so every split is balanced.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    for split, count in sizes.items():
        if count < 0:
            raise ValueError(f"{split}_size must be >= 0, got {count}")
    names = class_names(num_classes)
    return Source(
        name="synthetic",
        class_names=names,
        splits={
            split: [(seed, split, i, num_classes, image_size) for i in range(count)]
            for split, count in sizes.items()
        },
        load=load,
        info={
            "dataset": "synthetic creatures (generated)",
            "num_classes": num_classes,
            "image_size": image_size,
            "sizes": sizes,
            "seed": seed,
            "notes": "classes differ only in crest shape, wing-bar pattern and beak colour",
        },
        version=VERSION,
    )


def preview(
    path: str, *, size: int = 128, num_classes: int = 20, seed: int = 0, zoom: int = 1
) -> None:
    """Writes a PNG grid: two rows of training images with their boxes (green),
    then one row of six classes drawn with the same body, pose and background,
    to show that they differ only in small parts."""
    tiles = []
    for index in range(12):
        rng = image_rng(seed, "train", index)
        image, mask = render(rng, index % num_classes, size, num_classes)
        x0, y0, x1, y1 = box_of_mask(mask).astype(int)
        image = np.ascontiguousarray(image)
        cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 1)
        tiles.append(image)
    for label in range(6):
        image, _ = render(
            np.random.default_rng([seed, 99]),
            label,
            size,
            num_classes,
            scale=0.8,
            plain_background=True,
        )
        tiles.append(image)
    rows = [np.concatenate(tiles[r * 6 : (r + 1) * 6], axis=1) for r in range(3)]
    grid = np.concatenate(rows, axis=0)
    grid = cv2.resize(grid, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    # A 256-colour palette keeps the README picture small.
    from PIL import Image

    Image.fromarray(grid).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preview", required=True, help="PNG file to write the grid to")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoom", type=int, default=1, help="enlarge the grid (nearest)")
    args = parser.parse_args()
    preview(args.preview, size=args.image_size, seed=args.seed, zoom=args.zoom)
    print(f"wrote {args.preview}")


if __name__ == "__main__":
    _main()
