"""ART-V's network and its pure pieces (microcinema/systems/artv): the converted image U-Net at init, masked
diffusion's exact static noise (section 3.2), noise augmentation (3.3), anchored conditioning and condition
dropout (3.4), the batched compositional guidance (appendix A, eq. 8), save/load, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from microcinema.core.diffusion import VPDenoiser, add_noise, alphas_cumprod_of
from microcinema.core.errors import MicroCinemaError
from microcinema.core.guidance import compositional_guidance
from microcinema.systems.artv.conditioning import (gather_frames, guidance_branches, guided_eps_model,
                                                   make_conditions, null_conditions, sample_condition_dropout,
                                                   sample_frames)
from microcinema.systems.artv.masked_diffusion import alphas_cumprod_at, combine, static_noise, x0_from_eps
from microcinema.systems.artv.model import ARTVModel
from microcinema.systems.artv.noise_augmentation import augment, inference_levels, sample_levels
from microcinema.testing import tiny_unet2d

B, C, H, W, D = 3, 4, 8, 8, 32


def tiny_artv(sd21_layout: bool = True, seed: int = 0, **options) -> tuple[ARTVModel, torch.nn.Module]:
    """A tiny ART-V model and a copy of the image U-Net it was converted from."""
    unet = tiny_unet2d(seed=seed, sd21_layout=sd21_layout, cross_attention_dim=D, sample_size=H)
    image_unet = copy.deepcopy(unet)
    torch.manual_seed(seed)
    options = {"mask_block_out_channels": [8, 8], "mask_layers_per_block": 1, **options}
    return ARTVModel.from_unet(unet, **options).eval(), image_unet.eval()


def randomise_new_parts(model: ARTVModel, seed: int = 1) -> ARTVModel:
    """Give every zero-initialised part random weights (as after training), so every condition matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.new_parameter_names():
            p = dict(model.named_parameters())[name]
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def inputs(seed: int = 0, b: int = B):
    g = torch.Generator().manual_seed(seed)
    return dict(y=torch.randn(b, C, H, W, generator=g), t=torch.tensor([10, 500, 999][:b] + [300] * (b - 3)),
                text=torch.randn(b, 5, D, generator=g), refs=torch.randn(b, 2, C, H, W, generator=g),
                anchor=torch.randn(b, C, H, W, generator=g))


# ------------------------------------------------------------------------------------------ the model at init


@pytest.mark.parametrize("sd21_layout", [True, False])
@torch.no_grad()
def test_converted_model_is_the_image_unet_at_init(sd21_layout):
    """Adapter (zero convs) and level embedding (zero last linear) add exactly zero; a dropped anchor is masked out."""
    model, image_unet = tiny_artv(sd21_layout)
    x = inputs()
    expected = image_unet(x["y"], x["t"], x["text"]).sample
    assert model.unet.config.class_embed_type == "timestep"
    # no references, no anchor: exactly the image U-Net (the mask is 0 without references)
    out = model(x["y"], x["t"], x["text"], ref_level=torch.tensor([0, 200, 550]))
    assert torch.equal(out.eps_dynamic, expected) and torch.equal(out.sample, expected)
    assert torch.equal(out.mask, torch.zeros(B, 1, H, W))
    # references and a level: the adapter and the level embedding add zero
    out = model(x["y"], x["t"], x["text"], refs=x["refs"], ref_level=torch.tensor([0, 200, 550]))
    assert torch.equal(out.eps_dynamic, expected)
    # an anchor that is dropped: its tokens are masked out of the attention (equal up to float error)
    out = model(x["y"], x["t"], x["text"], refs=x["refs"], anchor=x["anchor"], ref_level=300,
                anchor_keep=torch.zeros(B, dtype=torch.bool))
    torch.testing.assert_close(out.eps_dynamic, expected, rtol=0, atol=1e-5)
    # an MiniLM-style text mask is honoured together with the anchor's
    mask = torch.tensor([[1, 1, 1, 0, 0]] * B)
    expected_masked = image_unet(x["y"], x["t"], x["text"], encoder_attention_mask=mask).sample
    out = model(x["y"], x["t"], x["text"], anchor=x["anchor"], encoder_attention_mask=mask,
                anchor_keep=torch.zeros(B, dtype=torch.bool))
    torch.testing.assert_close(out.eps_dynamic, expected_masked, rtol=0, atol=1e-5)


