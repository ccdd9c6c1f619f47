"""``microcinema train artv`` (microcinema/systems/artv/task.py): what the loss feeds the network (frames,
references, anchor, noise augmentation, dropout, the noise of frame i as target), the config, and a short
training run with export and resume on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from microcinema.core.diffusion import add_noise, make_training_scheduler, random_timesteps
from microcinema.core.errors import MicroCinemaError
from microcinema.data.latent_cache import LatentCache
from microcinema.systems.artv.conditioning import gather_frames, sample_condition_dropout, sample_frames
from microcinema.systems.artv.model import ARTVModel, ARTVOutput
from microcinema.systems.artv.noise_augmentation import sample_levels
from microcinema.systems.artv.task import ARTVLoss, build_model, make_loss, parse_artv_config
from microcinema.training.common import load_config

B, C, FRAMES, H, W, L, D = 6, 4, 12, 4, 4, 7, 12


class RecordingModel(nn.Module):
    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction = prediction
        self.calls: list[dict] = []

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        self.calls.append(dict(sample=sample, timestep=timestep, text=encoder_hidden_states, **kwargs))
        return ARTVOutput(sample=self.prediction, eps_dynamic=self.prediction, mask=torch.full((B, 1, H, W), 0.25))


def fake_cache_and_batch():
    g = torch.Generator().manual_seed(2)
    tensors = {"latent_mean": torch.randn(B, C, FRAMES, H, W, generator=g),
               "latent_std": torch.rand(B, C, FRAMES, H, W, generator=g) + 0.5,
               "text_states": torch.randn(B, L, D, generator=g).half(),
               "text_mask": torch.ones(B, L, dtype=torch.long),
               "uncond_states": torch.randn(1, L, D, generator=g).half(),
               "uncond_mask": torch.tensor([[1, 1, 0, 0, 0, 0, 0]])}
    return LatentCache(tensors), {k: tensors[k] for k in LatentCache.PER_ITEM}


def test_loss_conditions_frame_i_on_its_references_anchor_and_regresses_its_noise():
    """Replay the loss's draws from an identically seeded generator: frames, levels, reference and anchor noise,
    dropout, then the diffusion loss's noise and timesteps."""
    cache, batch = fake_cache_and_batch()
    sf, seed = 0.5, 7
    settings = ARTVLoss(ref_dropout=0.3, anchor_dropout=0.3, text_dropout=0.3)
    prediction = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(4))
    model = RecordingModel(prediction)
    scheduler = make_training_scheduler()
    out = make_loss(cache, sf, settings, scheduler)(model, batch, torch.Generator().manual_seed(seed))
    call = model.calls[0]

    g = torch.Generator().manual_seed(seed)
    clip = batch["latent_mean"] * sf
    frames = sample_frames(FRAMES, B, g)
    levels = sample_levels(B, g)
    ref_noise = torch.randn(B, 2, C, H, W, generator=g)
    anchor_noise = torch.randn(B, C, H, W, generator=g)
    keep = sample_condition_dropout(B, g, p_ref=0.3, p_anchor=0.3, p_text=0.3)
    n = torch.randn(B, C, H, W, generator=g)
    t = random_timesteps(B, generator=g)

    assert torch.equal(call["timestep"], t)
    torch.testing.assert_close(call["sample"], add_noise(gather_frames(clip, frames.current), n, t))
    rows = torch.arange(B)
    assert torch.equal(call["refs"][:, 0], clip[rows, :, frames.current - 1])
    assert torch.equal(call["refs"][:, 1], clip[rows, :, (frames.current - 2).clamp_min(0)])
    assert torch.equal(call["anchor"], clip[rows, :, frames.anchor])
    assert torch.equal(call["ref_level"], levels) and int(levels.max()) <= 550
    assert torch.equal(call["ref_noise"], ref_noise) and torch.equal(call["anchor_noise"], anchor_noise)
    assert torch.equal(call["ref_keep"], keep["ref"]) and torch.equal(call["anchor_keep"], keep["anchor"])
    dropped = ~keep["text"]
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(call["text"][dropped], cache.uncond_states.float().expand(int(dropped.sum()), -1, -1))
    torch.testing.assert_close(call["text"][~dropped], batch["text_states"].float()[~dropped])
    assert torch.equal(call["alphas_cumprod"], scheduler.alphas_cumprod)
    torch.testing.assert_close(out["loss"], ((prediction - n) ** 2).mean())
    assert out["mask_mean"].item() == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------- config


def test_shipped_config_parses_and_starts_from_the_embedded_t2i():
    from diffusers import UNet2DConditionModel

    from microcinema.embedded import embedded_path

    config = load_config("artv")
    parsed = parse_artv_config(config)
    assert parsed.data.fps == 8.0 and parsed.data.num_frames >= 12
    assert parsed.loss.max_ref_level == 550 and parsed.loss.anchor_window == 10 and parsed.loss.ref_dropout == 0.1
    model = build_model(config).eval()
    assert isinstance(model, ARTVModel) and model.mask_net is not None
    t2i = UNet2DConditionModel.from_pretrained(embedded_path("t2i")).eval()
    g = torch.Generator().manual_seed(0)
    y, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 6, 384, generator=g)
    refs = torch.randn(1, 2, 4, 16, 16, generator=g)
    with torch.no_grad():
        out = model(y, torch.tensor([400]), text, refs=refs, ref_level=200).eps_dynamic
        assert torch.equal(out, t2i(y, torch.tensor([400]), text).sample)


