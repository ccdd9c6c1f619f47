"""The procedural text-video domain (DESIGN.md section 4).

A world small enough to train on a laptop CPU and rich enough to test what the papers claim: one object
(a shape or a real handwritten digit from scikit-learn's ``load_digits``) of one colour on a plain
background, moving in one of seven ways, with a caption drawn from varied templates and synonyms, and
the exact ground truth (object, colour, background, motion, per-frame centre and size) kept with it.

Motion is defined in continuous time (pixels per second), so one clip can be rendered at any frame
rate: 9 frames at 2 fps (MicroCinema's base model) and 33 frames at 8 fps cover the same 4 seconds
with the same trajectory. A clip is fully determined by ``(seed, split, index, num_frames, fps, size)``.

Composition is tested with :data:`HELD_OUT_COMBOS`: (colour, object, motion) triples that never occur
in the ``train`` split (each colour, object and motion on its own does) and are the only ones in
``heldout``.

Few-shot motions (recurrent few-shot paper, section 4): :data:`FEWSHOT_MOTIONS` (bounce, circling, zigzag,
diagonal) are motions the embedded family never saw. They are in no combination table and no split of
:func:`sample_clip` (whose clips stay exactly as before); only :func:`sample_fewshot_clip` draws them (its
clips have ``split == "fewshot"``), for tuning clips and for evaluating a tuned model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from microcinema.core.errors import MicroCinemaError, check

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

#: colour name -> (RGB, caption words). The first word is the canonical name.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((220, 40, 40), ("red", "crimson", "scarlet")),
    "green": ((50, 190, 60), ("green", "emerald", "lime")),
    "blue": ((50, 90, 235), ("blue", "azure", "cobalt")),
    "yellow": ((240, 220, 40), ("yellow", "golden", "lemon")),
    "purple": ((150, 60, 205), ("purple", "violet", "lilac")),
    "orange": ((245, 140, 30), ("orange", "amber", "tangerine")),
    "white": ((245, 245, 245), ("white", "snow-white", "ivory")),
    "cyan": ((40, 220, 220), ("cyan", "aqua", "turquoise")),
}

#: background name -> RGB. Dark, so that every object colour stands out.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "charcoal": (50, 50, 55),
    "navy": (20, 25, 75),
    "forest": (20, 60, 30),
    "maroon": (75, 20, 25),
    "plum": (55, 25, 55),
}

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: object name -> caption words. Digits are real handwriting from ``sklearn.datasets.load_digits``.
OBJECTS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    **{
        f"digit{k}": (f"digit {k}", f"handwritten {k}", f"number {_DIGIT_WORDS[k]}", f"handwritten digit {_DIGIT_WORDS[k]}")
        for k in range(10)
    },
}

#: motion name -> caption templates; ``{np}`` is the noun phrase ("a red circle").
MOTIONS: dict[str, tuple[str, ...]] = {
    "left": ("{np} moving left", "{np} drifts to the left", "{np} slides leftward",
             "{np} travels from right to left", "{np} heading left", "{np} moves toward the left edge"),
    "right": ("{np} moving right", "{np} drifts to the right", "{np} slides rightward",
              "{np} travels from left to right", "{np} heading right", "{np} moves toward the right edge"),
    "up": ("{np} moving up", "{np} rises", "{np} floats upward",
           "{np} travels from bottom to top", "{np} heading up", "{np} climbing toward the top"),
    "down": ("{np} moving down", "{np} falls", "{np} sinks downward",
             "{np} travels from top to bottom", "{np} heading down", "{np} dropping toward the bottom"),
    "still": ("{np} staying still", "{np} standing still", "{np} resting in place",
              "{np} that does not move", "{np} hovering motionless", "{np} stays put"),
    "grow": ("{np} growing", "{np} getting bigger", "{np} expanding",
             "{np} grows larger", "{np} swelling in size", "{np} becoming larger"),
    "shrink": ("{np} shrinking", "{np} getting smaller", "{np} contracting",
               "{np} shrinks away", "{np} becoming smaller", "{np} dwindling in size"),
}

#: Motions the embedded family never saw (few-shot tuning, recurrent few-shot paper): not in :data:`MOTIONS`, not
#: in any split of :func:`sample_clip`; drawn by :func:`sample_fewshot_clip` only. The object keeps its size.
#:
#: * ``bounce``: bounces in place on the floor (the frame's bottom): ``y = floor - A |sin(pi t / T)|``, x fixed,
#:   one bounce every ``T`` in 1.8-2.2 s, height ``A`` 28-36 % of the frame; starts on the floor.
#: * ``circling``: clockwise on screen around a fixed centre, radius 16-22 % of the frame, one turn in 3.6-4.4 s.
#: * ``zigzag``: rightward at 9-13 % of the frame per second while going up and down in a triangle wave
#:   (amplitude 10-14 % of the frame, period 1.8-2.2 s; first up).
#: * ``diagonal``: down and to the right in a straight line at 45 degrees, 7-10 % of the frame per second on
#:   each axis.
FEWSHOT_MOTIONS: dict[str, tuple[str, ...]] = {
    "bounce": ("{np} bouncing", "{np} bounces up and down", "{np} bouncing in place", "{np} jumping up and down",
               "{np} bounces on the ground", "{np} bouncing like a ball"),
    "circling": ("{np} moving in a circle", "{np} circling", "{np} going round in circles",
                 "{np} travels along a circular path", "{np} circling clockwise", "{np} loops around in a circle"),
    "zigzag": ("{np} zigzagging to the right", "{np} zig-zags across", "{np} moving in a zigzag",
               "{np} weaving up and down to the right", "{np} following a zigzag path", "{np} zigzags rightward"),
    "diagonal": ("{np} moving diagonally down and to the right", "{np} drifts diagonally toward the bottom right",
                 "{np} slides to the lower right corner", "{np} travels diagonally down to the right",
                 "{np} heading down and right", "{np} moving diagonally"),
}

#: The ``split`` of every clip :func:`sample_fewshot_clip` draws (not one of :data:`SPLITS`).
FEWSHOT_SPLIT = "fewshot"

#: (colour, object, motion) combinations never seen in training; the ``heldout`` split uses only these.
#: Every colour appears twice, every motion at least twice, shapes and digits both.
HELD_OUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "star", "left"), ("red", "digit7", "right"),
    ("green", "circle", "up"), ("green", "digit0", "left"),
    ("blue", "triangle", "right"), ("blue", "square", "grow"),
    ("yellow", "square", "down"), ("yellow", "star", "shrink"),
    ("purple", "digit3", "grow"), ("purple", "circle", "right"),
    ("orange", "circle", "shrink"), ("orange", "triangle", "up"),
    ("white", "triangle", "still"), ("white", "square", "left"),
    ("cyan", "star", "down"), ("cyan", "digit5", "still"),
)

#: Sampling weight of each digit relative to a shape (1.0): the ten digits together weigh as much as two
#: shapes, so a third of the clips show a digit (each digit 1/30 of them, each shape 1/6).
DIGIT_WEIGHT = 0.2

SPLITS = ("train", "heldout")
_SPLIT_CODE = {"train": 0, "heldout": 1}

# Motion parameters, in units of the frame size (per second for rates), so they do not depend on resolution;
# ``(low, high)`` pairs are the uniform ranges the generator draws from. Public: the judge and the evaluations
# derive their thresholds and fits from them.
#: Translation speed: 4 s cover 36-52 % of the frame.
SPEED = (0.09, 0.13)
#: The translations: motion -> (axis, sign), axis 0 = x (right positive), 1 = y (down positive).
TRANSLATIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
#: Object extent for motions that keep the size.
SIZE = (0.24, 0.34)
#: Extent of a digit (thin strokes: a little larger to stay legible).
DIGIT_SIZE = (0.32, 0.42)
#: Starting extent of a growing object (the final extent of a shrinking one).
GROW_START = (0.16, 0.22)
#: Extent gained (or lost, for shrink) per second.
GROW_RATE = (0.05, 0.07)
#: Largest extent of a growing object (the start of a shrinking one): caps the drawn ``GROW_RATE``.
MAX_SIZE = 0.6
_SUPERSAMPLE = 4


def all_combos() -> list[tuple[str, str, str]]:
    """Every (colour, object, motion) triple of the domain, in a fixed order."""
    return [(c, o, m) for c in COLOURS for o in OBJECTS for m in MOTIONS]


def train_combos() -> list[tuple[str, str, str]]:
    """The combinations of the ``train`` split: all of them but :data:`HELD_OUT_COMBOS`."""
    held = set(HELD_OUT_COMBOS)
    return [c for c in all_combos() if c not in held]


def combos_for_split(split: str) -> list[tuple[str, str, str]]:
    check(split in SPLITS, f"unknown split {split!r}: allowed are {', '.join(SPLITS)}")
    return train_combos() if split == "train" else list(HELD_OUT_COMBOS)


# ----------------------------------------------------------------------------------------------
# Clip specification: everything random about a clip is drawn here, from one seeded generator.
# ----------------------------------------------------------------------------------------------


@dataclass
class ClipSpec:
    """The ground truth of one clip. Centres are (x, y) in pixels, sizes are the object's extent in pixels."""

    index: int
    split: str
    seed: int
    colour: str
    object: str
    motion: str
    background: str
    caption: str
    fps: float
    num_frames: int
    size: int
    centers: list[list[float]] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    digit_instance: int | None = None
    lead_in: int = 0                       # frames before ``motion`` starts (a turning clip; 0: the whole clip)
    lead_in_motion: str | None = None      # how the object moves during the lead-in

    def to_row(self) -> dict:
        row = asdict(self)
        if not self.lead_in:  # a plain clip's row is as before turning clips existed
            del row["lead_in"], row["lead_in_motion"]
        row["centers"] = [[round(x, 3), round(y, 3)] for x, y in self.centers]
        row["sizes"] = [round(s, 3) for s in self.sizes]
        return row


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def make_caption(colour: str, obj: str, motion: str, background: str, rng: np.random.Generator) -> str:
    """Draw a caption: a motion template, colour and object synonyms, sometimes the background."""
    colour_word = rng.choice(COLOURS[colour][1])
    object_word = rng.choice(OBJECTS[obj])
    phrase = f"{colour_word} {object_word}"
    noun_phrase = f"{_article(phrase)} {phrase}" if rng.random() < 0.8 else phrase
    templates = MOTIONS[motion] if motion in MOTIONS else FEWSHOT_MOTIONS[motion]
    caption = rng.choice(templates).format(np=noun_phrase)
    if rng.random() < 0.3:
        caption += f" on a {background} background"
    return caption


