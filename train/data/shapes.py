"""The built-in data sets: seeded, generated 32×32 RGB images of ten shape classes, and of 30
classes (each shape filled solid, striped or checked) for few-shot and class-incremental work.

Each image holds one shape (disk, square, triangle, plus, ring, star, bar, crescent, frame or
half-disk) at a random position, size, rotation and colour, drawn over a cluttered background: a
smooth colour field, thin line segments and dots in random colours, and pixel noise. Position and
rotation vary freely, so a linear classifier on raw pixels does poorly; telling the classes apart
takes a model that sees shape. No download: the same seed gives the same images everywhere.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SIZE = 32
MAX_ROTATION = math.radians(15)  # each shape is drawn upright ± this

# Each shape as a test on shape-frame coordinates (u, v), whose unit is the shape's radius.
Shape = Callable[[Tensor, Tensor], Tensor]


def _radius(u: Tensor, v: Tensor) -> Tensor:
    return torch.sqrt(u * u + v * v)


def _box(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs())


SHAPES: dict[str, Shape] = {
    "disk": lambda u, v: _radius(u, v) <= 0.85,
    "square": lambda u, v: _box(u, v) <= 0.7,
    "triangle": lambda u, v: (v >= -0.5) & (v <= 1.0 - math.sqrt(3.0) * u.abs()),
    "plus": lambda u, v: (
        ((u.abs() <= 0.25) & (v.abs() <= 0.95)) | ((v.abs() <= 0.25) & (u.abs() <= 0.95))
    ),
    "ring": lambda u, v: (_radius(u, v) >= 0.5) & (_radius(u, v) <= 0.95),
    "star": lambda u, v: (
        _radius(u, v) <= 0.35 + 0.65 * torch.cos(2.5 * torch.atan2(v, u)).abs() ** 2
    ),
    "bar": lambda u, v: (u.abs() <= 0.95) & (v.abs() <= 0.25),
    "crescent": lambda u, v: (_radius(u, v) <= 0.9) & ((u - 0.4) ** 2 + v * v > 0.49),
    "frame": lambda u, v: (_box(u, v) <= 0.85) & (_box(u, v) >= 0.5),
    "half-disk": lambda u, v: (_radius(u, v + 0.4) <= 1.0) & (v >= -0.4),
}
CLASSES = tuple(SHAPES)


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return xs, ys


def _segment_distance(xs: Tensor, ys: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Distance of every pixel to segments start→end given as (..., 2) → (..., H, W)."""
    direction = end - start
    px = xs - start[..., 0, None, None]
    py = ys - start[..., 1, None, None]
    length2 = (direction * direction).sum(-1).clamp_min(1e-6)[..., None, None]
    t = ((px * direction[..., 0, None, None] + py * direction[..., 1, None, None]) / length2).clamp(
        0, 1
    )
    dx = px - t * direction[..., 0, None, None]
    dy = py - t * direction[..., 1, None, None]
    return torch.sqrt(dx * dx + dy * dy)


def _background(n: int, size: int, gen: torch.Generator) -> Tensor:
    """A smooth random colour field around a base colour, with line segments and dots painted
    on it: (n, 3, size, size)."""
    base = _uniform((n, 3, 1, 1), 0.15, 0.85, gen)
    variation = F.interpolate(
        torch.rand(n, 3, 4, 4, generator=gen) - 0.5, size=(size, size), mode="bilinear"
    )
    field = (base + 0.3 * variation).clamp(0, 1)
    xs, ys = _pixel_grid(size)
    segments, dots = 3, 4
    start = _uniform((n, segments, 2), 0, size, gen)
    end = start + _uniform((n, segments, 2), -8, 8, gen)
    strokes = _segment_distance(xs, ys, start, end) <= 0.6
    centres = _uniform((n, dots, 2), 0, size, gen)
    dot_radius = _uniform((n, dots, 1, 1), 0.7, 1.5, gen)
    blobs = _segment_distance(xs, ys, centres, centres) <= dot_radius
    marks = torch.cat([strokes, blobs], dim=1)  # (n, segments + dots, H, W)
    colours = torch.rand(n, segments + dots, 3, 1, 1, generator=gen)
    for k in range(segments + dots):  # marks half-blended into the field: clutter, not shapes
        field = torch.where(marks[:, k, None], 0.5 * (field + colours[:, k]), field)
    return field


