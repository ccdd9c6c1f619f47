"""Text encoders (MiniLM, CLIP from an SD folder) and the tiny random Stable Diffusion fixtures."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from microcinema.core.errors import MicroCinemaError
from microcinema.testing import (
    TINY_CLIP_TOKENIZER_DIR,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_sd_pipeline,
    tiny_unet2d,
)
from microcinema.core.text_encoders import (
    EXPECTED_SOURCE,
    CLIPTextEncoder,
    MiniLMTextEncoder,
    PromptTruncatedWarning,
    load_text_encoder,
)

FIXTURES = Path(__file__).parent / "fixtures"


class ForwardCounter:
    """Counts forward calls of a module and the batch sizes it saw."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(lambda m, args, kwargs, out: self.batches.append(
            (args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)


# --- the tiny CLIP tokenizer fixture -------------------------------------------------------------


def test_tokenizer_files_are_small_and_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_tok", FIXTURES / "make_tiny_clip_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_tokenizer(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shipped = (TINY_CLIP_TOKENIZER_DIR / name).read_bytes()
        assert shipped == (tmp_path / name).read_bytes(), f"{name} differs from a fresh generation"
        assert len(shipped) < 32_000


def test_tiny_clip_tokenizer_behaves_like_clip() -> None:
    tok = tiny_clip_tokenizer()
    assert tok.model_max_length == 77 and len(tok) == 918
    ids = tok("A Red circle, moving left!")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "red</w>", "circle</w>", ",</w>", "moving</w>", "left</w>", "!</w>"]
    assert len(tok("zebra xylophone")["input_ids"]) > 4  # unseen words fall back to sub-words / bytes


# --- MiniLM ---------------------------------------------------------------------------------------


def test_minilm_shapes_mask_determinism_and_frozen(minilm_encoder: MiniLMTextEncoder) -> None:
    enc = minilm_encoder
    prompts = ["a red circle moving left", "green star", ""]
    enc.clear_cache()  # the encoder is shared by the session: earlier tests may have cached these prompts from
    out = enc.encode(prompts)  # other batches, whose float rounding differs in the last bits
    assert enc.hidden_size == 384 and enc.max_length == 32
    assert out.hidden_states.shape == (3, 32, 384) and out.hidden_states.dtype == torch.float32
    assert out.attention_mask.shape == (3, 32) and out.attention_mask.dtype == torch.long
    lengths = [len(enc.tokenizer(p)["input_ids"]) for p in prompts]
    assert out.attention_mask.sum(1).tolist() == lengths and lengths[2] == 2  # "" -> [CLS] [SEP]
    assert all(out.attention_mask[i, :n].all() and not out.attention_mask[i, n:].any() for i, n in enumerate(lengths))
    enc.clear_cache()
    assert torch.equal(enc.encode(prompts).hidden_states, out.hidden_states)  # recomputed: identical
    enc.clear_cache()
    alone = enc.encode(["green star"])  # padding is masked: the batch does not change a prompt's states
    torch.testing.assert_close(alone.hidden_states[0], out.hidden_states[1], atol=1e-5, rtol=1e-5)
    enc.train()
    assert not enc.training and not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_minilm_is_the_real_pretrained_model(minilm_encoder: MiniLMTextEncoder) -> None:
    out = minilm_encoder.encode(
        ["a red circle moving left", "a crimson ball drifting to the left", "a blue square moving up"]
    )
    assert not torch.allclose(out.hidden_states[0], out.hidden_states[2])
    sentence = F.normalize(out.mean_pooled(), dim=-1)
    sim = sentence @ sentence.T
    assert sim[0, 1] > sim[0, 2] + 0.03, sim  # paraphrase beats a different caption (0.51 vs 0.43)


def test_cache_avoids_recomputation(minilm_encoder: MiniLMTextEncoder) -> None:
    enc = minilm_encoder
    enc.clear_cache()
    counter = ForwardCounter(enc.model)
    try:
        first = enc.encode(["a", "b", "a", ""])
        assert counter.batches == [3]  # one forward for the three distinct prompts
        second = enc.encode(["b", "", "a"])
        assert counter.batches == [3]  # all hits
        torch.testing.assert_close(second.hidden_states, first.hidden_states[[1, 3, 0]], atol=0, rtol=0)
        second.hidden_states.zero_()  # callers own their tensors: the cache is untouched
        assert torch.equal(enc.encode(["a"]).hidden_states[0], first.hidden_states[0])
        enc.encode(["a", "c"])
        assert counter.batches == [3, 1]  # only the miss is computed
        enc.cache_size = 2  # LRU: "a" and "c" are the most recent; "b" gets evicted
        enc.encode(["c"])
        enc.encode(["a", "b"])
        assert counter.batches == [3, 1, 1]
    finally:
        counter.handle.remove()
        enc.cache_size = 256


def test_truncation_warns_once_per_prompt_and_load_by_name() -> None:
    enc = load_text_encoder("MiniLM", max_length=8, cache_size=0)
    assert isinstance(enc, MiniLMTextEncoder) and enc.max_length == 8
    long = "a red circle moving slowly to the left over a dark blue background"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = enc.encode([long, "a dot"])
        enc.encode([long])  # no cache, recomputed: still warned only once
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptTruncatedWarning)]
    assert len(messages) == 1 and "at most 8" in messages[0]
    assert out.hidden_states.shape == (2, 8, 384) and out.attention_mask[0].all()


