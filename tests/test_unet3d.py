"""VideoUNet (paper section 3.1) and AppearNet injections (section 3.2, Table 2) on tiny random U-Nets.

The central property: freshly inflated, every injection mode is exactly the 2D model frame by frame, and
every zero-initialised branch can still learn.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange

from microcinema.core.errors import MicroCinemaError
from microcinema.testing import tiny_unet2d
from microcinema.models.appearnet import INJECTION_MODES, SpadeModulation, group_norm_3d
from microcinema.models.unet3d import VideoUNet

TOL = 1e-5
B, C, FRAMES, H, W, L, D = 2, 4, 3, 8, 8, 5, 32


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A tiny SD-2.1-layout U-Net saved as a diffusers pipeline folder (``unet/`` subfolder)."""
    root = tmp_path_factory.mktemp("pipe")
    tiny_unet2d(seed=1).save_pretrained(root / "unet")
    return root


@pytest.fixture(scope="module")
def ref2d(unet_dir) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(unet_dir, subfolder="unet").eval()


@pytest.fixture(scope="module")
def models(unet_dir) -> dict[str, VideoUNet]:
    """One freshly inflated model per injection mode (tests that change weights work on copies)."""
    return {mode: VideoUNet.from_pretrained_2d(unet_dir, injection=mode).eval() for mode in INJECTION_MODES}


def inputs(frames: int = FRAMES, seed: int = 0, h: int = H, w: int = W) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(B, C, frames, h, w, generator=g),
        timestep=torch.tensor([10, 700]),
        encoder_hidden_states=torch.randn(B, L, D, generator=g),
        condition=torch.randn(B, C, frames, h, w, generator=g),
    )


MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def per_frame_2d(unet: UNet2DConditionModel, x: dict, mask=None) -> torch.Tensor:
    frames = [
        unet(x["sample"][:, :, f], x["timestep"], x["encoder_hidden_states"], encoder_attention_mask=mask).sample
        for f in range(x["sample"].shape[2])
    ]
    return torch.stack(frames, dim=2)


def perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def zero_init_params(model: VideoUNet) -> dict[str, torch.nn.Parameter]:
    """The last layers of every zero-initialised branch."""
    suffixes = ("conv2.weight", "attn.to_out.0.weight", "add.weight", "to_gamma.weight", "to_beta.weight")
    named = {n: p for n, p in model.named_parameters()
             if n.endswith(suffixes) and not n.startswith(("unet.", "appearnet."))}
    if model.condition_conv_in is not None:
        named["condition_conv_in.weight"] = model.condition_conv_in.weight
    return named


# ------------------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("mode", INJECTION_MODES)
@torch.no_grad()
def test_fresh_model_is_the_2d_model_frame_by_frame(models, ref2d, mode):
    model = models[mode]
    for frames in (FRAMES, 1):
        x = inputs(frames)
        for mask in (None, MASK):
            out = model(**x, encoder_attention_mask=mask).sample
            assert out.shape == x["sample"].shape
            diff = (out - per_frame_2d(ref2d, x, mask)).abs().max().item()
            assert diff <= TOL, (mode, frames, mask is not None, diff)
    # a single key frame as the condition (broadcast over frames), no condition at all, odd latent sizes
    x = inputs(h=7, w=9)
    expected = per_frame_2d(ref2d, x)
    for condition in (x["condition"][:, :, :1], None):
        out = model(**{**x, "condition": condition}).sample
        assert (out - expected).abs().max().item() <= TOL


def test_sd15_layout_and_unet_instance_are_identity_too():
    unet = tiny_unet2d(seed=2, sd21_layout=False)
    model = VideoUNet.from_pretrained_2d(unet, injection="add_encdec_spade").eval()
    assert model.unet is unet
    x = inputs()
    with torch.no_grad():
        assert (model(**x).sample - per_frame_2d(unet, x)).abs().max().item() <= TOL


def test_class_embedding_timestep_is_supported():
    """ART-V's noise-augmentation level goes through ``class_embed_type="timestep"``."""
    unet = tiny_unet2d(seed=3, class_embed_type="timestep")
    model = VideoUNet.from_pretrained_2d(unet, injection="add_dec").eval()
    x, level = inputs(), torch.tensor([0, 200])
    with torch.no_grad():
        out = model(**x, class_labels=level).sample
        ref = torch.stack([unet(x["sample"][:, :, f], x["timestep"], x["encoder_hidden_states"],
                                class_labels=level).sample for f in range(FRAMES)], dim=2)
        other = model(**x, class_labels=torch.tensor([500, 900])).sample
    assert (out - ref).abs().max().item() <= TOL
    assert (out - other).abs().max().item() > 1e-4
    with pytest.raises(MicroCinemaError, match="class_labels"):
        model(**x)