def _check_render_args(num_frames: int, fps: float, size: int) -> None:
    check(isinstance(num_frames, (int, np.integer)) and num_frames >= 1, f"num_frames must be an integer >= 1, got {num_frames!r}")
    check(fps > 0 and math.isfinite(fps), f"fps must be a positive number, got {fps!r}")
    check(isinstance(size, (int, np.integer)) and size >= 16 and size % 2 == 0,
          f"size must be an even integer >= 16 (pixels), got {size!r}")


def sample_clip(index: int, *, seed: int = 0, split: str = "train", num_frames: int = 33, fps: float = 8.0,
                size: int = 64, digit_weight: float = DIGIT_WEIGHT) -> ClipSpec:
    """Draw clip ``index`` of a split: its combination, caption and trajectory (frame i is at time i / fps).

    Deterministic in ``(seed, split, index, num_frames, fps, size, digit_weight)``. Two renderings that cover
    the same duration ``(num_frames - 1) / fps`` share the same trajectory, whatever their frame rates.
    ``digit_weight``: how often each digit is drawn relative to each shape (default :data:`DIGIT_WEIGHT`,
    a third of the clips show a digit; 0.8 makes it two thirds).
    """
    _check_render_args(num_frames, fps, size)
    check(digit_weight > 0 and math.isfinite(digit_weight), f"digit_weight must be a positive number, got {digit_weight!r}")
    combos = combos_for_split(split)
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    weights = np.array([digit_weight if o.startswith("digit") else 1.0 for _, o, _ in combos])
    colour, obj, motion = combos[rng.choice(len(combos), p=weights / weights.sum())]
    background = str(rng.choice(list(BACKGROUNDS)))
    caption = make_caption(colour, obj, motion, background, rng)
    digit_instance = int(rng.choice(digit_indices(int(obj[5:])))) if obj.startswith("digit") else None

    duration = (num_frames - 1) / fps
    times = np.arange(num_frames) / fps
    lo, hi = DIGIT_SIZE if digit_instance is not None else SIZE
    if motion in ("grow", "shrink"):
        rate = rng.uniform(*GROW_RATE)
        small = rng.uniform(*GROW_START)
        rate = min(rate, (MAX_SIZE - small) / duration) if duration > 0 else rate
        sizes = small + rate * times if motion == "grow" else small + rate * (duration - times)
    else:
        sizes = np.full(num_frames, rng.uniform(lo, hi))
    sizes = sizes * size

    half = sizes.max() / 2 + 1
    centre = rng.uniform(half, size - half, size=2)
    velocity = np.zeros(2)
    if motion in ("left", "right", "up", "down"):
        speed = rng.uniform(*SPEED) * size
        room = size - 2 * half
        if duration > 0:
            speed = min(speed, room / duration)
        axis, sign = TRANSLATIONS[motion]
        travel = speed * duration
        # start so that the whole trajectory stays inside the frame
        start_lo, start_hi = (half + travel, size - half) if sign < 0 else (half, size - half - travel)
        centre[axis] = rng.uniform(start_lo, max(start_lo, start_hi))
        velocity[axis] = sign * speed
    centers = centre[None, :] + times[:, None] * velocity[None, :]
    return ClipSpec(index=index, split=split, seed=seed, colour=colour, object=obj, motion=motion,
                    background=background, caption=caption, fps=float(fps), num_frames=int(num_frames),
                    size=int(size), centers=centers.tolist(), sizes=sizes.tolist(), digit_instance=digit_instance)


