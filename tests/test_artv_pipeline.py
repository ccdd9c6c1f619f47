"""ARTVPipeline (issue 17 items 6, 7, 12): streaming equals the call, memory held between frames does not grow
with length, segments switch text at the right frames, anchors per mode, keyframes and loops pinned exactly,
text-only and image mode, save/load (DiffusionPipeline.from_pretrained too), SD folders, the long-video
benchmark's generator, bad input. Tiny random models, one sampler step."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.core.errors import MicroCinemaError
from microcinema.systems.artv.model import ARTVModel
from microcinema.systems.artv.pipeline import ARTVPipeline
from microcinema.systems.artv.segments import Segment, make_schedule, parse_segments
from microcinema.testing import make_tiny_sd_pipeline, tiny_clip_text_model, tiny_clip_tokenizer, tiny_unet2d, tiny_vae

D = 32
SIZE = 16  # pixels: 8x8 latents with the tiny x2 VAE


def randomise_new_parts(model: ARTVModel, seed: int = 1) -> ARTVModel:
    """Zero-initialised parts get random weights (as after training), so references and anchor matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in set(model.new_parameter_names()) and not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def tiny_pipeline(**settings) -> ARTVPipeline:
    unet = tiny_unet2d(cross_attention_dim=D, sample_size=8)
    torch.manual_seed(0)
    model = randomise_new_parts(ARTVModel.from_unet(unet, mask_block_out_channels=[8, 8], mask_layers_per_block=1))
    pipe = ARTVPipeline(model.eval(), tiny_vae(), tiny_clip_text_model(hidden_size=D), tiny_clip_tokenizer(),
                        num_inference_steps=1, **settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> ARTVPipeline:
    return tiny_pipeline()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Spy:
    """Records the model's inputs per call with the frame being made."""

    def __init__(self, pipe: ARTVPipeline):
        self.pipe, self.calls = pipe, []
        self.original = pipe.unet.forward

    def __enter__(self):
        def forward(sample, timestep, encoder_hidden_states, refs=None, anchor=None, **kw):
            self.calls.append(dict(frame=self.pipe.frame_index, text=encoder_hidden_states[0].clone(),
                                   refs=None if refs is None else refs[0].clone(),
                                   anchor=None if anchor is None else anchor[0].clone()))
            return self.original(sample, timestep, encoder_hidden_states, refs=refs, anchor=anchor, **kw)

        self.pipe.unet.forward = forward
        return self

    def __exit__(self, *exc):
        del self.pipe.unet.forward

    def per_frame(self) -> dict[int, dict]:
        return {c["frame"]: c for c in reversed(self.calls)}  # the first call of each frame


def image_file(tmp_path, name: str, colour: tuple[int, int, int], size: int = SIZE):
    path = tmp_path / name
    Image.new("RGB", (size, size), colour).save(path)
    return path


# ----------------------------------------------------------------------------------------------- streaming


def test_stream_yields_every_frame_in_order_and_equals_call(pipe):
    prompts = [("a red circle moving left", 3), ("a red circle moving up", 2)]
    out = pipe(prompts, generator=gen(), output_type="np")
    assert out.frames.shape == (1, 5, SIZE, SIZE, 3) and out.fps == 8.0
    stream = pipe.stream(prompts, generator=gen(), output_type="np")
    frames, order = [], []
    for frame in stream:  # lazily: each frame exists when it is yielded, not before
        order.append(pipe.frame_index)
        frames.append(frame)
    assert order == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(np.stack(frames), out.frames[0], atol=1e-5)
    latents = pipe(prompts, generator=gen(), output_type="latent").frames
    streamed = torch.stack(list(pipe.stream(prompts, generator=gen(), output_type="latent")), dim=1)
    assert torch.equal(latents[0], streamed)
    uint8 = list(pipe.stream(prompts, generator=gen(), output_type="uint8", decode_chunk_size=2))
    assert len(uint8) == 5 and uint8[0].dtype == np.uint8 and uint8[0].shape == (SIZE, SIZE, 3)
    assert np.abs(np.stack(uint8).astype(float) / 255 - out.frames[0]).max() <= 0.5 / 255 + 1e-4
    pil = list(pipe.stream(prompts, generator=gen(), output_type="pil"))
    assert len(pil) == 5 and pil[0].size == (SIZE, SIZE)
    assert not torch.equal(latents[0, :, 1], latents[0, :, 2])  # frames differ (the video moves on)


def test_same_seed_same_video_and_other_seed_differs(pipe):
    a = pipe("a red circle moving left", 3, generator=gen(1), output_type="latent").frames
    b = pipe("a red circle moving left", 3, generator=gen(1), output_type="latent").frames
    c = pipe("a red circle moving left", 3, generator=gen(2), output_type="latent").frames
    assert torch.equal(a, b) and not torch.equal(a, c)


def _held_tensors() -> int:
    gc.collect()
    return sum(o.numel() for o in gc.get_objects()
               if issubclass(type(o), torch.Tensor) and not issubclass(type(o), torch.nn.Parameter))


@pytest.mark.parametrize("anchor", ["segment", "first"])
def test_memory_held_between_frames_does_not_grow_with_length(pipe, anchor):
    """The pipeline's state (last latents, anchors, keyframes) after every frame, and every live tensor in the
    process at each segment's end: an 18-frame, 6-segment video holds no more than a 6-frame, 2-segment one with
    the same two prompts (the text encoder keeps an LRU cache of up to 256 prompts' encodings: bounded)."""
    def peaks(segments: int, per: int) -> tuple[int, int]:
        state, live = [], []
        prompts = [(f"a red circle moving {'left' if k % 2 else 'up'}", per) for k in range(segments)]
        for i, _ in enumerate(pipe.stream(prompts, generator=gen(), output_type="uint8", anchor=anchor)):
            s = pipe._state
            state.append(sum(t.numel() for part in (s["recent"], s["kept"].values(), s["pinned"].values())
                             for t in part))
            if i % per == per - 1:
                live.append(_held_tensors())
        return max(state), max(live)

    short_state, short_live = peaks(2, 3)
    long_state, long_live = peaks(6, 3)
    assert long_state == short_state > 0
    assert long_live <= short_live * 1.05


# ----------------------------------------------------------------------------------------------- segments


def test_segments_switch_text_at_the_right_frames(pipe):
    texts = {p: pipe._text(p)[0][0] for p in ("a red circle moving left", "a blue square moving up")}
    for prompt, expected in [
        ([("a red circle moving left", 2), ("a blue square moving up", 3)], ["a red circle moving left"] * 2
         + ["a blue square moving up"] * 3),
        ({0: "a red circle moving left", 3: "a blue square moving up"}, ["a red circle moving left"] * 3
         + ["a blue square moving up"] * 2),
    ]:
        with Spy(pipe) as spy:
            list(pipe.stream(prompt, 5, generator=gen(), output_type="latent"))
        seen = spy.per_frame()
        assert sorted(seen) == [0, 1, 2, 3, 4]
        for i, p in enumerate(expected):
            states = seen[i]["text"]
            assert torch.equal(states[:len(texts[p])], texts[p]), (i, p)


def test_parse_segments_forms():
    assert parse_segments("a") == [Segment("a", 16)]
    assert parse_segments(["a", "b"], 5) == [Segment("a", 3), Segment("b", 2)]
    assert parse_segments(["a", "b"], frames_per_prompt=4) == [Segment("a", 4), Segment("b", 4)]
    assert parse_segments([("a", 2), "b"], frames_per_prompt=3) == [Segment("a", 2), Segment("b", 3)]
    assert parse_segments({0: "a", 10: "b"}, 12) == [Segment("a", 10), Segment("b", 2)]


def test_anchor_per_mode_follows_the_paper_and_the_option(pipe):
    prompts = [("a red circle moving left", 3), ("a red circle moving up", 3)]
    for mode in ("segment", "first"):
        with Spy(pipe) as spy:
            frames = list(pipe.stream(prompts, generator=gen(), output_type="latent", anchor=mode))
        seen = spy.per_frame()
        assert seen[0]["anchor"] is None and seen[0]["refs"] is None  # text-only first frame: blank conditions
        assert torch.equal(seen[1]["refs"][0], frames[0]) and torch.equal(seen[1]["refs"][1], frames[0])
        assert torch.equal(seen[4]["refs"][0], frames[3]) and torch.equal(seen[4]["refs"][1], frames[2])
        for i in (1, 2):
            assert torch.equal(seen[i]["anchor"], frames[0])
        for i in (3, 4, 5):  # appendix D: the previous segment's last frame; "first": frame 0 throughout
            assert torch.equal(seen[i]["anchor"], frames[2] if mode == "segment" else frames[0]), (mode, i)
    assert pipe.config.anchor == "segment"


# ----------------------------------------------------------------------------------------------- keyframes


def test_keyframes_are_pinned_and_anchor_the_frames_before_them(pipe, tmp_path):
    red, blue = image_file(tmp_path, "red.png", (200, 30, 30)), image_file(tmp_path, "blue.png", (30, 30, 200))
    green = np.full((SIZE, SIZE, 3), (30, 200, 30), np.uint8)
    with Spy(pipe) as spy:
        frames = list(pipe.stream("a circle", 7, keyframes={0: red, 3: blue, -1: green}, generator=gen(),
                                  output_type="latent"))
    encode = lambda x: pipe._encode_image(pipe._image_tensor(x, (SIZE, SIZE), "k")[0])[0]  # noqa: E731
    assert torch.equal(frames[0], encode(red)) and torch.equal(frames[3], encode(blue))
    assert torch.equal(frames[6], encode(green))
    seen = spy.per_frame()
    assert sorted(seen) == [1, 2, 4, 5]  # pinned frames are not sampled
    for i in (1, 2):
        assert torch.equal(seen[i]["anchor"], frames[3])
    for i in (4, 5):
        assert torch.equal(seen[i]["anchor"], frames[6])
    assert torch.equal(seen[4]["refs"][0], frames[3])  # later frames continue from the keyframe


def test_loop_returns_to_the_first_frame(pipe):
    frames = list(pipe.stream([("a red circle moving left", 3), ("a red circle moving right", 3)], loop=True,
                              generator=gen(), output_type="latent"))
    assert len(frames) == 6 and torch.equal(frames[-1], frames[0])
    schedule = make_schedule([Segment("a", 3), Segment("b", 3)], loop=True)
    assert schedule.anchor_of[3:5] == [0, 0] and schedule.loop_frame == 5  # the last segment heads back to frame 0


def test_image_mode_and_text_only_mode(pipe, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 20), (250, 120, 0)).save(big)
    out = pipe("a circle", 3, image=big, generator=gen(), output_type="latent")
    assert any("resized 40x20" in n for n in out.notes) and any("your image" in n for n in out.notes)
    pixels, _ = pipe._image_tensor(big, (SIZE, SIZE), "x")
    assert torch.equal(out.frames[0, :, 0], pipe._encode_image(pixels)[0])
    assert torch.equal(out.key_frames[0], pixels)
    text_only = pipe("a circle", 3, generator=gen(), output_type="latent")
    assert any("text-only" in n for n in text_only.notes) and text_only.key_frames.shape == (1, 3, SIZE, SIZE)

    calls = []

    def key_frame_model(prompts, *, num_inference_steps, guidance_scale, generator, size):
        calls.append((prompts, size))
        return torch.full((1, 3, SIZE, SIZE), 0.5)

    pipe.key_frame_model = key_frame_model
    try:
        from_model = pipe("a green star", 2, generator=gen(), output_type="latent")
    finally:
        pipe.key_frame_model = None
    assert calls == [(["a green star"], SIZE)]
    assert torch.equal(from_model.frames[0, :, 0], pipe._encode_image(torch.full((3, SIZE, SIZE), 0.5))[0])
    assert any("key-frame model" in n for n in from_model.notes)