def test_pooled_prompt_addition_embedding_is_supported(tmp_path):
    """A U-Net with diffusers' ``addition_embed_type="text"`` (the prompt pooled into the time embedding, as
    the candidate embedded text-to-image model has) inflates to the 2D model frame by frame, AppearNet
    included, and round-trips through save_pretrained; other addition embeddings are refused by name."""
    unet = tiny_unet2d(seed=4, addition_embed_type="text", addition_embed_type_num_heads=4)
    model = VideoUNet.from_pretrained_2d(unet, injection="add_encdec_spade").eval()
    assert model.appearnet.add_embedding is not None
    x = inputs()
    with torch.no_grad():
        perturb(model.appearnet.add_embedding, seed=5)  # AppearNet's own copy; its injections are zero at init
        out = model(**x).sample
        assert (out - per_frame_2d(unet, x)).abs().max().item() <= TOL
        # the U-Net's own pooled-prompt embedding is used: change it and the output changes
        changed = copy.deepcopy(model)
        perturb(changed.unet.add_embedding, seed=7)
        assert (changed(**x).sample - out).abs().max().item() > 1e-4
        for branch in model.injections.values():
            perturb(branch, seed=6)
        injected = model(**x).sample
        model.appearnet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
        assert (model(**x).sample - injected).abs().max().item() > 1e-5
    model.save_pretrained(tmp_path / "video")
    loaded = VideoUNet.from_pretrained(tmp_path / "video").eval()
    with torch.no_grad():
        assert (loaded(**x).sample - model(**x).sample).abs().max().item() <= TOL
    with pytest.raises(MicroCinemaError, match="addition_embed_type"):
        VideoUNet.from_pretrained_2d(tiny_unet2d(seed=4, addition_embed_type="text_time",
                                                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=48),
                                     injection="add_dec")


# ------------------------------------------------------------------------------------------------ weights


def test_2d_weights_keep_names_and_values(models, ref2d):
    ref = ref2d.state_dict()
    for mode, model in models.items():
        inner = {k[len("unet."):]: v for k, v in model.state_dict().items() if k.startswith("unet.")}
        assert inner.keys() == ref.keys(), mode
        assert all(torch.equal(inner[k], ref[k]) for k in ref), mode
        new = set(model.new_parameter_names())
        assert new and all(not n.startswith("unet.") for n in new)
    # AppearNet is a copy of conv_in, time embedding, down blocks and mid block
    appear = models["add_encdec_spade"].appearnet.state_dict()
    for key, value in appear.items():
        assert torch.equal(value, ref[key]), key
    assert {k.split(".")[0] for k in appear} == {"conv_in", "time_embedding", "down_blocks", "mid_block"}
    assert models["concat"].appearnet is None


def test_injection_points_per_mode(models):
    # tiny layout: 4 skips (conv_in, down0 resnet, down0 downsampler, down1 resnet) + mid; 2 encoder ResNets
    counts = {mode: model.num_injection_points for mode, model in models.items()}
    assert counts == {"concat": 1, "add_dec": 5, "add_encdec": 7, "add_encdec_spade": 7}
    assert models["concat"].injection_points == ["conv_in"]
    assert "enc_down_blocks_0_resnets_0" in models["add_encdec"].injection_points
    assert "enc_down_blocks_0_resnets_0" not in models["add_dec"].injection_points


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("mode", ["concat", "add_encdec_spade"])
def test_zero_initialised_branches_get_gradients(models, mode):
    model = copy.deepcopy(models[mode])
    x = inputs()
    target = torch.randn_like(x["sample"])
    F.mse_loss(model(**x).sample, target).backward()
    zero = zero_init_params(model)
    n_temporal = len(model.temporal_convs) + len(model.temporal_attentions)
    assert len(zero) == n_temporal + (1 if mode == "concat" else 3 * len(model.injections))
    for name, p in zero.items():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients(models):
    plain, ckpt = copy.deepcopy(models["add_encdec_spade"]), copy.deepcopy(models["add_encdec_spade"])
    perturb(plain, 0.05), perturb(ckpt, 0.05)
    calls = []

    def checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    ckpt.enable_gradient_checkpointing(checkpoint)
    x = inputs()
    for m in (plain, ckpt):
        m.train()
        m(**x).sample.square().mean().backward()
    assert {"ResnetBlock2D", "TemporalConv", "TemporalAttention", "BasicTransformerBlock"} <= set(calls)
    assert "AppearanceAttention" not in calls  # off in these models; checkpointed when on (test below)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