# ----------------------------------------------------------------------------------------------
# Turning clips: the caption's motion preceded by a lead-in of another motion
# ----------------------------------------------------------------------------------------------

_TURN_CODE = 3  # mixed into the seed next to _SPLIT_CODE's 0/1 and _FEWSHOT_CODE's 2
#: Motions of a lead-in (sizes stay as the captioned part's first frame).
LEAD_IN_MOTIONS = (*TRANSLATIONS, "still")


def sample_turning_clip(index: int, *, seed: int = 0, split: str = "train", num_frames: int = 33, fps: float = 8.0,
                        size: int = 64, digit_weight: float = DIGIT_WEIGHT) -> ClipSpec:
    """A clip that turns: ``lead_in`` frames of ``lead_in_motion``, then the caption's motion.

    The captioned part (frames ``lead_in`` .. ``num_frames - 1``, at least 2) is :func:`sample_clip`'s clip
    ``index`` with that many frames; before it, the object moves another way (a translation at the domain's
    speeds, or still: :data:`LEAD_IN_MOTIONS` other than the caption's, the first whose path stays inside the
    frame) and arrives where the captioned part starts. The caption describes the frames from ``lead_in`` on
    only: a model trained on such clips (ART-V's embedded recipe) sees references that move one way while the
    text asks for another, as at every prompt change of a multi-prompt video. Deterministic in the same
    arguments as :func:`sample_clip`; ``lead_in`` is uniform in ``[1, num_frames - 2]``.
    """
    _check_render_args(num_frames, fps, size)
    check(num_frames >= 3, f"a turning clip needs num_frames >= 3 (a lead-in and two captioned frames), got {num_frames}")
    rng = np.random.default_rng([seed, _TURN_CODE, _SPLIT_CODE[split], index])
    lead_in = int(rng.integers(1, num_frames - 1))
    part = sample_clip(index, seed=seed, split=split, num_frames=num_frames - lead_in, fps=fps, size=size,
                       digit_weight=digit_weight)
    start, extent = np.array(part.centers[0]), part.sizes[0]
    half = extent / 2 + 1
    steps = np.arange(lead_in, 0, -1)[:, None]  # frames before the captioned part's first frame
    for motion in rng.permutation([m for m in LEAD_IN_MOTIONS if m != part.motion]):
        speed = rng.uniform(*SPEED) * size / fps  # drawn for "still" too: one draw per candidate
        velocity = np.zeros(2)
        if motion in TRANSLATIONS:
            axis, sign = TRANSLATIONS[str(motion)]
            velocity[axis] = sign * speed
        path = start[None] - steps * velocity[None]
        if ((path >= half) & (path <= size - half)).all():
            break
    else:  # unreachable: "still" always fits, and only one motion is excluded
        raise AssertionError("no lead-in fits")
    return ClipSpec(index=index, split=split, seed=seed, colour=part.colour, object=part.object, motion=part.motion,
                    background=part.background, caption=part.caption, fps=float(fps), num_frames=int(num_frames),
                    size=int(size), centers=path.tolist() + part.centers, sizes=[extent] * lead_in + part.sizes,
                    digit_instance=part.digit_instance, lead_in=lead_in, lead_in_motion=str(motion))


