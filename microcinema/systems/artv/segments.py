"""Multi-prompt schedules of an ART-V video (issue 17 item 7; paper appendix D, "multi-prompt text-to-video"):
which prompt conditions each frame, which frames are pinned to keyframes, and which frame is the anchor.

**Segments.** A video is a list of :class:`Segment` (prompt, frame count), played in order; each continues
from the last frames of the one before (the references of its first frame are the previous segment's last two
frames: generation never stops at a join). :func:`parse_segments` accepts

* one prompt: one segment of ``num_frames`` (default ``frames_per_prompt``) frames;
* a list of prompts: one segment each, ``frames_per_prompt`` frames each, or ``num_frames`` spread evenly
  (the first segments take the remainder);
* a list of ``(prompt, frames)`` pairs (the paper's Fig. 7/21: 16 frames per prompt; a bare prompt among them
  has ``frames_per_prompt``);
* a ``{start_frame: prompt}`` map: segment boundaries by frame (it must have frame 0, ``num_frames`` ends it).

**Anchor** (section 3.4, appendix D). ``anchor="segment"`` (the default, the paper's multi-prompt setting,
appendix D: "for the first prompt, we choose the first generated frame by the model as the global anchor frame.
For the following prompts, the global anchor frame is initialized from the last generated frame of 16 frames of
previous consecutive adjacent prompt"): segment 0 is anchored on frame 0, segment ``s > 0`` on the last frame of
segment ``s - 1``, so a new prompt may change the scene while staying continuous. ``anchor="first"``: every frame
is anchored on frame 0 (section 3.4, "we use the first frame ... as a stable anchor frame ... in whole videos";
the issue's reading), which holds the look of frame 0 through every prompt.

**Keyframes.** ``keyframes={frame: image}`` (negative frames count from the end, ``-1`` the last) pin frames:
the latent of a keyframed frame *is* the keyframe's latent (the frame is not sampled; later frames continue
from it), and the keyframe is the anchor from the first frame after the previous anchor change (segment start
or earlier keyframe) up to it and onwards (until the next segment start in ``"segment"`` mode): an auto-regressive
model cannot see the future, so the anchor is how the frames before a keyframe are steered towards it.
``loop=True`` pins the last frame to frame 0's latent (a keyframe ``{-1: frame 0}``): the video returns to
its start (the last frame equals the first; drop it when playing the video in a loop). A keyframe at frame 0
is the image mode's first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from microcinema.core.errors import check

__all__ = ["ANCHOR_MODES", "DEFAULT_FRAMES_PER_PROMPT", "Segment", "Schedule", "parse_segments",
           "resolve_keyframe_indices", "make_schedule"]

#: ``anchor=`` choices (see the module docstring).
ANCHOR_MODES: tuple[str, ...] = ("segment", "first")
#: Frames per prompt of the paper's multi-prompt videos (appendix D, Fig. 7).
DEFAULT_FRAMES_PER_PROMPT = 16


@dataclass(frozen=True)
class Segment:
    """One prompt of a video and its number of frames."""

    prompt: str
    num_frames: int


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_prompt(prompt: Any, where: str) -> str:
    check(isinstance(prompt, str) and prompt.strip() != "",
          f"{where}: empty or missing prompt ({prompt!r}); describe what happens, e.g. 'a red circle moving left'")
    return prompt


def _check_frames(frames: Any, where: str) -> int:
    check(_is_count(frames) and frames >= 1, f"{where}: a segment needs an integer number of frames >= 1, got {frames!r}")
    return int(frames)


def parse_segments(prompt: Any, num_frames: int | None = None,
                   frames_per_prompt: int = DEFAULT_FRAMES_PER_PROMPT) -> list[Segment]:
    """The segments of a video (see the module docstring for the accepted forms of ``prompt``); one-line
    :class:`~microcinema.core.errors.MicroCinemaError` for an empty list, an empty prompt, a segment of 0 frames,
    frame counts that do not add up to ``num_frames``, or a map without frame 0."""
    check(num_frames is None or (_is_count(num_frames) and num_frames >= 1),
          f"num_frames must be an integer >= 1, got {num_frames!r}")
    _check_frames(frames_per_prompt, "frames_per_prompt")
    if isinstance(prompt, str):
        return [Segment(_check_prompt(prompt, "prompt"), int(num_frames or frames_per_prompt))]
    if isinstance(prompt, Mapping):
        check(len(prompt) > 0, "the prompt map is empty: give {0: 'first prompt', 16: 'second prompt', ...}")
        check(all(_is_count(k) for k in prompt), f"the prompt map's keys must be start frames (integers), got "
              f"{[k for k in prompt if not _is_count(k)]}")
        starts = sorted(int(k) for k in prompt)
        check(starts[0] == 0, f"the prompt map must say what happens from frame 0 (its first key is {starts[0]})")
        total = num_frames if num_frames is not None else starts[-1] + frames_per_prompt
        check(starts[-1] < total, f"the prompt map starts a segment at frame {starts[-1]}, past the video's end "
              f"(num_frames={total}, frames 0..{total - 1})")
        ends = [*starts[1:], total]
        return [Segment(_check_prompt(prompt[s], f"prompt at frame {s}"), e - s) for s, e in zip(starts, ends)]
    check(isinstance(prompt, Sequence), f"prompt must be a string, a list of prompts, a list of (prompt, frames) "
          f"pairs or a {{frame: prompt}} map, got {type(prompt).__name__}")
    items = list(prompt)
    check(len(items) > 0, "the prompt list is empty: give at least one prompt, e.g. ['a red circle moving left']")
    if all(isinstance(p, str) for p in items):
        prompts = [_check_prompt(p, f"prompt {i}") for i, p in enumerate(items)]
        if num_frames is None:
            return [Segment(p, int(frames_per_prompt)) for p in prompts]
        check(num_frames >= len(prompts), f"num_frames={num_frames} is fewer than the {len(prompts)} prompts: "
              "every prompt needs at least one frame")
        base, extra = divmod(int(num_frames), len(prompts))
        return [Segment(p, base + (i < extra)) for i, p in enumerate(prompts)]
    segments = []
    for i, item in enumerate(items):
        if isinstance(item, str):  # a bare prompt among pairs: frames_per_prompt frames
            item = (item, frames_per_prompt)
        check(isinstance(item, (tuple, list, Segment)) and len(item if not isinstance(item, Segment) else (0, 0)) == 2,
              f"segment {i} must be a prompt string or a (prompt, frames) pair, got {item!r}")
        text, frames = (item.prompt, item.num_frames) if isinstance(item, Segment) else item
        segments.append(Segment(_check_prompt(text, f"segment {i}"), _check_frames(frames, f"segment {i} ({text!r})")))
    total = sum(s.num_frames for s in segments)
    check(num_frames is None or num_frames == total,
          f"num_frames={num_frames} but the segments' frames add up to {total}: leave num_frames out or make them agree")
    return segments


def resolve_keyframe_indices(keyframes: Mapping[Any, Any] | None, num_frames: int) -> dict[int, Any]:
    """``{frame: image}`` with negative frames counted from the end; one-line errors for a frame that is not
    an integer or lies past the video's end, and for two keys naming the same frame."""
    if keyframes is None:
        return {}
    check(isinstance(keyframes, Mapping), f"keyframes must be a {{frame: image}} map, got {type(keyframes).__name__}")
    out: dict[int, Any] = {}
    for key, image in keyframes.items():
        check(_is_count(key), f"keyframe frames must be integers, got {key!r}")
        index = int(key) + num_frames if key < 0 else int(key)
        check(0 <= index < num_frames, f"keyframe at frame {key} is past the video's end: it has {num_frames} frames "
              f"(0..{num_frames - 1}, or -1..-{num_frames} from the end)")
        check(index not in out, f"two keyframes name frame {index} ({key!r} and another key)")
        check(image is not None, f"keyframe at frame {key} is None: give an image (path, PIL image, array or tensor)")
        out[index] = image
    return out