@torch.no_grad()
def test_frames_mix_only_once_temporal_layers_learn(models):
    x = inputs()
    changed = {**x, "sample": x["sample"].clone()}
    changed["sample"][:, :, 0] += 1.0

    def others_moved(model) -> float:
        return (model(**changed).sample - model(**x).sample)[:, :, 1:].abs().max().item()

    fresh = models["add_encdec_spade"]
    assert others_moved(fresh) <= 1e-6
    for kind in ("temporal_convs", "temporal_attentions"):
        model = copy.deepcopy(fresh)
        perturb(getattr(model, kind))
        assert others_moved(model) > 1e-3, kind


def test_group_norm_3d_statistics_span_frames():
    g = torch.Generator().manual_seed(0)
    # frames with very different scales and offsets: per-frame statistics would hide that
    x = torch.randn(2, 8, 3, 4, 4, generator=g) * torch.tensor([1.0, 5.0, 0.2]).view(1, 1, 3, 1, 1)
    x = x + torch.tensor([0.0, 3.0, -2.0]).view(1, 1, 3, 1, 1)
    normed = group_norm_3d(x, num_groups=2)
    assert torch.allclose(normed, F.group_norm(x, 2, eps=1e-6), atol=1e-5)  # torch: over C/G x F x H x W
    per_frame = rearrange(F.group_norm(rearrange(x, "b c f h w -> (b f) c h w"), 2, eps=1e-6),
                          "(b f) c h w -> b c f h w", f=3)
    assert (normed - per_frame).abs().max() > 0.5

    # SPADE uses these statistics: o = mu + sigma * ((gamma + 1) * h_bar + beta) = h + gamma (h - mu) + sigma beta
    spade = SpadeModulation(8, 8, num_groups=2)
    perturb(spade, 0.3)
    h, feat = rearrange(x, "b c f h w -> (b f) c h w"), torch.randn(6, 8, 4, 4, generator=g)
    with torch.no_grad():
        out = spade(h, feat, num_frames=3)
        gamma, beta = spade.to_gamma(feat), spade.to_beta(feat)

        def stats(groups_over: str, **axes):
            flat = rearrange(h, groups_over, g=2, **axes)
            mu, var = flat.mean(-1), flat.var(-1, unbiased=False)
            return mu, (var + 1e-6).sqrt()

        mu, sigma = stats("(b f) (g c) h w -> b g (c f h w)", f=3)  # 3D: over C/G x F x H x W
        mu, sigma = (rearrange(s.repeat_interleave(4, 1), "b c -> b c 1 1").repeat_interleave(3, 0) for s in (mu, sigma))
        assert torch.allclose(out, mu + sigma * ((gamma + 1) * (h - mu) / sigma + beta), atol=1e-4)
        mu_f, sigma_f = stats("n (g c) h w -> n g (c h w)")  # per frame: must not match
        mu_f, sigma_f = (rearrange(s.repeat_interleave(4, 1), "n c -> n c 1 1") for s in (mu_f, sigma_f))
        assert (out - (mu_f + sigma_f * ((gamma + 1) * (h - mu_f) / sigma_f + beta))).abs().max() > 1e-2


@torch.no_grad()
def test_condition_enters_through_appearnet_or_conv_in(models, ref2d):
    x = inputs()
    other = {**x, "condition": torch.randn_like(x["condition"])}
    # fresh: the condition has no effect
    for mode, model in models.items():
        assert torch.equal(model(**x).sample, model(**other).sample), mode
    # SPADE alone (the additive convs stay at zero) makes the output depend on the condition
    spade = copy.deepcopy(models["add_encdec_spade"])
    for inj in spade.injections.values():
        perturb(inj.spade, 0.1)
        assert inj.add.weight.abs().max() == 0
    assert (spade(**x).sample - spade(**other).sample).abs().max() > 1e-4
    # a key frame given once, .expand()-ed (AppearNet runs once) or materialised: the same output
    key = x["condition"][:, :, 1:2]
    outs = [spade(**{**x, "condition": c}).sample for c in (key, key.expand(-1, -1, FRAMES, -1, -1),
                                                              key.repeat(1, 1, FRAMES, 1, 1))]
    assert (outs[0] - outs[1]).abs().max() <= 1e-6 and (outs[0] - outs[2]).abs().max() <= 1e-5
    # additive decoder injection alone, too
    add_dec = copy.deepcopy(models["add_dec"])
    perturb(add_dec.injections, 0.1)
    assert (add_dec(**x).sample - add_dec(**other).sample).abs().max() > 1e-4

    # concat: exactly a 2D model whose conv_in takes [noisy latent, condition] on channels
    concat = copy.deepcopy(models["concat"])
    perturb(concat.condition_conv_in, 0.1)
    wide = UNet2DConditionModel.from_config({**ref2d.config, "in_channels": 2 * C})
    state = ref2d.state_dict()
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], concat.condition_conv_in.weight], dim=1)
    wide.load_state_dict(state)
    out = concat(**x).sample
    ref = torch.stack([wide(torch.cat([x["sample"][:, :, f], x["condition"][:, :, f]], 1), x["timestep"],
                            x["encoder_hidden_states"]).sample for f in range(FRAMES)], dim=2)
    assert (out - ref).abs().max().item() <= TOL
    assert (out - concat(**other).sample).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------ save/load, optimiser