def test_callback_on_step_end_sees_every_frame_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, kw):
        seen.append(p.frame_index)
        return {"latents": torch.zeros_like(kw["latents"])}

    frames = pipe("a circle", 3, generator=gen(), output_type="latent", callback_on_step_end=callback).frames
    assert seen == [0, 1, 2] and torch.count_nonzero(frames) == 0


# ----------------------------------------------------------------------------------------------- loading


def test_save_load_round_trip_and_diffusion_pipeline(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    pipe.anchor = "first"
    try:
        folder = pipe.save_pretrained(tmp_path / "artv")
    finally:
        pipe.anchor = "segment"
    expected = pipe("a circle", 3, generator=gen(), output_type="latent", anchor="first").frames
    for loaded in (ARTVPipeline.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder)):
        assert isinstance(loaded, ARTVPipeline) and loaded.anchor == "first" and loaded.num_inference_steps == 1
        loaded.set_progress_bar_config(disable=True)
        assert torch.allclose(loaded("a circle", 3, generator=gen(), output_type="latent").frames, expected, atol=1e-6)
    with pytest.raises(MicroCinemaError, match="not an ART-V pipeline folder"):
        ARTVPipeline.from_pretrained(tmp_path)


def test_from_stable_diffusion_folder(tmp_path):
    sd = make_tiny_sd_pipeline(tmp_path / "sd")
    pipe = ARTVPipeline.from_stable_diffusion(sd, model_options={"mask_block_out_channels": [8, 8]},
                                              num_inference_steps=1)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a cat", "a dog"], 4, generator=gen(), output_type="np")
    assert out.frames.shape == (1, 4, 32, 32, 3) and pipe.sampler == "dpmpp_2s_ancestral"
    assert (pipe.guidance_scale, pipe.ref_guidance_scale, pipe.anchor_guidance_scale) == (6.5, 0.25, 0.25)
    assert pipe.ref_noise_level == 200
    with pytest.raises(MicroCinemaError, match="cannot load a Stable Diffusion"):
        ARTVPipeline.from_stable_diffusion(tmp_path / "nothing")