@torch.no_grad()
def test_anchor_tokens_at_init_change_the_softmax_but_not_by_content():
    """Exact equality with anchor tokens in the softmax is impossible (zero tokens still take weight); what holds
    at init is that the anchor's content has no effect; once the patch embedding is trained, it has."""
    model, image_unet = tiny_artv()
    x = inputs()
    expected = image_unet(x["y"], x["t"], x["text"]).sample
    a = model(x["y"], x["t"], x["text"], anchor=x["anchor"], anchor_noise=torch.zeros_like(x["anchor"])).eps_dynamic
    b = model(x["y"], x["t"], x["text"], anchor=-3 * x["anchor"], anchor_noise=torch.zeros_like(x["anchor"])).eps_dynamic
    assert torch.equal(a, b)
    assert not torch.allclose(a, expected, atol=1e-5)  # the denominators changed: documented, not hidden
    randomise_new_parts(model)
    c = model(x["y"], x["t"], x["text"], anchor=-3 * x["anchor"], anchor_noise=torch.zeros_like(x["anchor"])).eps_dynamic
    assert not torch.allclose(a, c, atol=1e-4)


def test_every_new_part_gets_gradient_and_conditions_matter():
    model, _ = tiny_artv()
    model.train()
    x = inputs()
    out_noise = torch.randn_like(x["refs"]), torch.randn_like(x["anchor"])
    out = model(x["y"], x["t"], x["text"], refs=x["refs"], anchor=x["anchor"], ref_level=torch.tensor([5, 100, 550]),
                ref_noise=out_noise[0], anchor_noise=out_noise[1])
    out.sample.square().mean().backward()
    for prefix in ("adapter_zero_convs.", "anchor_embed.proj.", "unet.class_embedding.linear_2.", "mask_net.conv_out."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()  # same gradients, less memory (the U-Net's and mask network's blocks)
    model(x["y"], x["t"], x["text"], refs=x["refs"], anchor=x["anchor"], ref_level=torch.tensor([5, 100, 550]),
          ref_noise=out_noise[0], anchor_noise=out_noise[1]).sample.square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    model.disable_gradient_checkpointing()
    model.zero_grad()
    randomise_new_parts(model.eval())
    with torch.no_grad():
        base = model(x["y"], x["t"], x["text"], refs=x["refs"], anchor=x["anchor"], ref_level=200,
                     ref_noise=torch.zeros_like(x["refs"]), anchor_noise=torch.zeros_like(x["anchor"])).eps_dynamic
        for change in ({"refs": x["refs"].flip(0)}, {"anchor": x["anchor"].flip(0)}, {"ref_level": 0}):
            kwargs = dict(refs=x["refs"], anchor=x["anchor"], ref_level=200)
            kwargs.update(change)
            other = model(x["y"], x["t"], x["text"], ref_noise=torch.zeros_like(x["refs"]),
                          anchor_noise=torch.zeros_like(x["anchor"]), **kwargs).eps_dynamic
            assert not torch.allclose(base, other, atol=1e-5), change


# ------------------------------------------------------------------------------------------- masked diffusion


def test_static_noise_is_the_exact_formula():
    x = inputs()
    abar = alphas_cumprod_of(None)[x["t"]]
    expected = (x["y"].double() - abar.sqrt().view(-1, 1, 1, 1) * x["refs"][:, 0].double()) / (1 - abar).sqrt().view(
        -1, 1, 1, 1)
    torch.testing.assert_close(static_noise(x["y"], x["refs"][:, 0], abar), expected.float())
    # the reference noised with eps has static noise eps
    eps = torch.randn_like(x["y"])
    y_t = add_noise(x["refs"][:, 0], eps, x["t"])
    torch.testing.assert_close(static_noise(y_t, x["refs"][:, 0], abar), eps, rtol=0, atol=1e-4)
    m = torch.rand(B, 1, H, W)
    a, b = torch.randn_like(eps), torch.randn_like(eps)
    torch.testing.assert_close(combine(m, a, b), m * a + (1 - m) * b)
    assert torch.equal(combine(torch.ones_like(m), a, b), a) and torch.equal(combine(torch.zeros_like(m), a, b), b)


def test_mask_one_reproduces_the_reference_through_the_x0_formula():
    """m = 1 -> eps = eps_static -> x0_hat = y_ref, at integer and fractional (sampler) timesteps."""
    g = torch.Generator().manual_seed(3)
    y_ref, y_t = torch.randn(B, C, H, W, generator=g).double(), torch.randn(B, C, H, W, generator=g).double()
    for t in (torch.tensor([0, 500, 999]), torch.tensor([0.25, 311.7, 998.5])):
        abar = alphas_cumprod_at(t)
        x0 = x0_from_eps(y_t, static_noise(y_t, y_ref, abar), abar)
        torch.testing.assert_close(x0, y_ref, rtol=0, atol=1e-9)
    # through the sampler's interface: the VE denoiser of an eps model that returns the static noise
    denoiser = VPDenoiser(lambda z, t: static_noise(z, y_ref, alphas_cumprod_at(t)))
    for sigma in (0.05, 1.3, 14.0):
        x = y_ref + sigma * torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
        torch.testing.assert_close(denoiser(x, sigma), y_ref, rtol=0, atol=1e-6)
    # and through the model, with the mask network saturated at 1
    model, _ = tiny_artv()
    torch.nn.init.constant_(model.mask_net.conv_out.bias, 200.0)
    xs = inputs()
    with torch.no_grad():
        out = model(xs["y"], xs["t"], xs["text"], refs=xs["refs"], anchor=xs["anchor"], ref_level=200)
    assert torch.equal(out.mask, torch.ones(B, 1, H, W))
    x0 = x0_from_eps(xs["y"], out.sample, alphas_cumprod_at(xs["t"]))
    torch.testing.assert_close(x0, xs["refs"][:, 0], rtol=0, atol=1e-4)


def test_alphas_cumprod_at_matches_the_schedule_and_the_samplers():
    ac = alphas_cumprod_of(None)
    steps = torch.tensor([0, 1, 500, 999])
    assert torch.equal(alphas_cumprod_at(steps), ac[steps])
    denoiser = VPDenoiser(lambda z, t: z)
    for sigma in (0.1, 2.0, 10.0):
        t = denoiser.sigma_to_t(torch.tensor(sigma, dtype=torch.float64))
        torch.testing.assert_close(alphas_cumprod_at(t), torch.tensor(1 / (1 + sigma**2), dtype=torch.float64))


def test_without_masked_diffusion_the_prediction_is_the_unet_s():
    model, image_unet = tiny_artv(masked_diffusion=False)
    assert model.mask_net is None
    x = inputs()
    with torch.no_grad():
        out = model(x["y"], x["t"], x["text"], refs=x["refs"], ref_level=200)
        assert out.mask is None and torch.equal(out.sample, out.eps_dynamic)
        assert torch.equal(out.sample, image_unet(x["y"], x["t"], x["text"]).sample)


# ---------------------------------------------------------------------------------------- noise augmentation


def test_noise_levels_are_in_range_and_deterministic():
    levels = sample_levels(20000, torch.Generator().manual_seed(0))
    assert levels.dtype == torch.long and int(levels.min()) == 0 and int(levels.max()) == 550
    assert abs(levels.float().mean().item() - 275) < 5
    again = sample_levels(20000, torch.Generator().manual_seed(0))
    assert torch.equal(levels, again)
    assert not torch.equal(levels, sample_levels(20000, torch.Generator().manual_seed(1)))
    assert sample_levels(100, torch.Generator().manual_seed(0), max_level=3).unique().tolist() == [0, 1, 2, 3]
    assert torch.equal(inference_levels(4), torch.full((4,), 200))
    x, n = torch.randn(4, 2, C, H, W), torch.randn(4, 2, C, H, W)
    lv = torch.tensor([0, 10, 200, 550])
    torch.testing.assert_close(augment(x, lv, n), add_noise(x, n, lv))
    with pytest.raises(MicroCinemaError, match="ref_level must lie in"):
        augment(x, torch.tensor([0, 10, 200, 1000]), n)
    with pytest.raises(MicroCinemaError, match="integer"):
        inference_levels(2, level=2.5)


# ---------------------------------------------------------------------------------------- anchored conditioning


def test_training_frames_references_and_anchor_window():
    choice = sample_frames(16, 20000, torch.Generator().manual_seed(0))
    cur, refs, anc = choice.current, choice.refs, choice.anchor
    assert int(cur.min()) == 1 and int(cur.max()) == 15
    assert torch.equal(refs[:, 0], cur - 1) and torch.equal(refs[:, 1], (cur - 2).clamp_min(0))
    assert bool(((anc < cur) & (anc >= (cur - 10).clamp_min(0))).all())
    late = cur == 15
    assert set(anc[late].tolist()) == set(range(5, 15))  # every frame of the window is drawn
    again = sample_frames(16, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(again.anchor, anc)
    clip = torch.randn(2, C, 6, H, W)
    assert torch.equal(gather_frames(clip, torch.tensor([3, 0])), torch.stack([clip[0, :, 3], clip[1, :, 0]]))
    both = gather_frames(clip, torch.tensor([[2, 1], [0, 0]]))
    assert both.shape == (2, 2, C, H, W) and torch.equal(both[0, 1], clip[0, :, 1])
    with pytest.raises(MicroCinemaError, match="at least 2 frames"):
        sample_frames(1, 4)


def test_turning_clips_train_only_their_captioned_frames():
    lead_in = torch.tensor([0, 1, 5, 14] * 5000)
    choice = sample_frames(16, 20000, torch.Generator().manual_seed(0), lead_in=lead_in)
    for k in (0, 1, 5, 14):
        cur = choice.current[lead_in == k]
        assert int(cur.min()) == max(1, k) and int(cur.max()) == 15  # every captioned frame, no lead-in frame
    assert torch.equal(choice.refs[:, 0], choice.current - 1)  # references may lie in the lead-in
    assert bool((choice.refs[lead_in == 5, 0] == 4).any())
    with pytest.raises(MicroCinemaError, match="lead_in must be"):
        sample_frames(16, 3, lead_in=torch.zeros(2))


def test_condition_dropout_rates_are_independent():
    n = 40000
    keep = sample_condition_dropout(n, torch.Generator().manual_seed(0))
    for name in ("ref", "anchor", "text"):
        assert abs((~keep[name]).float().mean().item() - 0.1) < 0.01, name
    both = (~keep["ref"] & ~keep["anchor"]).float().mean().item()
    assert abs(both - 0.01) < 0.003
    first = sample_condition_dropout(n, torch.Generator().manual_seed(0), p_first_frame=0.2)
    assert abs((~first["ref"] & ~first["anchor"]).float().mean().item() - (0.2 + 0.8 * 0.01)) < 0.01
    assert torch.equal(first["text"], keep["text"])  # same draws: the text mask does not move
    with pytest.raises(MicroCinemaError, match="probability"):
        sample_condition_dropout(4, p_ref=1.5)


# ------------------------------------------------------------------------------------------------- guidance


@torch.no_grad()
def test_four_guidance_branches_in_one_batch_equal_four_forwards():
    model = randomise_new_parts(tiny_artv()[0])
    x = inputs()
    text_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    null_text = (torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.long))  # a shorter empty prompt
    cond = make_conditions(x["text"], x["refs"], x["anchor"], text_mask=text_mask, ref_level=200,
                           generator=torch.Generator().manual_seed(5))
    branches = guidance_branches(cond, null_text)
    assert not bool(branches["ref"]["ref_keep"].any()) and not bool(branches["anchor"]["anchor_keep"].any())
    separate = {k: model(x["y"], x["t"], **c).sample for k, c in branches.items()}
    w = {"ref": 0.25, "anchor": 0.25, "text": 6.5}
    expected = compositional_guidance(separate["all"], {k: (separate[k], w[k]) for k in w})
    calls = []
    model.register_forward_hook(lambda m, a, k, o: calls.append(a[0].shape[0]), with_kwargs=True)
    masks = []
    eps = guided_eps_model(model, cond, null_text, mask_callback=lambda t, m: masks.append((t, m)))(x["y"], x["t"])
    assert calls == [4 * B]  # one batched forward
    assert len(masks) == 1 and torch.equal(masks[0][0], x["t"])
    torch.testing.assert_close(masks[0][1], model(x["y"], x["t"], **branches["all"]).mask, rtol=0, atol=1e-6)
    torch.testing.assert_close(eps, expected, rtol=0, atol=1e-5)
    for k in w:  # each branch differs from e(all): every condition is live in the batch
        assert not torch.allclose(separate[k], separate["all"], atol=1e-4), k
    # the null text really is the empty prompt's (padded with masked zeros), the others keep the prompt
    assert torch.equal(branches["text"]["encoder_hidden_states"][:, :3], null_text[0].expand(B, -1, -1))
    assert torch.equal(branches["text"]["encoder_attention_mask"], torch.tensor([[1, 1, 1, 0, 0]] * B))
    # first frame: no references, no anchor -> only the text branch is evaluated
    calls.clear()
    first = make_conditions(x["text"], text_mask=text_mask)
    eps = guided_eps_model(model, first, null_text)(x["y"], x["t"])
    assert calls == [2 * B]
    no_refs = null_conditions(cond, refs=True, anchor=True)
    torch.testing.assert_close(model(x["y"], x["t"], **no_refs).sample, model(x["y"], x["t"], **first).sample,
                               rtol=0, atol=1e-5)
    # bad weights: one-line errors (also for a branch whose condition is absent), not a float() ValueError
    for bad in ("high", -1.0, float("nan"), None):
        with pytest.raises(MicroCinemaError, match=r"w_ref must be a number >= 0, got"):
            guided_eps_model(model, first, null_text, w_ref=bad)


# ------------------------------------------------------------------------------------------- save, load, SD


def test_save_load_round_trip(tmp_path):
    model = randomise_new_parts(tiny_artv(anchor_patch_size=4)[0])
    model.save_pretrained(tmp_path / "artv")
    loaded = ARTVModel.from_pretrained(tmp_path / "artv").eval()
    assert loaded.config.anchor_patch_size == 4 and loaded.unet.config.class_embed_type == "timestep"
    x = inputs()
    kw = dict(refs=x["refs"], anchor=x["anchor"], ref_level=100, ref_noise=torch.zeros_like(x["refs"]),
              anchor_noise=torch.zeros_like(x["anchor"]))
    with torch.no_grad():
        assert torch.equal(model(x["y"], x["t"], x["text"], **kw).sample, loaded(x["y"], x["t"], x["text"], **kw).sample)


def test_sd21_pipeline_folder_converts_and_runs(tiny_sd_path):
    from diffusers import UNet2DConditionModel

    model = ARTVModel.from_unet(tiny_sd_path).eval()  # a pipeline folder: its unet/
    image_unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet").eval()
    assert model.unet.config.use_linear_projection
    size = image_unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    y, text = torch.randn(2, 4, size, size, generator=g), torch.randn(2, 7, image_unet.config.cross_attention_dim, generator=g)
    refs, anchor = torch.randn(2, 2, 4, size, size, generator=g), torch.randn(2, 4, size, size, generator=g)
    with torch.no_grad():
        out = model(y, torch.tensor([100, 800]), text, refs=refs, anchor=anchor, ref_level=200,
                    anchor_keep=torch.tensor([False, False]))
        expected = image_unet(y, torch.tensor([100, 800]), text).sample
    torch.testing.assert_close(out.eps_dynamic, expected, rtol=0, atol=1e-5)
    assert out.sample.shape == y.shape and torch.isfinite(out.sample).all()


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, message", [
    ({"y": torch.randn(B, 3, H, W)}, "sample must be a latent"),
    ({"refs": torch.randn(B, 3, C, H, W)}, "2 references"),
    ({"refs": torch.randn(B, C, H, W)}, "2 references"),
    ({"refs": torch.randn(B, 2, 3, H, W)}, "to match the sample"),
    ({"anchor": torch.randn(B, 8, H, W)}, "anchor must be a latent"),
    ({"anchor": torch.randn(B, C, 7, 7)}, "multiples of anchor_patch_size"),
    ({"text": torch.randn(B, 5, D + 1)}, "encoder_hidden_states must be"),
])
def test_bad_input_is_a_one_line_error(change, message):
    model, _ = tiny_artv()
    x = {**inputs(), **change}
    with pytest.raises(MicroCinemaError, match=message) as info:
        model(x["y"], x["t"], x["text"], refs=x["refs"], anchor=x["anchor"], ref_level=200)
    assert "\n" not in str(info.value)
    with pytest.raises(MicroCinemaError, match="unknown ARTVModel option"):
        ARTVModel.from_unet(tiny_unet2d(cross_attention_dim=D), num_refs=2)