@dataclass
class Schedule:
    """Per-frame plan of a video: ``segment_of[i]`` (index into ``segments``), ``anchor_of[i]`` (the frame whose
    latent is frame ``i``'s anchor; ``None`` for frame 0 when it is sampled: no anchor yet), ``pinned``
    (frames whose latent is given: keyframes and the loop's last frame), ``loop_frame`` (the last frame when
    ``loop``, pinned to frame 0). Holds O(number of frames) integers, no tensors."""

    segments: list[Segment]
    segment_of: list[int]
    anchor_of: list[int | None]
    pinned: set[int]
    loop_frame: int | None = None

    @property
    def num_frames(self) -> int:
        return len(self.segment_of)

    def segment_starts(self) -> list[int]:
        starts, total = [], 0
        for s in self.segments:
            starts.append(total)
            total += s.num_frames
        return starts


def make_schedule(segments: Sequence[Segment], keyframe_frames: Sequence[int] = (), *, anchor: str = "segment",
                  loop: bool = False) -> Schedule:
    """The per-frame plan (see the module docstring): segment per frame, anchor frame per frame, pinned frames."""
    check(anchor in ANCHOR_MODES, f"anchor must be one of {', '.join(ANCHOR_MODES)}, got {anchor!r}")
    segment_of = [k for k, s in enumerate(segments) for _ in range(s.num_frames)]
    n = len(segment_of)
    keys = set(int(k) for k in keyframe_frames)
    loop_frame = None
    if loop:
        check(n >= 2, "loop=True needs at least 2 frames (the last returns to the first)")
        check(n - 1 not in keys, "loop=True pins the last frame to the first: do not also give a keyframe there")
        loop_frame = n - 1
    pinned = keys | ({loop_frame} if loop_frame is not None else set())
    starts = set(Schedule(list(segments), segment_of, [], set()).segment_starts())
    # the anchor changes at: frame 0, segment starts ("segment": to the frame before), keyframes (reaching back)
    anchor_of: list[int | None] = [None] * n
    current: int | None = 0 if 0 in pinned else None
    for i in range(n):
        if i == 0:
            anchor_of[0] = 0 if 0 in pinned else None  # a sampled frame 0 has no anchor yet (text-only mode)
            current = 0
            continue
        if anchor == "segment" and i in starts:
            current = i - 1
        anchor_of[i] = current
    # keyframes (not frame 0) anchor the frames leading to them: from the last anchor change before them
    changes = sorted({0} | ({s for s in starts if s > 0} if anchor == "segment" else set()))
    for k in sorted(pinned - {0}):
        target = 0 if k == loop_frame else k
        begin = max([c for c in changes if c <= k] + [p + 1 for p in pinned if p < k and p != 0])
        begin = max(begin, 1)
        for i in range(begin, n):
            if i > k and ((anchor == "segment" and i in starts) or i in pinned):
                break
            anchor_of[i] = target
    return Schedule(list(segments), segment_of, anchor_of, pinned, loop_frame)