@pytest.mark.parametrize("mode", ["concat", "add_encdec_spade"])
def test_save_load_round_trip(models, tmp_path, mode):
    model = copy.deepcopy(models[mode])
    perturb(model, 0.05)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VideoUNet.from_pretrained(tmp_path).eval()
    assert loaded.config.injection == mode
    x = inputs()
    with torch.no_grad():
        assert torch.equal(model(**x, encoder_attention_mask=MASK).sample,
                           loaded(**x, encoder_attention_mask=MASK).sample)


def test_parameter_groups_cover_every_trainable_parameter_once(models):
    model = copy.deepcopy(models["add_encdec_spade"])
    model.unet.conv_out.bias.requires_grad_(False)
    groups = model.parameter_groups(2e-5, spatial_lr_scale=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert lr[id(p)] == pytest.approx(2e-6 if name.startswith("unet.") else 2e-5), name
    temporal = set(model.temporal_parameter_names())
    assert temporal and temporal < set(model.new_parameter_names())
    assert all(n.startswith(("temporal_convs.", "temporal_attentions.")) for n in temporal)
    torch.optim.AdamW(groups)  # valid AdamW groups


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_raise_one_line_errors(models, unet_dir):
    model, x = models["add_encdec_spade"], inputs()
    with pytest.raises(MicroCinemaError, match=r"\(B, C, F, H, W\)"):
        model(**{**x, "sample": x["sample"][:, :, 0]})
    with pytest.raises(MicroCinemaError, match="condition must be"):
        model(**{**x, "condition": x["condition"][..., :4]})
    with pytest.raises(MicroCinemaError, match="condition must be"):
        model(**{**x, "condition": x["condition"][:, :, :2]})
    with pytest.raises(MicroCinemaError, match="encoder_attention_mask"):
        model(**x, encoder_attention_mask=MASK[:, :3])
    with pytest.raises(MicroCinemaError, match="timestep"):
        model(**{**x, "timestep": torch.tensor([1, 2, 3])})
    with pytest.raises(MicroCinemaError, match="allowed: concat, add_dec, add_encdec, add_encdec_spade"):
        VideoUNet.from_pretrained_2d(unet_dir, injection="spade")
    with pytest.raises(MicroCinemaError, match="allowed: appearance_attention, condition_channels, frame_text_modulation, frame_text_shift, injection"):
        VideoUNet.from_pretrained_2d(unet_dir, injections="add_dec")
    with pytest.raises(MicroCinemaError, match="cannot load a 2D U-Net"):
        VideoUNet.from_pretrained_2d(unet_dir / "nowhere")


# ------------------------------------------------------------------------------------------------ structure


def test_one_temporal_layer_per_2d_resnet_and_transformer(models, ref2d):
    """Section 3.1: a temporal conv after every ResNet, a temporal attention after every spatial
    transformer, counted on the reference 2D U-Net itself (not on the video model's own lists)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    resnets = [n for n, m in ref2d.named_modules() if isinstance(m, ResnetBlock2D)]
    transformers = [n for n, m in ref2d.named_modules() if isinstance(m, Transformer2DModel)]
    assert len(resnets) == 8 and len(transformers) == 4  # tiny layout: 2 down + 2 mid + 4 up; 1 + 1 + 2
    for mode, model in models.items():
        assert len(model.temporal_convs) == len(resnets), mode
        assert len(model.temporal_attentions) == len(transformers), mode
        # one for one: each temporal layer is keyed by the 2D layer it follows
        assert set(model.temporal_convs) == {n.replace(".", "_") for n in resnets}, mode
        assert set(model.temporal_attentions) == {n.replace(".", "_") for n in transformers}, mode
        # and the AppearNet copy's ResNets/transformers get none (AppearNet is frame by frame)
        inner = [n for n, m in model.named_modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]
        assert len([n for n in inner if n.startswith("unet.")]) == len(resnets) + len(transformers), mode


@pytest.fixture(scope="module")
def deep_unet() -> UNet2DConditionModel:
    """An SD-like tiny U-Net: 3 levels (2 cross-attention + 1 plain), 2 layers per block (SD has 4 levels, 2)."""
    return tiny_unet2d(seed=4, block_out_channels=(8, 16, 16), layers_per_block=2)


@pytest.mark.parametrize("mode", INJECTION_MODES)
@torch.no_grad()
def test_fresh_model_is_the_2d_model_with_two_layers_per_block_and_three_levels(deep_unet, mode):
    cfg = deep_unet.config
    assert cfg.layers_per_block == 2 and len(cfg.down_block_types) == 3
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    model = VideoUNet.from_pretrained_2d(deep_unet, injection=mode).eval()
    # skips: conv_in + 2 per level x 3 + 2 downsamplers = 9, + mid; encoder: 2 ResNets x 3 levels
    expected_points = {"concat": 1, "add_dec": 10, "add_encdec": 16, "add_encdec_spade": 16}[mode]
    assert model.num_injection_points == expected_points
    for frames in (FRAMES, 1):
        x = inputs(frames, seed=1)
        for mask in (None, MASK):
            diff = (model(**x, encoder_attention_mask=mask).sample - per_frame_2d(deep_unet, x, mask)).abs().max()
            assert diff.item() <= TOL, (mode, frames, mask is not None, diff.item())
    x = inputs(h=7, w=9)  # odd latent sizes: the upsamplers must follow the skips' sizes at two levels
    out = model(**{**x, "condition": x["condition"][:, :, :1]}).sample
    assert (out - per_frame_2d(deep_unet, x)).abs().max().item() <= TOL


# ------------------------------------------------------------------------------------------------ encoder injection


@torch.no_grad()
def test_encoder_injection_alone_makes_the_output_depend_on_the_condition(models):
    fresh = models["add_encdec"]
    enc = [k for k in fresh.injections if k.startswith("enc_")]
    dec = [k for k in fresh.injections if not k.startswith("enc_")]
    assert enc == ["enc_down_blocks_0_resnets_0", "enc_down_blocks_1_resnets_0"] and dec
    assert all(fresh.injections[k].spade is None for k in fresh.injections)  # add_encdec: additive only
    x = inputs()
    other = {**x, "condition": torch.randn_like(x["condition"])}
    # zero-initialised encoder and decoder injections: the condition has no effect
    assert torch.equal(fresh(**x).sample, fresh(**other).sample)

    model = copy.deepcopy(fresh)
    for k in enc:
        perturb(model.injections[k], 0.1)
    named = dict(model.named_parameters())
    assert all(named[n].abs().max() == 0 for n in named if n.startswith("injections.dec_") and n.endswith("weight"))
    assert all(named[n].abs().max() > 0 for n in named if n.startswith("injections.enc_") and n.endswith("weight"))
    out, out_other = model(**x).sample, model(**other).sample
    assert (out - out_other).abs().max() > 1e-4
    # ... and no condition at all is the unconditional 2D path, untouched by the encoder injection
    assert torch.equal(model(**{**x, "condition": None}).sample, fresh(**{**x, "condition": None}).sample)


@torch.no_grad()
def test_encoder_injection_gets_appearnet_feature_of_the_same_resnet(deep_unet):
    """Each ``enc_down_blocks_i_resnets_j`` adds AppearNet's output of its own copy of that ResNet (+ attention):
    skip feature ``1 + sum(layers + downsamplers of earlier levels) + j``. With channels (8, 16, 16) an
    off-by-one would still have matching shapes, so check which feature arrives."""
    model = VideoUNet.from_pretrained_2d(deep_unet, injection="add_encdec").eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [inj.register_forward_hook(lambda m, args, out, k=k: seen.__setitem__(k, args[1]))
             for k, inj in model.injections.items() if k.startswith("enc_")]
    appear: list = []
    hooks.append(model.appearnet.register_forward_hook(lambda m, args, out: appear.append(out)))
    try:
        model(**inputs())
    finally:
        for h in hooks:
            h.remove()
    skips = appear[0].broadcast(FRAMES).skip_features
    expected = {"enc_down_blocks_0_resnets_0": 1, "enc_down_blocks_0_resnets_1": 2,  # 3: downsampler
                "enc_down_blocks_1_resnets_0": 4, "enc_down_blocks_1_resnets_1": 5,  # 6: downsampler
                "enc_down_blocks_2_resnets_0": 7, "enc_down_blocks_2_resnets_1": 8}
    assert set(seen) == set(expected)
    for k, index in expected.items():
        assert torch.equal(seen[k], skips[index]), k


# ------------------------------------------------------------------------------------- pooled prompt


@torch.no_grad()
def test_pooled_prompt_ignores_padding_tokens(tmp_path, models):
    from microcinema.models.unet3d import pool_text
    from microcinema.systems.microcinema.task import build_model

    x = inputs()
    padded = x["encoder_hidden_states"].clone()
    padded[0, 3:] += 5.0
    torch.testing.assert_close(pool_text(padded, MASK)[0], pool_text(x["encoder_hidden_states"], MASK)[0])
    assert not torch.allclose(pool_text(padded, None)[0], pool_text(x["encoder_hidden_states"], None)[0])
    models["add_encdec_spade"].save_pretrained(tmp_path / "trained")  # other settings than a trained model's
    with pytest.raises(MicroCinemaError, match="other settings"):
        build_model({"init_from": str(tmp_path / "trained"), "model": {"injection": "concat"}})


# ------------------------------------------------------------------------ frame text modulation (extension)


@torch.no_grad()
def test_frame_text_modulation_starts_as_identity_then_couples_prompt_and_frame_offset(models, ref2d, tmp_path):
    from microcinema.systems.microcinema.task import build_model, grow_model
    from microcinema.models.layers import frame_position_encoding

    trained = copy.deepcopy(models["add_encdec_spade"])
    x = inputs()
    grown = grow_model(trained, frame_text_modulation=True).eval()
    assert set(grown.frame_text_modulations) == set(grown.temporal_convs)  # one after every temporal conv
    assert (grown(**x).sample - trained(**x).sample).abs().max().item() <= TOL  # zero-initialised: same model
    fresh = VideoUNet.from_pretrained_2d(ref2d, frame_text_modulation=True).eval()
    assert (fresh(**x, encoder_attention_mask=MASK).sample - per_frame_2d(ref2d, x, MASK)).abs().max().item() <= TOL

    # one layer, trained (perturbed): the scale depends on the prompt and on the frame's place, jointly
    layer = copy.deepcopy(next(iter(grown.frame_text_modulations.values())))
    perturb(layer.out, seed=6)
    channels = layer.out.out_features // 2
    h = torch.ones(2 * 5, channels, 2, 2)  # 2 samples x 5 frames of constant features
    text = torch.randn(2, layer.text_in.in_features, generator=torch.Generator().manual_seed(7))
    out = rearrange(layer(h, text, 5), "(b f) c h w -> b f c h w", f=5)
    assert (out[:, 0] - out[:, 4]).abs().max() > 1e-3  # frames before and after the key frame differ
    assert (out[0] - out[1]).abs().max() > 1e-3  # so do prompts
    # offsets are from the centre frame: the key frame of 5 frames and a single image get the same encoding
    pe = frame_position_encoding(5, 8, torch.device("cpu"), torch.float32, centred=True)
    torch.testing.assert_close(pe[2], frame_position_encoding(1, 8, torch.device("cpu"), torch.float32)[0])
    assert not torch.allclose(pe[1], pe[3])  # one frame before and one after the key frame differ
    # ... and not additively: the product of prompt and place is there (a separable map would have 0 here)
    interaction = out[0, 0] - out[0, 4] - out[1, 0] + out[1, 4]
    assert interaction.abs().max() > 1e-3

    perturb(grown.frame_text_modulations, seed=8)  # the whole model: the prompt now scales the features
    other_text = {**x, "encoder_hidden_states": x["encoder_hidden_states"].flip(0)}
    delta_grown = (grown(**other_text).sample - grown(**x).sample).abs().max().item()
    delta_trained = (trained(**other_text).sample - trained(**x).sample).abs().max().item()
    assert abs(delta_grown - delta_trained) > 1e-3

    trained.save_pretrained(tmp_path / "trained")  # continued training adds the layers: build_model
    model = build_model({"init_from": str(tmp_path / "trained"), "model": {"frame_text_modulation": True}})
    assert model.config.frame_text_modulation and (model(**x).sample - trained(**x).sample).abs().max().item() <= TOL
    grown.save_pretrained(tmp_path / "grown")
    torch.testing.assert_close(VideoUNet.from_pretrained(tmp_path / "grown").eval()(**x).sample, grown(**x).sample)


# ------------------------------------------------------------------------------ frame text shift (extension)


def test_shift_features_translates_each_channel_by_its_velocity_in_pixels():
    from microcinema.models.extensions import shift_features

    x = torch.zeros(1, 2, 8, 8)
    x[0, :, 3, 3] = 1.0
    out = shift_features(x, torch.tensor([[[2.0, -1.0], [0.0, 0.0]]]))  # channel 0: 2 right, 1 up; channel 1 stays
    assert out[0, 0].nonzero().tolist() == [[2, 5]] and out[0, 0, 2, 5] == pytest.approx(1.0)
    torch.testing.assert_close(out[0, 1], x[0, 1])
    half = shift_features(x, torch.tensor([[[0.5, 0.0], [0.0, 0.5]]]))  # half a pixel: bilinear, mass kept
    assert half[0, 0, 3, 3] == pytest.approx(0.5) and half[0, 0, 3, 4] == pytest.approx(0.5)
    assert half[0, 1, 4, 3] == pytest.approx(0.5) and half.sum().item() == pytest.approx(2.0)
    smooth = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    assert (shift_features(smooth, torch.zeros(3, 4, 2)) - smooth).abs().max().item() <= TOL  # v = 0: identity

    # the point of the layer: at v = 0 the loss gradient says which way the content moved, with its sign
    blob = torch.exp(-((torch.arange(8.0)[None] - 3.0) ** 2 + (torch.arange(8.0)[:, None] - 4.0) ** 2) / 2)[None, None]
    for dx, dy in [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)]:
        target = shift_features(blob, torch.tensor([[[dx, dy]]]))
        velocity = torch.zeros(1, 1, 2, requires_grad=True)
        ((shift_features(blob, velocity) - target) ** 2).sum().backward()
        step = -velocity.grad[0, 0]  # descent moves the velocity along the motion, with its sign (bilinear is
        # one-sided at v = 0 exactly, hence a smaller component across)
        along, across = (0, 1) if dx else (1, 0)
        assert step[along].item() * (dx or dy) > 0 and abs(step[along].item()) > 2 * abs(step[across].item())


@torch.no_grad()
def test_frame_text_shift_starts_as_identity_then_moves_frames_by_prompt_and_offset(models, ref2d, tmp_path):
    from microcinema.systems.microcinema.task import build_model, grow_model

    trained = copy.deepcopy(models["add_encdec_spade"])
    x = inputs()
    grown = grow_model(trained, frame_text_shift=True).eval()
    assert set(grown.frame_text_shifts) == set(grown.temporal_convs)  # one after every temporal conv
    assert (grown(**x).sample - trained(**x).sample).abs().max().item() <= TOL  # zero-initialised: same model
    fresh = VideoUNet.from_pretrained_2d(ref2d, frame_text_shift=True, frame_text_modulation=True).eval()
    assert (fresh(**x, encoder_attention_mask=MASK).sample - per_frame_2d(ref2d, x, MASK)).abs().max().item() <= TOL

    # one layer, trained (perturbed): frames are moved, by an amount that depends on prompt and place jointly
    layer = copy.deepcopy(next(iter(grown.frame_text_shifts.values())))
    perturb(layer.out, seed=6)
    channels = layer.out.out_features // 2
    h = torch.randn(1, channels, 6, 6, generator=torch.Generator().manual_seed(1)).repeat(2 * 5, 1, 1, 1)
    text = torch.randn(2, layer.text_in.in_features, generator=torch.Generator().manual_seed(7))
    out = rearrange(layer(h, text, 5), "(b f) c h w -> b f c h w", f=5)
    assert (out[:, 0] - out[:, 4]).abs().max() > 1e-3  # frames before and after the key frame differ
    assert (out[0] - out[1]).abs().max() > 1e-3  # so do prompts
    assert (out[0, 0] - out[0, 4] - out[1, 0] + out[1, 4]).abs().max() > 1e-3  # not separable
    flat = torch.full((2 * 5, channels, 6, 6), 0.7)  # it only moves content: a constant map stays as it is
    torch.testing.assert_close(layer(flat, text, 5), flat)

    perturb(grown.frame_text_shifts, scale=0.05, seed=8)  # the whole model: the prompt now moves the features
    other_text = {**x, "encoder_hidden_states": x["encoder_hidden_states"].flip(0)}
    delta_grown = (grown(**other_text).sample - grown(**x).sample).abs().max().item()
    delta_trained = (trained(**other_text).sample - trained(**x).sample).abs().max().item()
    assert abs(delta_grown - delta_trained) > 1e-3

    trained.save_pretrained(tmp_path / "trained")  # continued training adds the layers: build_model
    model = build_model({"init_from": str(tmp_path / "trained"),
                         "model": {"frame_text_modulation": True, "frame_text_shift": True}})
    assert model.config.frame_text_shift and model.config.frame_text_modulation
    assert (model(**x).sample - trained(**x).sample).abs().max().item() <= TOL
    grown.save_pretrained(tmp_path / "grown")
    torch.testing.assert_close(VideoUNet.from_pretrained(tmp_path / "grown").eval()(**x).sample, grown(**x).sample)


# ---------------------------------------------------------------------------- appearance attention (extension)


@torch.no_grad()
def test_appearance_attention_starts_as_identity_then_fetches_the_key_frame_from_anywhere(models, ref2d, unet_dir,
                                                                                          tmp_path):
    from microcinema.models.appearnet import AppearNetOutput
    from microcinema.systems.microcinema.task import build_model, grow_model

    trained = copy.deepcopy(models["add_encdec_spade"])
    perturb(trained.temporal_attentions, seed=3)
    x = {**inputs(), "condition": inputs()["condition"][:, :, :1]}  # one key frame, as the base model gets it
    grown = grow_model(trained, appearance_attention=True).eval()
    assert set(grown.appearance_attentions) == set(grown.temporal_attentions)  # one after every temporal attention
    assert (grown(**x).sample - trained(**x).sample).abs().max().item() <= TOL  # zero-initialised: same model
    fresh = VideoUNet.from_pretrained_2d(ref2d, appearance_attention=True).eval()
    assert (fresh(**x, encoder_attention_mask=MASK).sample - per_frame_2d(ref2d, x, MASK)).abs().max().item() <= TOL
    # each attends to the AppearNet feature of its own level: the mid block to the mid feature
    sources = grown._appearance_sources
    assert sources["mid_block_attentions_0"] is None and sources["down_blocks_0_attentions_0"] == 1
    assert sources["down_blocks_0_attentions_0"] == sources["up_blocks_1_attentions_1"]  # same level (8 x 8 here)

    # one layer, trained (perturbed): a frame's output depends on the key frame at a pixel far from it
    layer = copy.deepcopy(next(iter(grown.appearance_attentions.values())))
    perturb(layer, seed=6)
    channels = layer.norm.normalized_shape[0]
    g = torch.Generator().manual_seed(1)
    h, feature = torch.randn(2 * 3, channels, 6, 6, generator=g), torch.randn(2, channels, 6, 6, generator=g)
    moved = feature.clone()
    moved[:, :, 0, 0] = torch.randn(2, channels, generator=g)  # the key frame changes in one corner only
    delta = (layer(h, moved, 3) - layer(h, feature, 3))[:, :, 5, 5]  # ... the opposite corner of every frame sees it
    assert delta.abs().amin(dim=1).gt(0).all() and delta.abs().max() > 1e-3

    perturb(grown.appearance_attentions, scale=0.05, seed=8)  # the whole model: the key frame now enters it by
    other = {**x, "condition": x["condition"].flip(-1)}      # attention as well as by the injections
    delta_grown = (grown(**other).sample - grown(**x).sample).abs().max().item()
    delta_trained = (trained(**other).sample - trained(**x).sample).abs().max().item()
    assert abs(delta_grown - delta_trained) > 1e-3
    # a condition of several frames: the centre one counts as the key frame (the base model's convention)
    out = AppearNetOutput((torch.arange(6.0).view(6, 1, 1, 1),), None, 3).key_frame()
    assert out.num_frames == 1 and out.skip_features[0].flatten().tolist() == [1.0, 4.0]
    assert grown(**inputs()).sample.shape == x["sample"].shape

    trained.save_pretrained(tmp_path / "trained")  # continued training adds the layers: build_model
    model = build_model({"init_from": str(tmp_path / "trained"), "model": {"appearance_attention": True}})
    assert model.config.appearance_attention and (model(**x).sample - trained(**x).sample).abs().max().item() <= TOL
    grown.save_pretrained(tmp_path / "grown")
    torch.testing.assert_close(VideoUNet.from_pretrained(tmp_path / "grown").eval()(**x).sample, grown(**x).sample)
    # other layouts: three levels, two layers per block, an odd size (the up blocks' sources mirror the down ones)
    deep = VideoUNet.from_pretrained_2d(tiny_unet2d(seed=2, block_out_channels=(8, 16, 16), layers_per_block=2),
                                        appearance_attention=True).eval()
    perturb(deep.appearance_attentions, scale=0.05, seed=9)
    assert deep(**inputs(h=10, w=6)).sample.shape[-2:] == (10, 6)  # 10 x 6 -> 5 x 3 -> 3 x 2 and back
    down = {k: v for k, v in deep._appearance_sources.items() if k.startswith("down")}
    assert down == {"down_blocks_0_attentions_0": 1, "down_blocks_0_attentions_1": 2,
                    "down_blocks_1_attentions_0": 4, "down_blocks_1_attentions_1": 5}
    assert deep._appearance_sources["up_blocks_2_attentions_2"] == 2  # the top level: its last ResNet's skip
    calls = []
    deep.enable_gradient_checkpointing(lambda module, *args: calls.append(type(module).__name__) or module(*args))
    with torch.enable_grad():
        deep.train()(**inputs())
    assert "AppearanceAttention" in calls
    with pytest.raises(MicroCinemaError, match="appearance_attention needs AppearNet"):
        VideoUNet.from_pretrained_2d(unet_dir, injection="concat", appearance_attention=True)
