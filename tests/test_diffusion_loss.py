"""The one diffusion loss (core/diffusion.py DiffusionLoss) and its hooks.

The shipped procedural configs must still reproduce the shipped models, so for a given batch and generator
the t2i, video and interp losses must be *exactly* what the code that trained them computed (same random draws
in the same order). ``frozen_*`` below is that code (commit e3d1d8c, training/tasks/t2i.py and
systems/microcinema/task.py make_loss, with the helpers it called inlined), kept here as the reference.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from microcinema.core.diffusion import (DiffusionLoss, high_noise_mix, min_snr_weighting, uniform_weighting,
                                        velocity, x0_weighting)
from microcinema.data.latent_cache import LatentCache

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          prediction_type="epsilon", clip_sample=False)


# ----------------------------------------------------------------------------------- the frozen reference


def _abar() -> torch.Tensor:
    return DDPMScheduler(**SD).alphas_cumprod.to(torch.float64)


def _coef(t, like):
    ac = _abar().to(like.device)[t.long()]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ac.sqrt().to(like.dtype).reshape(shape), (1 - ac).sqrt().to(like.dtype).reshape(shape)


def _frozen_timesteps(b, fraction, low, g):
    uniform = torch.randint(0, 1000, (b,), generator=g, device=g.device)
    if fraction == 0:
        return uniform
    high = torch.randint(low, 1000, (b,), generator=g, device=g.device)
    pick = torch.rand(b, generator=g, device=g.device) < fraction
    return torch.where(pick, high, uniform)


def _frozen_x0_weights(t, max_weight):
    abar = _abar().to(t.device)[t.long()]
    return (1 / (abar / (1 - abar))).clamp(1.0, max_weight).float()


def _frozen_mse(pred, target):
    err = (pred.float() - target.float()) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1)


def _frozen_latents(batch, sf, g, mode):
    mean = batch["latent_mean"]
    if mode:
        return mean * sf
    noise = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
    return (mean + batch["latent_std"] * noise) * sf


def _frozen_text(batch, cache, drop):
    states, mask = batch["text_states"].float(), batch["text_mask"]
    keep = ~drop
    return (torch.where(keep[:, None, None], states, cache.uncond_states.float().expand_as(states)),
            torch.where(keep[:, None], mask, cache.uncond_mask.expand_as(mask)))


def frozen_t2i_loss(model, batch, g, cache, sf, condition_dropout, latents="mode"):
    z0 = _frozen_latents(batch, sf, g, latents == "mode")
    noise = torch.randn(z0.shape, generator=g, device=g.device).to(z0.device)
    t = torch.randint(0, 1000, (len(z0),), generator=g, device=g.device)
    drop = torch.rand(len(z0), generator=g, device=g.device) < condition_dropout
    states, mask = _frozen_text(batch, cache, drop)
    a, b = _coef(t, z0)
    z_t, target = a * z0 + b * noise, noise
    eps = model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    return (_frozen_x0_weights(t, 1.0) * _frozen_mse(eps, target)).mean()


def frozen_video_loss(model, batch, g, cache, sf, kind, lam, condition_dropout, latents="mode",
                      high_noise_fraction=0.0, high_noise_from=850, max_x0_weight=1.0, hide_motion_from=None):
    z0 = _frozen_latents(batch, sf, g, latents == "mode")
    mean = batch["latent_mean"] * sf
    frames = z0.shape[2]
    if kind == "video":
        condition = mean[:, :, frames // 2].unsqueeze(2).expand(-1, -1, frames, -1, -1)
    else:
        w = torch.linspace(0, 1, frames, dtype=mean.dtype).view(1, 1, -1, 1, 1)
        condition = (1 - w) * mean[:, :, 0].unsqueeze(2) + w * mean[:, :, -1].unsqueeze(2)
    n = torch.randn(z0.shape, generator=g, device=g.device).to(z0.device)
    eps = n if lam == 0 else n + lam * condition
    t = _frozen_timesteps(len(z0), high_noise_fraction, high_noise_from, g)
    p_drop = condition_dropout if kind == "video" else 1.0
    states, mask = _frozen_text(batch, cache, torch.rand(len(z0), generator=g, device=g.device) < p_drop)
    a, b = _coef(t, z0)
    if hide_motion_from is None:
        z_t, target = a * z0 + b * eps, eps
    else:
        hide = (t >= hide_motion_from).view(-1, 1, 1, 1, 1)
        z_t = a * torch.where(hide, condition, z0) + b * eps
        target = torch.where(hide, eps + (a / b) * (condition - z0), eps)
    pred = model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, condition=condition).sample
    return (_frozen_x0_weights(t, max_x0_weight) * _frozen_mse(pred, target)).mean()


# ------------------------------------------------------------------------------------------------ fixtures


def fake_cache(shape: tuple[int, ...], b: int = 6) -> tuple[LatentCache, dict]:
    g = torch.Generator().manual_seed(11)
    mask = torch.ones(b, 5, dtype=torch.long)
    mask[:, 3:] = 0
    tensors = {"latent_mean": torch.randn(b, *shape, generator=g), "latent_std": torch.rand(b, *shape, generator=g) + .5,
               "text_states": torch.randn(b, 5, 32, generator=g).half(), "text_mask": mask,
               "uncond_states": torch.randn(1, 5, 32, generator=g).half(), "uncond_mask": torch.tensor([[1, 1, 0, 0, 0]])}
    return LatentCache(tensors), {k: tensors[k] for k in LatentCache.PER_ITEM}


@pytest.fixture(scope="module")
def video_unet():
    from microcinema.models.unet3d import VideoUNet
    from microcinema.testing import tiny_unet2d

    torch.manual_seed(0)
    model = VideoUNet.from_pretrained_2d(tiny_unet2d(), temporal_attention_head_dim=4, frame_text_modulation=True,
                                         frame_text_shift=True, appearance_attention=True)
    with torch.no_grad():  # non-zero new layers, so the condition and the frames matter
        for name, p in model.named_parameters():
            if "temporal" in name or "appear" in name or "frame_text" in name or "zero" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


SHIPPED_VIDEO = {  # the loss settings of the shipped phases (embedded/configs/video.yaml) and of interp
    "video_base": dict(kind="video", lam=0.03, condition_dropout=0.1),
    "video_text_modulation": dict(kind="video", lam=0.03, condition_dropout=0.1, high_noise_fraction=0.5,
                                  high_noise_from=850, max_x0_weight=5.0),
    "video_text_shift": dict(kind="video", lam=0.03, condition_dropout=0.1, high_noise_fraction=0.5,
                             high_noise_from=850, max_x0_weight=5.0, hide_motion_from=900),
    "interp": dict(kind="interp", lam=0.03, condition_dropout=0.1),
    "video_sampled_latents": dict(kind="video", lam=0.03, condition_dropout=0.5, latents="sample",
                                  high_noise_fraction=0.9, high_noise_from=600, hide_motion_from=700),
}


@pytest.mark.parametrize("name", list(SHIPPED_VIDEO))
@torch.no_grad()
def test_video_and_interp_loss_equal_the_code_that_trained_the_shipped_models(video_unet, name):
    from microcinema.systems.microcinema.task import make_loss

    settings = SHIPPED_VIDEO[name]
    cache, batch = fake_cache((4, 5, 16, 16))
    for seed in range(4):
        new = make_loss(cache=cache, scaling_factor=0.7, **settings)(video_unet, batch, torch.Generator().manual_seed(seed))
        old = frozen_video_loss(video_unet, batch, torch.Generator().manual_seed(seed), cache, 0.7, **settings)
        assert torch.equal(new, old), (name, seed, float(new), float(old))


@pytest.mark.parametrize("latents", ["mode", "sample"])
@torch.no_grad()
def test_t2i_loss_equals_the_code_that_trained_the_shipped_model(latents):
    from microcinema.testing import tiny_unet2d
    from microcinema.training.tasks.t2i import make_loss

    unet = tiny_unet2d()
    cache, batch = fake_cache((4, 16, 16))
    for seed in range(4):
        new = make_loss(cache, 0.9, 0.3, latents=latents)(unet, batch, torch.Generator().manual_seed(seed))
        old = frozen_t2i_loss(unet, batch, torch.Generator().manual_seed(seed), cache, 0.9, 0.3, latents)
        assert torch.equal(new, old), (seed, float(new), float(old))


# ------------------------------------------------------------------------------------------------- hooks


def test_hooks_draw_in_order_and_v_prediction_targets_the_velocity():
    x0 = torch.randn(8, 4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    seen = {}

    def denoise(z_t, t):
        seen["z_t"], seen["t"] = z_t, t
        return torch.zeros_like(z_t)

    loss = DiffusionLoss(prediction_type="v_prediction", timesteps=high_noise_mix(1.0, 900))
    value = loss(denoise, x0, torch.Generator().manual_seed(3), noise_prior=lambda n: 2 * n)
    g = torch.Generator().manual_seed(3)
    n = torch.randn(x0.shape, generator=g)
    assert bool((seen["t"] >= 900).all())
    v = velocity(x0, 2 * n, seen["t"])
    torch.testing.assert_close(value, v.square().flatten(1).mean(1).mean(), rtol=1e-6, atol=0)
    # the velocity's definition: sqrt(abar) eps - sqrt(1 - abar) x0
    abar = DDPMScheduler(**SD).alphas_cumprod[seen["t"]].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, abar.sqrt() * 2 * n - (1 - abar).sqrt() * x0, rtol=1e-5, atol=1e-6)
    eps_loss = DiffusionLoss(timesteps=high_noise_mix(1.0, 900))(denoise, x0, torch.Generator().manual_seed(3),
                                                                 noise_prior=lambda n: 2 * n)
    assert abs(float(eps_loss) - float(value)) > 1e-3  # another target
    with pytest.raises(Exception, match="prediction_type"):
        DiffusionLoss(prediction_type="sample")


def test_weightings():
    t = torch.tensor([0, 100, 500, 900, 999])
    assert torch.equal(uniform_weighting()(t), torch.ones(5))
    w = x0_weighting(5.0)(t)
    assert w[0] == 1 and w[-1] == 5
    eps_w, v_w = min_snr_weighting(5.0)(t), min_snr_weighting(5.0, prediction_type="v_prediction")(t)
    assert eps_w[0] < 1 and eps_w[-1] == 1  # clean steps count less
    from diffusers.training_utils import compute_snr

    snr = compute_snr(DDPMScheduler(**SD), t).double()
    torch.testing.assert_close(v_w, (snr.clamp(max=5.0) / (snr + 1)).float(), rtol=1e-5, atol=0)


@torch.no_grad()
def test_v_prediction_with_hidden_motion_targets_the_velocity_of_the_clip_and_the_hidden_motion_noise():
    """Under v-prediction with hide_motion_from the target is v = sqrt(abar) eps' - sqrt(1 - abar) x0 with eps'
    the noise the hidden-motion input implies (eps + sqrt(abar / (1 - abar)) (z_c - x0) where t >= start, else
    eps), so a perfect v prediction still implies the clip x0."""
    from microcinema.systems.microcinema.task import make_loss

    cache, batch = fake_cache((4, 5, 8, 8), b=8)
    seen = {}

    class Model:  # predicts its own input: a non-zero prediction, so the loss pins the target down
        def __call__(self, z_t, t, **kwargs):
            seen.update(z_t=z_t, t=t, condition=kwargs["condition"])
            return type("Out", (), {"sample": z_t})()

    lam, sf = 0.03, 0.7
    loss = make_loss("video", cache, sf, lam=lam, condition_dropout=0.0, high_noise_fraction=0.5, high_noise_from=800,
                     hide_motion_from=900, prediction_type="v_prediction")
    loss = loss(Model(), batch, torch.Generator().manual_seed(5))
    t = seen["t"]
    assert bool((t >= 900).any()) and bool((t < 900).any())  # both branches in the batch
    x0, z_c = batch["latent_mean"] * sf, seen["condition"]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5)) + lam * z_c  # the first draw
    abar = _abar()[t].float().view(-1, 1, 1, 1, 1)
    hidden = (t >= 900).view(-1, 1, 1, 1, 1)
    eps_hidden = torch.where(hidden, eps + (abar / (1 - abar)).sqrt() * (z_c - x0), eps)
    torch.testing.assert_close(seen["z_t"], abar.sqrt() * torch.where(hidden, z_c, x0) + (1 - abar).sqrt() * eps,
                               rtol=1e-5, atol=1e-5)
    # the input's implied clean sample under the target is the clip: z_t = sqrt(abar) x0 + sqrt(1 - abar) eps'
    torch.testing.assert_close(seen["z_t"], abar.sqrt() * x0 + (1 - abar).sqrt() * eps_hidden, rtol=1e-4, atol=1e-4)
    v = abar.sqrt() * eps_hidden - (1 - abar).sqrt() * x0
    torch.testing.assert_close(loss, _frozen_mse(seen["z_t"], v).mean(), rtol=1e-5, atol=0)
    v_plain = abar.sqrt() * eps - (1 - abar).sqrt() * x0  # the target had the motion not been hidden: another
    rows = t >= 900
    assert float((v - v_plain)[rows].abs().max()) > 1e-3 and torch.equal(v[~rows], v_plain[~rows])


def test_max_x0_weight_is_refused_under_v_prediction_and_min_snr_weighting_is_a_loss_option():
    from microcinema.core.errors import MicroCinemaError
    from microcinema.systems.microcinema.task import make_loss

    cache, batch = fake_cache((4, 3, 8, 8), b=4)
    with pytest.raises(MicroCinemaError, match="max_x0_weight is an epsilon-loss weighting"):
        make_loss("video", cache, 0.7, lam=0.03, condition_dropout=0.1, max_x0_weight=5.0,
                  prediction_type="v_prediction")
    seen = {}

    class Model:
        def __call__(self, z_t, t, **kwargs):
            seen["t"] = t
            return type("Out", (), {"sample": torch.zeros_like(z_t)})()

    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    plain = make_loss("video", cache, 0.7, lam=0.0, condition_dropout=0.0)
    weighted = make_loss("video", cache, 0.7, lam=0.0, condition_dropout=0.0, min_snr_gamma=5.0)
    per_sample_plain = plain(Model(), batch, g())
    weights = min_snr_weighting(5.0)(seen["t"])
    assert not torch.equal(weights, torch.ones_like(weights))
    # same draws, the per-sample errors weighted: compare against the weighted mean of the plain per-sample loss
    x0 = batch["latent_mean"] * 0.7
    n = torch.randn(x0.shape, generator=g())
    torch.testing.assert_close(per_sample_plain, _frozen_mse(torch.zeros_like(n), n).mean())
    torch.testing.assert_close(weighted(Model(), batch, g()), (weights * _frozen_mse(torch.zeros_like(n), n)).mean())