def test_bad_prompt_lists_raise(minilm_encoder: MiniLMTextEncoder) -> None:
    for bad in ([], [None], ["ok", 3]):
        with pytest.raises(MicroCinemaError, match="non-empty list of strings"):
            minilm_encoder.encode(bad)


# --- CLIP from a Stable Diffusion folder ----------------------------------------------------------


def test_clip_encoder_matches_stable_diffusion(tiny_sd_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    enc = load_text_encoder(tiny_sd_path)
    assert isinstance(enc, CLIPTextEncoder) and not enc.mask_padding
    assert enc.max_length == 77 and enc.hidden_size == 32
    out = enc.encode(["a red circle moving left", ""])
    assert out.hidden_states.shape == (2, 77, 32)
    assert out.attention_mask.sum(1).tolist() == [77, 77]  # no padding mask: SD attends to all 77 positions
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    cond, uncond = pipe.encode_prompt(["a red circle moving left"], "cpu", 1, True, [""])
    torch.testing.assert_close(out.hidden_states, torch.cat([cond, uncond]), atol=0, rtol=0)
    # clip_skip=1: penultimate layer, then the final layer norm (diffusers' definition)
    skip = CLIPTextEncoder.from_pretrained(tiny_sd_path, clip_skip=1).encode([""]).hidden_states
    ids = pipe.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(skip, pipe.text_encoder.final_layer_norm(states))
    assert not torch.allclose(skip, out.hidden_states[1:])


def test_wrap_text_encoder_picks_the_encoding_by_model_class(tiny_sd_path: Path, minilm_encoder) -> None:
    from microcinema.core.text_encoders import TransformerTextEncoder, wrap_text_encoder
    from microcinema.pipelines.text_to_image import unet_text_cond

    clip = load_text_encoder(tiny_sd_path)
    wrapped = wrap_text_encoder(clip.model, clip.tokenizer)
    assert isinstance(wrapped, CLIPTextEncoder) and wrapped.max_length == 77
    torch.testing.assert_close(wrapped.encode(["a cat"]).hidden_states, clip.encode(["a cat"]).hidden_states)
    # the U-Net sees no padding mask for CLIP (as StableDiffusionPipeline), MiniLM's mask otherwise
    assert unet_text_cond(wrapped.encode(["a cat"]), mask_padding=wrapped.mask_padding)["encoder_attention_mask"] is None
    bert = wrap_text_encoder(minilm_encoder.model, minilm_encoder.tokenizer)
    assert isinstance(bert, TransformerTextEncoder) and bert.max_length == 32 and bert.mask_padding
    torch.testing.assert_close(bert.encode(["a red circle"]).hidden_states, minilm_encoder.encode(["a red circle"]).hidden_states)
    with pytest.raises(MicroCinemaError, match="takes 77 tokens"):
        wrap_text_encoder(clip.model, clip.tokenizer, max_length=32)
    with pytest.raises(MicroCinemaError, match="needs its tokenizer"):
        wrap_text_encoder(clip.model, None)


def test_load_errors_say_what_was_expected(tmp_path: Path, tiny_sd_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "half" / "text_encoder").mkdir(parents=True)
    cases = {
        str(tmp_path / "missing"): "no such folder",
        "./nowhere/at/all": "no such folder",
        str(tmp_path / "file.txt"): "is a file",
        str(tmp_path / "half"): "no tokenizer/",
        str(tmp_path): "no text_encoder/ or tokenizer/",
        "nobody/no-such-model": "cannot load",  # hub-id shaped: tried offline, fails without network
    }
    for source, reason in cases.items():
        with pytest.raises(MicroCinemaError) as info:
            load_text_encoder(source)
        assert reason in str(info.value) and EXPECTED_SOURCE in str(info.value), str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(MicroCinemaError, match="clip_skip"):
        CLIPTextEncoder.from_pretrained(tiny_sd_path, clip_skip=5)


# --- the tiny Stable Diffusion fixtures -----------------------------------------------------------


def test_tiny_sd_pipeline_loads_back_and_runs(tiny_sd_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.unet.config
    assert cfg.down_block_types == ["CrossAttnDownBlock2D", "DownBlock2D"] and cfg.use_linear_projection
    assert list(cfg.attention_head_dim) == [2, 4] and cfg.cross_attention_dim == 32
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.safety_checker is None
    image = pipe(
        "a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3) and ((image >= 0) & (image <= 1)).all()


def test_sd15_layout_and_seeded_factories(tiny_sd15_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_path, subfolder="unet")
    assert not unet.config.use_linear_projection and unet.config.attention_head_dim == 2
    out = unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 32)).sample
    assert out.shape == (1, 4, 16, 16)
    a, b, c = tiny_unet2d(seed=0), tiny_unet2d(seed=0), tiny_unet2d(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert tiny_clip_text_model(hidden_size=16).config.hidden_size == 16
    assert tiny_sd_pipeline(hidden_size=16).unet.config.cross_attention_dim == 16