def _shape_frames(n: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Each image's shape frame at a random radius, position and rotation: the coordinates
    (u, v) of every pixel in radius units, (n, size, size) each, and the radius (n, 1, 1)."""
    radius = _uniform((n, 1, 1), 7.0, 10.5, gen)
    centre = (
        _uniform((n, 2, 1, 1), 0, 1, gen) * (size - 1.4 * radius[:, None]) + 0.7 * radius[:, None]
    )
    angle = _uniform((n, 1, 1), -MAX_ROTATION, MAX_ROTATION, gen)
    xs, ys = _pixel_grid(size)
    dx, dy = xs - centre[:, 0], ys - centre[:, 1]
    u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / radius
    v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / radius
    return u, v, radius


def _inside(shape_ids: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Whether each pixel lies in its image's shape: (n, size, size) bool."""
    masks = torch.zeros(u.shape, dtype=torch.bool)
    for label, inside in enumerate(SHAPES.values()):
        chosen = shape_ids == label
        masks[chosen] = inside(u[chosen], v[chosen])
    return masks


def _contrasting_colour(background: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A colour per image that stands out from the background's mean colour by 0.3-0.55 in
    every channel, lighter or darker: (colour, mean), each (n, 3, 1, 1)."""
    mean = background.mean(dim=(2, 3), keepdim=True)
    contrast = _uniform((background.shape[0], 3, 1, 1), 0.3, 0.55, gen)
    return torch.where(mean > 0.5, mean - contrast, mean + contrast), mean


def _to_uint8(images: Tensor, gen: torch.Generator) -> Tensor:
    """Adds pixel noise and quantises [0, 1] images to uint8."""
    images = images + 0.05 * torch.randn(images.shape, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def generate_shapes(num_images: int, seed: int, size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """``num_images`` seeded images (uint8, (n, 3, size, size)) and their labels (int64)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (num_images,), generator=gen)
    u, v, _ = _shape_frames(num_images, size, gen)
    masks = _inside(labels, u, v)
    background = _background(num_images, size, gen)
    colour, _ = _contrasting_colour(background, gen)
    return _to_uint8(torch.where(masks[:, None], colour, background), gen), labels


# -- the many-class set: every shape crossed with every fill pattern ---------------------------

FILL_PERIOD = 4.0  # pixels: one dark and one light band of a striped or checked fill


def _fill_bands(coordinate: Tensor) -> Tensor:
    return torch.floor(coordinate / (FILL_PERIOD / 2)).long()


# Each fill as a test on shape-frame pixel coordinates (x, y) (pixels along the shape's axes,
# randomly offset): True where the shape takes its full colour, False where it takes the
# half-way colour between that and the background's mean.
FILLS: dict[str, Shape] = {
    "solid": lambda x, y: torch.ones_like(x, dtype=torch.bool),
    "striped": lambda x, y: _fill_bands(y) % 2 == 0,
    "checked": lambda x, y: (_fill_bands(x) + _fill_bands(y)) % 2 == 0,
}
PATTERN_CLASSES = tuple(f"{fill} {shape}" for shape in SHAPES for fill in FILLS)
# The few-shot split: the novel classes are the combinations (shape s, fill f) with
# s + f ≡ 0 (mod 3), so every shape and every fill is also seen among the base classes, but
# never the novel combination itself.
NOVEL_PATTERN_CLASSES = tuple(
    index for index in range(len(PATTERN_CLASSES)) if sum(divmod(index, len(FILLS))) % 3 == 0
)
BASE_PATTERN_CLASSES = tuple(
    index for index in range(len(PATTERN_CLASSES)) if index not in NOVEL_PATTERN_CLASSES
)


def generate_shape_patterns(
    num_images: int, seed: int, size: int = IMAGE_SIZE
) -> tuple[Tensor, Tensor]:
    """``num_images`` seeded images of the 30 classes ``PATTERN_CLASSES`` (each of the ten
    shapes, filled solid, striped or checked) drawn like ``generate_shapes``' images: uint8
    (n, 3, size, size) and int64 labels, label = 3 · shape + fill."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(PATTERN_CLASSES), (num_images,), generator=gen)
    shape_ids, fill_ids = labels.div(len(FILLS), rounding_mode="floor"), labels % len(FILLS)
    u, v, radius = _shape_frames(num_images, size, gen)
    masks = _inside(shape_ids, u, v)
    offset = _uniform((num_images, 2, 1, 1), 0, FILL_PERIOD, gen)
    x, y = u * radius + offset[:, 0], v * radius + offset[:, 1]
    full = torch.zeros(masks.shape, dtype=torch.bool)
    for fill_id, fill in enumerate(FILLS.values()):
        chosen = fill_ids == fill_id
        full[chosen] = fill(x[chosen], y[chosen])
    background = _background(num_images, size, gen)
    colour, mean = _contrasting_colour(background, gen)
    shape_colour = torch.where(full[:, None], colour, 0.5 * (colour + mean))
    return _to_uint8(torch.where(masks[:, None], shape_colour, background), gen), labels
