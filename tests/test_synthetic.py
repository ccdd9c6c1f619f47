"""The procedural domain: determinism, held-out combinations, captions, and ground truth against the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from microcinema.data.synthetic import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_COMBOS,
    MOTIONS,
    OBJECTS,
    make_clip,
    render_clip,
    render_mask,
    sample_clip,
    train_combos,
)
from microcinema.core.errors import MicroCinemaError


def test_same_seed_same_clip_and_different_seed_differs():
    a, spec_a = make_clip(3, seed=7)
    b, spec_b = make_clip(3, seed=7)
    c, spec_c = make_clip(3, seed=8)
    assert np.array_equal(a, b) and spec_a == spec_b
    assert not np.array_equal(a, c)


def test_held_out_combos_never_in_train_and_only_in_heldout():
    held = set(HELD_OUT_COMBOS)
    train = [sample_clip(i, split="train", num_frames=2) for i in range(1500)]
    assert not {(s.colour, s.object, s.motion) for s in train} & held
    heldout = [sample_clip(i, split="heldout", num_frames=2) for i in range(200)]
    assert {(s.colour, s.object, s.motion) for s in heldout} <= held
    assert len({(s.colour, s.object, s.motion) for s in heldout}) == len(held)  # all of them are used
    # each part of a held-out combination is seen in training, only the combination is new
    seen = train_combos()
    for colour, obj, motion in held:
        assert any(c == colour and o == obj for c, o, _ in seen)
        assert any(o == obj and m == motion for _, o, m in seen)
        assert any(c == colour and m == motion for c, _, m in seen)


def test_vocabulary_has_wordings_synonyms_and_digits():
    assert len(COLOURS) == 8 and len(MOTIONS) >= 7
    assert all(len(templates) >= 5 for templates in MOTIONS.values())
    assert all(len(words) >= 2 for _, words in COLOURS.values())
    assert all(len(words) >= 2 for words in OBJECTS.values())
    assert {f"digit{k}" for k in range(10)} <= set(OBJECTS)


def test_captions_name_colour_object_and_vary():
    specs = [sample_clip(i, num_frames=2) for i in range(300)]
    for s in specs:
        assert any(w in s.caption for w in COLOURS[s.colour][1]), s.caption
        assert any(w in s.caption for w in OBJECTS[s.object]), s.caption
    by_motion: dict[str, set[str]] = {}
    for s in specs:
        by_motion.setdefault(s.motion, set()).add(s.caption)
    assert all(len(captions) >= 5 for captions in by_motion.values())
    # shapes dominate, digits are present
    objects = [s.object for s in specs]
    assert 0.15 < np.mean([o.startswith("digit") for o in objects]) < 0.5


def _object_mask(frames: np.ndarray, background: str) -> np.ndarray:
    bg = np.array(BACKGROUNDS[background], dtype=np.float32)
    return np.abs(frames.astype(np.float32) - bg).sum(-1) > 60


@pytest.mark.parametrize("index", range(12))
def test_ground_truth_matches_pixels(index):
    frames, spec = make_clip(index, num_frames=9, fps=2.0)
    centers, sizes = np.array(spec.centers), np.array(spec.sizes)
    for frame, (cx, cy), extent in zip(frames, centers, sizes):
        mask = _object_mask(frame, spec.background)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0
        # the object lies inside its extent box around the stored centre, and inside the frame
        assert xs.min() >= cx - extent / 2 - 1.5 and xs.max() <= cx + extent / 2 + 0.5
        assert ys.min() >= cy - extent / 2 - 1.5 and ys.max() <= cy + extent / 2 + 0.5
        assert cx - extent / 2 >= 0 and cx + extent / 2 <= spec.size
        if not spec.object.startswith("digit"):
            assert abs((xs.max() + xs.min() + 1) / 2 - cx) < 1.5
        # colour: the object's most opaque pixels (edges are blended with the background) have its colour
        colour = np.array(COLOURS[spec.colour][0])
        pixels = frame[mask].astype(np.float32)
        contrast = np.abs(pixels - np.array(BACKGROUNDS[spec.background])).sum(-1)
        core = pixels[contrast >= np.quantile(contrast, 0.75)]
        assert np.abs(np.median(core, axis=0) - colour).max() < 40
    dx, dy = centers[-1] - centers[0]
    growth = sizes[-1] - sizes[0]
    expected = {"left": dx < -8, "right": dx > 8, "up": dy < -8, "down": dy > 8,
                "still": abs(dx) + abs(dy) < 1e-6 and abs(growth) < 1e-6,
                "grow": growth > 6, "shrink": growth < -6}
    assert expected[spec.motion], (spec.motion, dx, dy, growth)


def test_trajectory_is_defined_in_time_so_frame_rates_agree():
    slow, spec_slow = make_clip(5, num_frames=9, fps=2.0)
    fast, spec_fast = make_clip(5, num_frames=33, fps=8.0)
    assert spec_slow.caption == spec_fast.caption
    assert np.array_equal(slow, fast[::4])


def test_digits_are_load_digits_handwriting():
    from sklearn.datasets import load_digits

    images = load_digits().images
    spec = next(s for s in (sample_clip(i, num_frames=1) for i in range(200)) if s.object.startswith("digit"))
    mask = render_mask(spec.object, (32.0, 32.0), 32.0, 64, spec.digit_instance)[16:48, 16:48]
    glyph = mask.reshape(8, 4, 8, 4).mean(axis=(1, 3))
    reference = images[spec.digit_instance] / 16.0
    assert np.corrcoef(glyph.ravel(), reference.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "validation"}, "allowed are train, heldout"),
    ({"size": 31}, "even integer >= 16"),
    ({"num_frames": 0}, "num_frames must be an integer >= 1"),
    ({"fps": -1.0}, "fps must be a positive number"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(MicroCinemaError, match=match):
        sample_clip(0, **kwargs)


def test_digit_weight_changes_how_often_digits_are_drawn_and_defaults_to_the_domain():
    from microcinema.data.synthetic import DIGIT_WEIGHT

    def digit_share(**kwargs) -> float:
        return np.mean([sample_clip(i, num_frames=1, **kwargs).object.startswith("digit") for i in range(1500)])

    assert sample_clip(11, num_frames=1) == sample_clip(11, num_frames=1, digit_weight=DIGIT_WEIGHT)
    assert abs(digit_share() - 1 / 3) < 0.05  # the domain: ten digits weigh as much as two shapes
    assert abs(digit_share(digit_weight=0.8) - 2 / 3) < 0.05  # 8 against 4
    with pytest.raises(MicroCinemaError, match="digit_weight must be a positive number"):
        sample_clip(0, digit_weight=0.0)


# ------------------------------------------------------------------------------------------------ turning clips


def test_turning_clips_lead_in_another_motion_into_the_captioned_clip():
    from microcinema.data.synthetic import LEAD_IN_MOTIONS, sample_turning_clip
    from microcinema.eval.judge import estimate_motion, judge_frames

    seen_lead_ins, seen_motions = set(), set()
    for index in range(40):
        spec = sample_turning_clip(index, seed=3, num_frames=16, fps=8.0, size=64)
        k = spec.lead_in
        assert 1 <= k <= 14 and spec.lead_in_motion in LEAD_IN_MOTIONS and spec.lead_in_motion != spec.motion
        part = sample_clip(index, seed=3, num_frames=16 - k, fps=8.0, size=64)  # the captioned part, exactly
        assert (spec.caption, spec.motion, spec.colour) == (part.caption, part.motion, part.colour)
        assert np.allclose(spec.centers[k:], part.centers) and np.allclose(spec.sizes[k:], part.sizes)
        centers = np.array(spec.centers)
        half = spec.sizes[0] / 2 + 1
        assert (centers >= half - 1e-9).all() and (centers <= 64 - half + 1e-9).all()
        assert spec == sample_turning_clip(index, seed=3, num_frames=16, fps=8.0, size=64)
        seen_lead_ins.add(k)
        seen_motions.add(spec.lead_in_motion)
        if k >= 6 and spec.lead_in_motion != "still":  # the judge sees the lead-in's own motion in its frames
            frames = render_clip(spec)[: k + 1]
            judged = judge_frames(frames)
            motion, _, _ = estimate_motion(np.arange(k + 1) / 8.0, np.array([j.center for j in judged]),
                                           np.array([j.size for j in judged]), 64)
            assert motion == spec.lead_in_motion, (index, motion, spec.lead_in_motion)
    assert len(seen_lead_ins) >= 8 and seen_motions == set(LEAD_IN_MOTIONS)
    with pytest.raises(MicroCinemaError, match="num_frames >= 3"):
        sample_turning_clip(0, num_frames=2)
