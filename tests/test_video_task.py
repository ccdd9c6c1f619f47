"""Stage two's training task in isolation (microcinema/systems/microcinema/task.py): the conditions of the base and the
interpolation models, and what the loss feeds the network (Appearance Noise Prior, section 3.3, eq. 3-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from microcinema.data.latent_cache import LatentCache
from microcinema.core.diffusion import add_noise, make_training_scheduler, random_timesteps
from microcinema.systems.microcinema.task import interpolation_condition, key_frame_condition, make_loss
from microcinema.training.trainer import condition_dropout_mask

B, C, FRAMES, H, W, L, D = 4, 4, 9, 6, 5, 7, 12


def test_key_frame_condition_repeats_the_centre_frame():
    z = torch.randn(2, C, FRAMES, H, W, generator=torch.Generator().manual_seed(0))
    cond = key_frame_condition(z)
    assert cond.shape == z.shape
    for f in range(FRAMES):
        assert torch.equal(cond[:, :, f], z[:, :, 4]), f
    assert not torch.equal(cond[:, :, 0], z[:, :, 0])  # it is not the video itself
    assert torch.equal(key_frame_condition(z, key_index=0)[:, :, 7], z[:, :, 0])


def test_interpolation_condition_is_linear_from_first_to_last():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, C, H, W, generator=g), torch.randn(2, C, H, W, generator=g)
    cond = interpolation_condition(a, b, 5)
    assert cond.shape == (2, C, 5, H, W)
    torch.testing.assert_close(cond[:, :, 0], a, rtol=0, atol=0)
    torch.testing.assert_close(cond[:, :, 4], b, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond[:, :, 2], (a + b) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond[:, :, 1], 0.75 * a + 0.25 * b, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond[:, :, 3], 0.25 * a + 0.75 * b, rtol=0, atol=1e-6)


class RecordingModel(nn.Module):
    """A stand-in denoiser: records its inputs, returns a fixed prediction."""

    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction = prediction
        self.calls: list[dict] = []

    def forward(self, sample, timestep, encoder_hidden_states=None, encoder_attention_mask=None, condition=None):
        self.calls.append(dict(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                               encoder_attention_mask=encoder_attention_mask, condition=condition))
        return type("Output", (), {"sample": self.prediction})()


def fake_cache_and_batch() -> tuple[LatentCache, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, 5:] = 0
    tensors = {
        "latent_mean": torch.randn(B, C, FRAMES, H, W, generator=g),
        "latent_std": torch.rand(B, C, FRAMES, H, W, generator=g) + 0.5,
        "text_states": torch.randn(B, L, D, generator=g).half(),
        "text_mask": mask,
        "uncond_states": torch.randn(1, L, D, generator=g).half(),
        "uncond_mask": torch.tensor([[1, 1, 0, 0, 0, 0, 0]]),
    }
    cache = LatentCache(tensors)
    return cache, {k: tensors[k] for k in LatentCache.PER_ITEM}


@pytest.mark.parametrize("kind", ["video", "interp"])
def test_loss_noises_with_the_appearance_prior_and_regresses_the_same_noise(kind):
    """eps = n + lambda * z_c (eq. 3) corrupts z_0 (eq. 4) and is the target (eq. 5): reproduce n, t and the
    caption dropout from an identically seeded generator (loss_fn draws n, then t, then the dropout mask)."""
    cache, batch = fake_cache_and_batch()
    sf, lam, p_drop, seed = 0.7, 0.5, 0.5, 3
    prediction = torch.randn(B, C, FRAMES, H, W, generator=torch.Generator().manual_seed(4))
    model = RecordingModel(prediction)
    loss = make_loss(kind, cache, sf, lam=lam, condition_dropout=p_drop)(
        model, batch, torch.Generator().manual_seed(seed))
    assert len(model.calls) == 1
    call = model.calls[0]

    g = torch.Generator().manual_seed(seed)
    z0 = batch["latent_mean"] * sf  # latents="mode": the posterior mean, no draw
    n = torch.randn(z0.shape, generator=g)
    t = random_timesteps(B, generator=g)
    drop = condition_dropout_mask(B, p_drop if kind == "video" else 1.0, g)
    if kind == "video":
        z_c = key_frame_condition(z0)
        assert 0 < int(drop.sum()) < B  # this seed exercises both kept and dropped captions
    else:
        z_c = interpolation_condition(z0[:, :, 0], z0[:, :, -1], FRAMES)
        assert bool(drop.all())  # interp: always the empty prompt
    eps = n + lam * z_c
    scheduler = make_training_scheduler()

    assert torch.equal(call["timestep"], t)
    assert torch.equal(call["condition"], z_c)
    torch.testing.assert_close(call["sample"], add_noise(z0, eps, t, scheduler), rtol=0, atol=1e-6)
    # the prior is really in the input: plain noise gives another z_t
    assert (call["sample"] - add_noise(z0, n, t, scheduler)).abs().max() > 1e-2
    torch.testing.assert_close(loss, F.mse_loss(prediction, eps), rtol=1e-6, atol=0)
    assert not torch.allclose(loss, F.mse_loss(prediction, n))
    # dropped captions are the empty prompt's states and mask, the others are the batch's
    states, mask = call["encoder_hidden_states"], call["encoder_attention_mask"]
    for i in range(B):
        want_states = cache.uncond_states[0] if drop[i] else batch["text_states"][i]
        want_mask = cache.uncond_mask[0] if drop[i] else batch["text_mask"][i]
        assert torch.equal(states[i], want_states.float()) and torch.equal(mask[i], want_mask), i


def test_loss_with_lambda_zero_is_plain_diffusion():
    cache, batch = fake_cache_and_batch()
    model = RecordingModel(torch.zeros(B, C, FRAMES, H, W))
    loss = make_loss("video", cache, 1.0, lam=0.0, condition_dropout=0.0)(model, batch,
                                                                          torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    n = torch.randn(batch["latent_mean"].shape, generator=g)
    t = random_timesteps(B, generator=g)
    expected = add_noise(batch["latent_mean"], n, t, make_training_scheduler())
    torch.testing.assert_close(model.calls[0]["sample"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, n.square().mean(), rtol=1e-6, atol=0)


def test_high_noise_timesteps_and_x0_weights():
    from microcinema.core.diffusion import alphas_cumprod_of, high_noise_timesteps, x0_loss_weights

    g = lambda: torch.Generator().manual_seed(6)  # noqa: E731
    assert torch.equal(high_noise_timesteps(64, 0.0, 850, generator=g()), random_timesteps(64, generator=g()))
    t = high_noise_timesteps(4000, 0.5, 850, generator=g())
    assert t.min() >= 0 and t.max() < 1000
    share = float((t >= 850).float().mean())  # 0.5 + 0.5 * 0.15 = 0.575 expected
    assert 0.54 < share < 0.61, share
    assert torch.equal(t, high_noise_timesteps(4000, 0.5, 850, generator=g()))  # seeded
    with pytest.raises(Exception, match="fraction"):
        high_noise_timesteps(4, 1.5, 850)

    steps = torch.tensor([0, 300, 500, 800, 999])
    abar = alphas_cumprod_of(None)[steps]
    w = x0_loss_weights(steps, 5.0)
    torch.testing.assert_close(w, ((1 - abar) / abar).clamp(1, 5).float())
    assert w[0] == 1 and w[-1] == 5 and bool((w[1:] >= w[:-1]).all())  # more weight at more noise, capped
    assert torch.equal(x0_loss_weights(steps, 1.0), torch.ones(5))
    with pytest.raises(Exception, match="max_weight"):
        x0_loss_weights(steps, 0.5)


def test_loss_weights_high_noise_samples_as_configured():
    from microcinema.core.diffusion import high_noise_timesteps, x0_loss_weights

    cache, batch = fake_cache_and_batch()
    prediction = torch.randn(B, C, FRAMES, H, W, generator=torch.Generator().manual_seed(4))
    model = RecordingModel(prediction)
    loss = make_loss("video", cache, 1.0, lam=0.0, condition_dropout=0.0, high_noise_fraction=1.0,
                     high_noise_from=900, max_x0_weight=5.0)(model, batch, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    n = torch.randn(batch["latent_mean"].shape, generator=g)
    t = high_noise_timesteps(B, 1.0, 900, generator=g)
    assert torch.equal(model.calls[0]["timestep"], t) and bool((t >= 900).all())
    per_sample = (prediction - n).square().flatten(1).mean(dim=1)
    torch.testing.assert_close(loss, (x0_loss_weights(t, 5.0) * per_sample).mean(), rtol=1e-6, atol=0)
    assert float(loss) > 4 * float(per_sample.mean())  # at t >= 900 every weight is the cap, 5


def test_loss_hides_the_motion_from_the_configured_timestep_up():
    from microcinema.core.diffusion import high_noise_timesteps
    from microcinema.systems.microcinema.noise_prior import hide_motion_at_high_noise

    cache, batch = fake_cache_and_batch()
    prediction = torch.randn(B, C, FRAMES, H, W, generator=torch.Generator().manual_seed(4))
    model = RecordingModel(prediction)
    loss = make_loss("video", cache, 1.0, lam=0.0, condition_dropout=0.0, high_noise_fraction=0.5,
                     high_noise_from=900, hide_motion_from=950)(model, batch, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    n = torch.randn(batch["latent_mean"].shape, generator=g)
    t = high_noise_timesteps(B, 0.5, 900, generator=g)
    z0 = batch["latent_mean"]
    z_t, target = hide_motion_at_high_noise(z0, key_frame_condition(z0), n, t, 950)
    torch.testing.assert_close(model.calls[0]["sample"], z_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, F.mse_loss(prediction, target), rtol=1e-6, atol=0)
    hidden = t >= 950
    assert 0 < int(hidden.sum()) < B  # this seed has samples on both sides of the threshold
    plain = add_noise(z0, n, t, make_training_scheduler())
    assert (model.calls[0]["sample"][hidden] - plain[hidden]).abs().max() > 1e-3
    torch.testing.assert_close(model.calls[0]["sample"][~hidden], plain[~hidden], rtol=0, atol=1e-6)