# ----------------------------------------------------------------------------------------------
# Few-shot motions: a separate generator, so that sample_clip's clips never change
# ----------------------------------------------------------------------------------------------

_FEWSHOT_CODE = 2  # mixed into the seed next to _SPLIT_CODE's 0 (train) and 1 (heldout)
# The few-shot motions' parameter ranges (seconds, or frame sizes); zigzag moves right at :data:`SPEED`. Public:
# the few-shot evaluation fits its templates within them.
BOUNCE_PERIOD = (1.8, 2.2)
BOUNCE_HEIGHT = (0.28, 0.36)
CIRCLE_RADIUS = (0.16, 0.22)
CIRCLE_PERIOD = (3.6, 4.4)
ZIGZAG_AMPLITUDE = (0.10, 0.14)
ZIGZAG_PERIOD = (1.8, 2.2)
DIAGONAL_SPEED = (0.07, 0.10)


def triangle_wave(u: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1: 0 at u = 0, +1 at 1/4, 0 at 1/2, -1 at 3/4."""
    return 2.0 / np.pi * np.arcsin(np.sin(2.0 * np.pi * u))


def fewshot_centers(motion: str, times: np.ndarray, size: int, half: float, rng: np.random.Generator) -> np.ndarray:
    """Centres ``(F, 2)`` (x, y pixels) of a few-shot motion at ``times`` (seconds), inside the frame for an object
    of half-extent ``half``; the motion's parameters are drawn from ``rng`` (see :data:`FEWSHOT_MOTIONS`)."""
    check(motion in FEWSHOT_MOTIONS, f"unknown few-shot motion {motion!r}; allowed: {', '.join(FEWSHOT_MOTIONS)}")
    duration = float(times[-1]) if len(times) else 0.0
    room = size - 2 * half
    if motion == "bounce":
        period, height = rng.uniform(*BOUNCE_PERIOD), min(rng.uniform(*BOUNCE_HEIGHT) * size, room)
        x = rng.uniform(half, size - half)
        y = (size - half) - height * np.abs(np.sin(np.pi * times / period))
        return np.stack([np.full_like(times, x), y], axis=1)
    if motion == "circling":
        radius, period = min(rng.uniform(*CIRCLE_RADIUS) * size, room / 2), rng.uniform(*CIRCLE_PERIOD)
        cx, cy = rng.uniform(half + radius, size - half - radius, size=2)
        angle = rng.uniform(0, 2 * np.pi) + 2 * np.pi * times / period  # y grows downwards: clockwise on screen
        return np.stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)], axis=1)
    if motion == "zigzag":
        speed, amplitude = rng.uniform(*SPEED) * size, min(rng.uniform(*ZIGZAG_AMPLITUDE) * size, room / 2)
        period = rng.uniform(*ZIGZAG_PERIOD)
        if duration > 0:
            speed = min(speed, room / duration)
        x0 = rng.uniform(half, max(half, size - half - speed * duration))
        cy = rng.uniform(half + amplitude, size - half - amplitude)
        return np.stack([x0 + speed * times, cy - amplitude * triangle_wave(times / period)], axis=1)
    speed = rng.uniform(*DIAGONAL_SPEED) * size  # diagonal: down-right, the same speed on both axes
    if duration > 0:
        speed = min(speed, room / duration)
    start = rng.uniform(half, max(half, size - half - speed * duration), size=2)
    return start[None, :] + speed * times[:, None] * np.ones((1, 2))


