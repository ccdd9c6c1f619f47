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
    config.pop("phases", None)  # the first phase only (phases set their own max_steps)
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


def test_t2i_task_trains_on_cached_latents_and_loads_as_pipeline(trained_vae, tmp_path, minilm_encoder):
    config = write_config(tmp_path / "t2i.yaml", "t2i", vae=str(trained_vae / "export"),
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
    assert "unknown key 'max_step' in section 'train'" in err and "max_steps" in err and err.count("\n") == 1


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


def video_config(path, **changes):
    """embedded/configs/video.yaml's first phase (no ``phases``) with ``changes`` (sections replaced, not merged)."""
    config = load_config("video")
    config.pop("_path")
    config.pop("phases")
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


def test_video_training_continues_from_a_trained_video_unet(trained_vae, tmp_path):
    """``init_from`` a VideoUNet folder keeps its weights and settings (what a phase does)."""
    from microcinema.testing import tiny_unet2d
    from microcinema.models.unet3d import VideoUNet

    phase1 = VideoUNet.from_pretrained_2d(tiny_unet2d(cross_attention_dim=384, sample_size=16),
                                          temporal_attention_head_dim=4, injection="add_dec")
    with torch.no_grad():
        for p in phase1.parameters():
            p.add_(0.01)
    phase1.save_pretrained(tmp_path / "phase1")
    data = {**load_config("video")["data"], "num": 4}
    config = video_config(tmp_path / "p2.yaml", vae=str(trained_vae / "export"), init_from=str(tmp_path / "phase1"),
                          model={}, data=data, train={**TINY_TRAIN, "batch_size": 2, "learning_rate": 1e-9})
    assert main(["train", "video", "--config", str(config), "--output-dir", str(tmp_path / "run"),
                 "--export", str(tmp_path / "export")]) == 0
    model = VideoUNet.from_pretrained(tmp_path / "export").float()
    assert model.config.injection == "add_dec"  # the phase-1 model's setting, not the config default
    reference = dict(phase1.named_parameters())
    for name, p in model.named_parameters():  # learning rate ~0: the weights are phase 1's (up to fp16)
        assert torch.allclose(p, reference[name], atol=2e-3), name
    clash = video_config(tmp_path / "clash.yaml", vae=str(trained_vae / "export"), init_from=str(tmp_path / "phase1"),
                         model={"injection": "concat"}, data=data, train=TINY_TRAIN)
    assert main(["train", "video", "--config", str(clash), "--output-dir", str(tmp_path / "run2")]) == 2


def test_video_phases_run_in_order_grow_the_model_and_skip_finished_phases(trained_vae, tmp_path, capsys):
    """embedded/configs/video.yaml's layout: a first phase, then phases that grow the model and change loss/data/train."""
    from microcinema.models.unet3d import VideoUNet
    from microcinema.testing import tiny_unet2d

    tiny_unet2d(cross_attention_dim=384, sample_size=16).save_pretrained(tmp_path / "t2i")
    shipped = load_config("video")
    assert [p["name"] for p in shipped["phases"]] == ["spatial_full_lr", "text_modulation", "text_modulation_2",
                                                     "text_shift", "appearance_attention"]
    phases = [{"name": "grow", "from_fp16": True, "model": {"frame_text_modulation": True},
               "loss": {"high_noise_fraction": 0.5, "max_x0_weight": 5.0}, "train": {"seed": 3}},
              {"name": "more_digits", "loss": {"hide_motion_from": 900}, "data": {"seed": 12, "digit_weight": 0.5}}]
    config = video_config(tmp_path / "v.yaml", vae=str(trained_vae / "export"), init_from=str(tmp_path / "t2i"),
                          model={"temporal_attention_head_dim": 4}, data={**shipped["data"], "num": 4},
                          train={**TINY_TRAIN, "batch_size": 2, "max_steps": 2}, phases=phases)
    argv = ["train", "video", "--config", str(config), "--output-dir", str(tmp_path / "run"),
            "--export", str(tmp_path / "export")]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["phases"]) == ["base", "grow", "more_digits"] and report["steps"] == 6
    runs = tmp_path / "run" / "phases"
    assert sorted(p.name for p in runs.iterdir()) == ["0_base", "1_grow", "2_more_digits"]
    assert (runs / "0_base" / "final_fp16").is_dir()  # phase "grow" started from the fp16-rounded weights
    model = VideoUNet.from_pretrained(tmp_path / "export")
    assert model.config.frame_text_modulation and not model.config.frame_text_shift
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    stamps = {p: (runs / p / "done.json").stat().st_mtime_ns for p in ("0_base", "1_grow", "2_more_digits")}
    (runs / "2_more_digits" / "done.json").unlink()  # as if killed after its training, before its marker
    assert main(argv) == 0
    assert (runs / "0_base" / "done.json").stat().st_mtime_ns == stamps["0_base"]  # finished: skipped
    assert (runs / "1_grow" / "done.json").stat().st_mtime_ns == stamps["1_grow"]
    assert json.loads(capsys.readouterr().out)["steps"] == 6