def test_embedded_says_when_its_weights_are_missing(tmp_path, monkeypatch):
    import microcinema.embedded

    monkeypatch.setattr(microcinema.embedded, "WEIGHTS_DIR", tmp_path / "weights")  # as before it was trained
    with pytest.raises(MicroCinemaError, match="embedded ART-V model is not trained yet") as info:
        ARTVPipeline.embedded()
    assert "\n" not in str(info.value)


def test_longvideo_generator(pipe):
    from microcinema.eval.longvideo import sample_sequence

    segments = sample_sequence(0, frames_per_segment=2, num_segments=2, size=SIZE * 2)
    frames = pipe.make_video_fn()(segments, 0)
    assert frames.shape == (4, SIZE * 2, SIZE * 2, 3) and frames.dtype == np.uint8


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=[]), "prompt list is empty"),
    (dict(prompt=[("a", 2), ("b", 0)]), "frames >= 1"),
    (dict(prompt={}), "prompt map is empty"),
    (dict(prompt=["a", ""]), "empty or missing prompt"),
    (dict(prompt={0: "a", 9: "b"}, num_frames=5), "past the video's end"),
    (dict(prompt="a", num_frames=4, keyframes={4: np.zeros((SIZE, SIZE, 3), np.uint8)}), "past the video's end"),
    (dict(prompt="a", num_frames=4, keyframes={-5: np.zeros((SIZE, SIZE, 3), np.uint8)}), "past the video's end"),
    (dict(prompt="a", num_frames=4, guidance_scale="high"), "guidance_scale must be a number"),
    (dict(prompt="a", num_frames=4, ref_guidance_scale=math.nan), "ref_guidance_scale must be a number"),
    (dict(prompt="a", num_frames=4, anchor_guidance_scale=True), "anchor_guidance_scale must be a number"),
    (dict(prompt="a", num_frames=4, ref_noise_level=1000), "ref_noise_level must be an integer"),
    (dict(prompt="a", num_frames=4, anchor="last"), "anchor must be one of"),
    (dict(prompt="a", num_frames=1, loop=True), "at least 2 frames"),
    (dict(prompt="a", num_frames=4, output_type="gif"), "unknown output_type"),
])
def test_bad_input_is_one_line_before_any_frame(pipe, kwargs, message):
    with Spy(pipe) as spy:
        for call in (pipe, pipe.stream):
            with pytest.raises(MicroCinemaError, match=message) as info:
                call(**kwargs)
            assert "\n" not in str(info.value)
    assert spy.calls == []


def test_unreadable_keyframe_image(pipe, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    for keyframes, message in [({2: junk}, "keyframe at frame 2: cannot read image"),
                               ({2: tmp_path / "missing.png"}, "keyframe at frame 2: image not found")]:
        with pytest.raises(MicroCinemaError, match=message) as info:
            pipe.stream("a", 4, keyframes=keyframes)
        assert "\n" not in str(info.value)
    with pytest.raises(MicroCinemaError, match="your image: cannot read image"):
        pipe("a", 4, image=junk)