def sample_fewshot_clip(index: int, motion: str, *, seed: int = 0, num_frames: int = 33, fps: float = 8.0,
                        size: int = 64, colours: list[str] | tuple[str, ...] | None = None,
                        objects: list[str] | tuple[str, ...] | None = None,
                        digit_weight: float = DIGIT_WEIGHT) -> ClipSpec:
    """Clip ``index`` of one few-shot ``motion`` (a key of :data:`FEWSHOT_MOTIONS`), ``split="fewshot"``.

    ``colours`` / ``objects``: the colours and objects to draw from (default: all); e.g. a few for tuning clips
    and the others for testing that the motion transfers. Deterministic in all arguments; a separate random
    stream from :func:`sample_clip`'s (which this function does not touch). Trajectories are in continuous time
    as there: the same duration at another frame rate gives the same path.
    """
    _check_render_args(num_frames, fps, size)
    check(motion in FEWSHOT_MOTIONS, f"unknown few-shot motion {motion!r}; allowed: {', '.join(FEWSHOT_MOTIONS)}")
    check(digit_weight > 0 and math.isfinite(digit_weight), f"digit_weight must be a positive number, got {digit_weight!r}")
    colours = list(COLOURS) if colours is None else list(colours)
    objects = list(OBJECTS) if objects is None else list(objects)
    check(bool(colours) and all(c in COLOURS for c in colours),
          f"colours must be a non-empty list of {', '.join(COLOURS)}; got {colours}")
    check(bool(objects) and all(o in OBJECTS for o in objects),
          f"objects must be a non-empty list of {', '.join(OBJECTS)}; got {objects}")
    rng = np.random.default_rng([seed, _FEWSHOT_CODE, list(FEWSHOT_MOTIONS).index(motion), index])
    colour = str(rng.choice(colours))
    weights = np.array([digit_weight if o.startswith("digit") else 1.0 for o in objects])
    obj = objects[rng.choice(len(objects), p=weights / weights.sum())]
    background = str(rng.choice(list(BACKGROUNDS)))
    caption = make_caption(colour, obj, motion, background, rng)
    digit_instance = int(rng.choice(digit_indices(int(obj[5:])))) if obj.startswith("digit") else None
    lo, hi = DIGIT_SIZE if digit_instance is not None else SIZE
    sizes = np.full(num_frames, rng.uniform(lo, hi) * size)
    times = np.arange(num_frames) / fps
    centers = fewshot_centers(motion, times, size, sizes.max() / 2 + 1, rng)
    return ClipSpec(index=index, split=FEWSHOT_SPLIT, seed=seed, colour=colour, object=obj, motion=motion,
                    background=background, caption=caption, fps=float(fps), num_frames=int(num_frames),
                    size=int(size), centers=centers.tolist(), sizes=sizes.tolist(), digit_instance=digit_instance)