@pytest.mark.parametrize("change, message", [
    ({"loss": {"ref_dropuot": 0.1}}, "unknown key 'ref_dropuot' in section 'loss'"),
    ({"loss": {"max_ref_level": -1}}, "max_ref_level must be an integer >= 0"),
    ({"model": {"mask_channels": [8]}}, "unknown key 'mask_channels' in section 'model'"),
    ({"data": {"type": "procedural", "num": 4, "seed": 0}}, "lacks num_frames, fps"),
    ({"data": {"type": "procedural", "num": 4, "seed": 0, "num_frames": 1, "fps": 8}}, "at least 2 frames"),
    ({"phases": []}, "unknown key 'phases' in section 'top level'"),
    ({"data": {"type": "procedural", "num": 4, "seed": 0, "num_frames": 8, "fps": 8, "turn_fraction": 2}},
     "turn_fraction must be a number in"),
])
def test_bad_configs_are_one_line_errors(change, message):
    config = {**load_config("artv"), **change}
    with pytest.raises(MicroCinemaError, match=message) as info:
        parse_artv_config(config)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- training run


def test_training_runs_exports_and_resumes(tmp_path, capsys):
    from safetensors.torch import load_file

    from microcinema.cli import main
    from microcinema.testing import tiny_unet2d, tiny_vae

    tiny_vae((8, 16, 16)).save_pretrained(tmp_path / "vae")  # x4: 32 px frames -> 8x8 latents
    tiny_unet2d(cross_attention_dim=384, sample_size=8).save_pretrained(tmp_path / "t2i")
    config = load_config("artv")
    config.pop("_path")
    config.pop("probe")  # the probe has its own test (test_artv_probe.py)
    config.update(vae=str(tmp_path / "vae"), init_from=str(tmp_path / "t2i"),
                  model={"mask_block_out_channels": [8, 8], "mask_layers_per_block": 1})
    config["data"] = {**config["data"], "num": 4, "num_frames": 6, "size": 32}
    config["train"] = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 2,
                       "log_every": 1, "ema_decay": 0.9, "progress_bar": False}
    path = tmp_path / "artv.yaml"
    path.write_text(yaml.safe_dump(config))
    run = ["train", "artv", "--config", str(path), "--output-dir", str(tmp_path / "run")]
    assert main([*run, "--export", str(tmp_path / "export")]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["mask_mean"]])).all() for r in log)
    assert config["data"]["turn_fraction"] > 0  # the embedded recipe's turning clips reach the loss via the cache
    cached = load_file(str(tmp_path / "run" / "latents.safetensors"))
    assert cached["lead_in"].shape == (4,) and int(cached["lead_in"].max()) <= 4
    weights = load_file(str(tmp_path / "export" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    record = json.loads((tmp_path / "export" / "training.json").read_text())
    assert record["command"].startswith("microcinema train artv") and record["evaluation"]["steps"] == 3
    model = ARTVModel.from_pretrained(tmp_path / "export").float().eval()
    assert model.unet.config.class_embed_type == "timestep"
    components = json.loads((tmp_path / "run" / "components.json").read_text())
    assert components["prediction_type"] == "epsilon"
    final = ARTVModel.from_pretrained(tmp_path / "run" / "final")
    assert any(p.abs().sum() > 0 for p in final.adapter_zero_convs.parameters())  # it trained
    # resume: one more step continues from the step-3 checkpoint, the log stays monotone
    capsys.readouterr()
    assert main([*run, "--max-steps", "4"]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["steps"] == 4


def test_loss_skips_a_turning_clips_lead_in():
    cache, batch = fake_cache_and_batch()
    model = RecordingModel(torch.zeros(B, C, H, W))
    batch["lead_in"] = torch.full((B,), FRAMES - 1)
    make_loss(cache, 1.0)(model, batch, torch.Generator().manual_seed(0))
    rows = torch.arange(B)
    assert torch.equal(model.calls[0]["refs"][:, 0], batch["latent_mean"][rows, :, FRAMES - 2])


@pytest.mark.parametrize("num_references", [1, 3])
def test_loss_gathers_as_many_references_as_the_model_takes(num_references):
    cache, batch = fake_cache_and_batch()
    model = RecordingModel(torch.zeros(B, C, H, W))
    make_loss(cache, 0.5, ARTVLoss(), make_training_scheduler(), num_references=num_references)(
        model, batch, torch.Generator().manual_seed(0))
    assert model.calls[0]["refs"].shape == (B, num_references, C, H, W)
