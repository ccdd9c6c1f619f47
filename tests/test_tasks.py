"""The training commands of the embedded family, end to end on tiny configs: train, export fp16, load, generate."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel

from microcinema.cli import main
from microcinema.core.errors import MicroCinemaError
from microcinema.pipelines.text_to_image import TextToImagePipeline
from microcinema.training.common import load_config

TINY_TRAIN = {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 2, "log_every": 1,
              "ema_decay": 0.9, "progress_bar": False}


def write_config(path, name, **changes):
    config = load_config(name)
    config.pop("_path")
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    config = write_config(root / "vae.yaml", "vae",
                          model={"block_out_channels": [8, 16, 16], "norm_num_groups": 4},
                          data={"num": 64}, eval={"num": 8}, train=TINY_TRAIN)
    assert main(["train", "vae", "--config", str(config), "--output-dir", str(root / "run"),
                 "--export", str(root / "export"), "--plot"]) == 0
    return root


def test_vae_task_exports_fp16_with_provenance(trained_vae):
    export = trained_vae / "export"
    from safetensors.torch import load_file

    weights = load_file(str(export / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    vae = AutoencoderKL.from_pretrained(export)
    assert vae.config.scaling_factor != 0.18215  # measured from the latents, not SD's
    record = json.loads((export / "training.json").read_text())
    assert record["command"].startswith("microcinema train vae --config")
    assert record["config"]["train"]["max_steps"] == 3
    assert {"heldout_psnr_db_fp32", "heldout_psnr_db_fp16_export", "train_minutes"} <= set(record["evaluation"])
    assert (trained_vae / "run" / "loss.png").exists()
    lines = (trained_vae / "run" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("name", ["t2i", "t2i_balanced", "t2i_hide_layout", "t2i_text_embed"])  # shipped + tried
def test_t2i_task_trains_on_cached_latents_and_loads_as_pipeline(trained_vae, tmp_path, minilm_encoder, name):
    config = write_config(tmp_path / "t2i.yaml", name, vae=str(trained_vae / "export"),
                          model={"block_out_channels": [8, 16, 16], "attention_head_dim": [2, 2, 2],
                                 "norm_num_groups": 4},
                          data={"num": 16}, train=TINY_TRAIN)
    assert main(["train", "t2i", "--config", str(config), "--output-dir", str(tmp_path / "run"),
                 "--export", str(tmp_path / "unet")]) == 0
    assert (tmp_path / "run" / "latents.safetensors").exists()
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    pipeline = TextToImagePipeline(unet.float(), AutoencoderKL.from_pretrained(trained_vae / "export").float(),
                                   minilm_encoder)
    images = pipeline("a red circle", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 64, 64)
    # a second run reuses the latent cache (same fingerprint) and resumes: nothing to do, same result
    assert main(["train", "t2i", "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 0


def test_bad_configs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(MicroCinemaError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(MicroCinemaError, match="shipped config"):
        load_config("no-such-config")
    (tmp_path / "bad.yaml").write_text("model: {}\n")
    with pytest.raises(MicroCinemaError, match="'model' and 'train' sections"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "partial.yaml").write_text("model: {}\ntrain: {max_steps: 3}\n")
    assert main(["train", "vae", "--config", str(tmp_path / "partial.yaml"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "lacks section(s) data, loss" in capsys.readouterr().err
    typo = write_config(tmp_path / "typo.yaml", "vae", train={"max_step": 3})
    assert main(["train", "vae", "--config", str(typo), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad 'train' section" in err and "max_step" in err and err.count("\n") == 1


@pytest.mark.parametrize("task", ["video", "interp"])
def test_stage_two_tasks_train_from_a_t2i_unet(trained_vae, tmp_path, task):
    from microcinema.testing import tiny_unet2d
    from microcinema.models.unet3d import VideoUNet

    tiny_unet2d(cross_attention_dim=384, sample_size=16).save_pretrained(tmp_path / "t2i")
    config = write_config(tmp_path / f"{task}.yaml", task, vae=str(trained_vae / "export"),
                          init_from=str(tmp_path / "t2i"), model={"temporal_attention_head_dim": 4},
                          data={"num": 4}, train={**TINY_TRAIN, "batch_size": 2})
    assert main(["train", task, "--config", str(config), "--output-dir", str(tmp_path / "run"),
                 "--export", str(tmp_path / "export")]) == 0
    model = VideoUNet.from_pretrained(tmp_path / "export").float()
    assert model.config.injection == "add_encdec_spade"
    z = torch.randn(1, 4, 3, 16, 16)
    out = model(z, torch.tensor([500]), encoder_hidden_states=torch.randn(1, 5, 384), condition=z[:, :, :1]).sample
    assert out.shape == z.shape
    record = json.loads((tmp_path / "export" / "training.json").read_text())
    assert record["command"].startswith(f"microcinema train {task}")


def test_video_training_continues_from_a_trained_video_unet(trained_vae, tmp_path):
    """Phase 2 (configs/video_phase2.yaml): ``init_from`` a VideoUNet folder keeps its weights and settings."""
    from microcinema.testing import tiny_unet2d
    from microcinema.models.unet3d import VideoUNet

    phase1 = VideoUNet.from_pretrained_2d(tiny_unet2d(cross_attention_dim=384, sample_size=16),
                                          temporal_attention_head_dim=4, injection="add_dec")
    with torch.no_grad():
        for p in phase1.parameters():
            p.add_(0.01)
    phase1.save_pretrained(tmp_path / "phase1")
    config = write_config(tmp_path / "p2.yaml", "video_phase2", vae=str(trained_vae / "export"),
                          init_from=str(tmp_path / "phase1"), data={"num": 4},
                          train={**TINY_TRAIN, "batch_size": 2, "learning_rate": 1e-9})
    assert main(["train", "video", "--config", str(config), "--output-dir", str(tmp_path / "run"),
                 "--export", str(tmp_path / "export")]) == 0
    model = VideoUNet.from_pretrained(tmp_path / "export").float()
    assert model.config.injection == "add_dec"  # the phase-1 model's setting, not the config default
    reference = dict(phase1.named_parameters())
    for name, p in model.named_parameters():  # learning rate ~0: the weights are phase 1's (up to fp16)
        assert torch.allclose(p, reference[name], atol=2e-3), name
    clash = write_config(tmp_path / "clash.yaml", "video_phase2", vae=str(trained_vae / "export"),
                         init_from=str(tmp_path / "phase1"), model={"injection": "concat"}, data={"num": 4},
                         train=TINY_TRAIN)
    assert main(["train", "video", "--config", str(clash), "--output-dir", str(tmp_path / "run2")]) == 2


def test_t2i_loss_weights_the_steps_by_min_snr_or_as_x0_loss_when_configured():
    from microcinema.data.latent_cache import LatentCache
    from microcinema.core.diffusion import min_snr_weights, random_timesteps
    from microcinema.training.tasks.t2i import make_loss

    g = torch.Generator().manual_seed(0)
    b, shape = 64, (4, 6, 6)
    tensors = {"latent_mean": torch.randn(b, *shape, generator=g), "latent_std": torch.ones(b, *shape),
               "text_states": torch.randn(b, 5, 8, generator=g).half(), "text_mask": torch.ones(b, 5, dtype=torch.long),
               "uncond_states": torch.zeros(1, 5, 8).half(), "uncond_mask": torch.ones(1, 5, dtype=torch.long)}
    cache = LatentCache(tensors)
    batch = {k: tensors[k] for k in LatentCache.PER_ITEM}
    prediction = torch.randn(b, *shape, generator=g)
    model = lambda sample, t, **kwargs: type("Output", (), {"sample": prediction})()  # noqa: E731
    plain = make_loss(cache, 1.0, 0.0)(model, batch, torch.Generator().manual_seed(3))
    weighted = make_loss(cache, 1.0, 0.0, min_snr_gamma=5.0)(model, batch, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)  # the loss draws the noise, then the timesteps
    noise = torch.randn(batch["latent_mean"].shape, generator=replay)
    t = random_timesteps(b, generator=replay)
    per_sample = (prediction - noise).square().flatten(1).mean(1)
    torch.testing.assert_close(plain, per_sample.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(weighted, (min_snr_weights(t, 5.0) * per_sample).mean(), rtol=1e-6, atol=0)
    assert float(weighted) < float(plain)  # the clean steps (about a tenth of them) count less
    from microcinema.core.diffusion import x0_loss_weights

    x0 = make_loss(cache, 1.0, 0.0, max_x0_weight=5.0)(model, batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x0, (x0_loss_weights(t, 5.0) * per_sample).mean(), rtol=1e-6, atol=0)
    assert float(x0) > 2 * float(plain)  # most timesteps have SNR < 1/5 and count 5x

    from microcinema.core.diffusion import add_noise
    from microcinema.systems.microcinema.noise_prior import hide_layout_at_high_noise

    seen = {}

    def recording(sample, t, **kwargs):
        seen["sample"] = sample
        return type("Output", (), {"sample": prediction})()

    hidden = make_loss(cache, 1.0, 0.0, hide_layout_from=800)(recording, batch, torch.Generator().manual_seed(3))
    z_t, target = hide_layout_at_high_noise(batch["latent_mean"], noise, t, 800)
    torch.testing.assert_close(seen["sample"], z_t)
    torch.testing.assert_close(hidden, (prediction - target).square().flatten(1).mean(1).mean(), rtol=1e-6, atol=0)
    high = t >= 800
    assert high.any() and (~high).any()
    assert (z_t[high] - add_noise(batch["latent_mean"], noise, t)[high]).abs().max() > 1e-3  # the input changed there