def fewshot_track_score(motion: str, centers: np.ndarray | list, size: int) -> float:
    """How well a centre track ``(F, 2)`` (x, y pixels; e.g. the judge's per-frame centres) has the shape of the
    few-shot ``motion``, in [0, 1] (1: the shape exactly; a simple check until the motion-fidelity score):

    * ``diagonal``: mean cosine between each frame-to-frame step and the down-right direction, times how far it
      went (capped at 1 for 20 % of the frame);
    * ``bounce``: x stays (< 8 % of the frame's drift), y has a peak-to-peak of >= 15 % of the frame and returns
      down after going up (a minimum of y strictly inside the track), the fraction of these that hold;
    * ``circling``: the centres' distances to their mean are alike (1 - their coefficient of variation), and the
      angle around the mean turns clockwise at least half a turn;
    * ``zigzag``: net rightward travel (>= 15 % of the frame) and the vertical steps change sign at least once.
    """
    check(motion in FEWSHOT_MOTIONS, f"unknown few-shot motion {motion!r}; allowed: {', '.join(FEWSHOT_MOTIONS)}")
    c = np.asarray(centers, dtype=np.float64)
    check(c.ndim == 2 and c.shape[1] == 2 and len(c) >= 3, f"centers must be (F >= 3, 2), got shape {c.shape}")
    steps = np.diff(c, axis=0)
    if motion == "diagonal":
        norms = np.linalg.norm(steps, axis=1)
        cos = np.where(norms > 1e-9, steps @ np.array([1.0, 1.0]) / np.sqrt(2) / np.maximum(norms, 1e-9), 0.0)
        travel = min(1.0, float(np.linalg.norm(c[-1] - c[0])) / (0.2 * size))
        return float(max(0.0, cos.mean()) * travel)
    if motion == "bounce":
        y = c[:, 1]
        peak = int(np.argmin(y))
        checks = [np.ptp(c[:, 0]) < 0.08 * size, np.ptp(y) >= 0.15 * size,
                  0 < peak < len(y) - 1 and y[-1] - y[peak] >= 0.1 * size and y[0] - y[peak] >= 0.1 * size]
        return float(np.mean(checks))
    if motion == "circling":
        rel = c - c.mean(axis=0)
        radius = np.linalg.norm(rel, axis=1)
        if radius.mean() < 0.05 * size:
            return 0.0
        roundness = max(0.0, 1.0 - float(radius.std() / radius.mean()))
        turn = np.diff(np.unwrap(np.arctan2(rel[:, 1], rel[:, 0])))  # positive: clockwise on screen (y down)
        return roundness * min(1.0, max(0.0, float(turn.sum()) / np.pi))
    right = (c[-1, 0] - c[0, 0]) >= 0.15 * size
    dy = steps[:, 1][np.abs(steps[:, 1]) > 0.01 * size]
    turns = bool(len(dy) >= 2 and np.any(np.sign(dy[1:]) != np.sign(dy[:-1])))
    return float(np.mean([right, turns]))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``load_digits`` handwriting (loaded once): ``(images (N, 8, 8) float32 in [0, 1], targets (N,))``,
    the ink stretched so that strokes are opaque; ``ClipSpec.digit_instance`` indexes them."""
    from sklearn.datasets import load_digits

    data = load_digits()
    # ink 0..16; strokes are mostly >= 10: stretch so strokes are opaque and the colour reads true
    return np.clip(data.images.astype(np.float32) / 11.0, 0.0, 1.0), data.target


def digit_indices(digit: int) -> np.ndarray:
    """Indices into :func:`digit_images` of the handwritten instances of ``digit``."""
    images, targets = digit_images()
    return np.flatnonzero(targets == digit)


def _star_polygon(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def render_mask(obj: str, center: tuple[float, float], extent: float, size: int, digit_instance: int | None = None) -> np.ndarray:
    """Anti-aliased coverage mask (H, W) in [0, 1] of one object (supersampled 4x, box-filtered)."""
    s = _SUPERSAMPLE
    cx, cy, r = center[0] * s, center[1] * s, extent * s / 2
    if obj.startswith("digit"):
        check(digit_instance is not None, "a digit object needs its load_digits instance index")
        glyph = Image.fromarray((digit_images()[0][digit_instance] * 255).astype(np.uint8))
        side = max(1, int(round(2 * r)))
        glyph = glyph.resize((side, side), Image.BILINEAR)
        canvas = Image.new("L", (size * s, size * s), 0)
        canvas.paste(glyph, (int(round(cx - side / 2)), int(round(cy - side / 2))))
    else:
        canvas = Image.new("L", (size * s, size * s), 0)
        draw = ImageDraw.Draw(canvas)
        if obj == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif obj == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif obj == "triangle":
            h = 2 * r  # equilateral-ish, pointing up, filling the extent box
            draw.polygon([(cx, cy - h / 2), (cx + r, cy + h / 2), (cx - r, cy + h / 2)], fill=255)
        elif obj == "star":
            draw.polygon(_star_polygon(cx, cy, r), fill=255)
        else:
            raise MicroCinemaError(f"unknown object {obj!r}: allowed are {', '.join(OBJECTS)}")
    mask = canvas.resize((size, size), Image.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def render_frame(spec: ClipSpec, frame: int) -> np.ndarray:
    """Render frame ``frame`` of a clip to uint8 (H, W, 3)."""
    colour = np.array(COLOURS[spec.colour][0], dtype=np.float32)
    background = np.array(BACKGROUNDS[spec.background], dtype=np.float32)
    alpha = render_mask(spec.object, spec.centers[frame], spec.sizes[frame], spec.size, spec.digit_instance)[..., None]
    return np.clip(background * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render a clip to uint8 frames (T, H, W, 3)."""
    return np.stack([render_frame(spec, i) for i in range(spec.num_frames)])


def make_clip(index: int, **kwargs) -> tuple[np.ndarray, ClipSpec]:
    """Sample and render clip ``index``: ``(frames uint8 (T, H, W, 3), spec)``. kwargs as :func:`sample_clip`."""
    spec = sample_clip(index, **kwargs)
    return render_clip(spec), spec
