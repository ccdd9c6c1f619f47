"""Strict typed training configs (training/config.py): a stray key anywhere is a one-line error naming it."""

from __future__ import annotations

import copy

import pytest
import yaml

from microcinema.cli import main
from microcinema.core.errors import MicroCinemaError
from microcinema.training.common import load_config
from microcinema.training.config import (CaptionsData, ProceduralData, VideoLoss, WebDatasetData,
                                         parse_diffusion_config)


def _with(config: dict, section: str | None, key: str, value) -> dict:
    config = copy.deepcopy(config)
    (config if section is None else config[section])[key] = value
    return config


@pytest.mark.parametrize("task, section, key", [
    ("video", "loss", "hide_motion_form"),
    ("video", "data", "nmu"),
    ("video", None, "init_form"),
    ("t2i", "loss", "max_x0_weight"),       # a loss option no shipped text-to-image model uses: gone
    ("t2i", "loss", "min_snr_gama"),
    ("t2i", None, "phases_"),
])
def test_unknown_keys_name_the_key_the_section_and_the_allowed_keys(task, section, key):
    config = _with(load_config(task), section, key, 1)
    with pytest.raises(MicroCinemaError) as info:
        parse_diffusion_config(config, task)
    message = str(info.value)
    where = "top level" if section is None else section
    assert f"unknown key {key!r} in section '{where}'" in message and "allowed:" in message
    assert "\n" not in message


def test_phase_sections_are_strict_too():
    config = load_config("video")
    config["phases"][1]["loss"]["hide_motion_form"] = 900
    with pytest.raises(MicroCinemaError, match=r"unknown key 'hide_motion_form' in section 'phases\[1\].loss'"):
        parse_diffusion_config(config, "video")
    config = load_config("video")
    config["phases"][0]["lr"] = 1
    with pytest.raises(MicroCinemaError, match=r"unknown key 'lr' in section 'phases\[0\]'; allowed: name, model"):
        parse_diffusion_config(config, "video")


def test_shipped_configs_parse_into_typed_sections():
    video = parse_diffusion_config(load_config("video"), "video")
    assert isinstance(video.loss, VideoLoss) and video.loss.spatial_lr_scale == 0.1
    assert isinstance(video.data, ProceduralData) and video.data.num_frames == 9
    assert [p.name for p in video.phases][-1] == "appearance_attention"
    t2i = parse_diffusion_config(load_config("t2i"), "t2i")
    assert t2i.loss.condition_dropout == 0.1 and t2i.data.size == 64


def test_data_types_and_their_keys(tmp_path):
    base = load_config("video")
    shards = {"type": "webdataset", "shards": "x/{000..003}.tar", "num_frames": 5, "fps": 8, "size": [32, 48]}
    assert isinstance(parse_diffusion_config(_with(base, None, "data", shards), "video").data, WebDatasetData)
    table = {"type": "captions", "table": "t.csv", "video_root": "v", "sample": "center", "too_short": "pad"}
    assert isinstance(parse_diffusion_config(_with(base, None, "data", table), "video").data, CaptionsData)
    with pytest.raises(MicroCinemaError, match="unknown data type 'hdf5'; allowed: procedural, captions, webdataset"):
        parse_diffusion_config(_with(base, None, "data", {"type": "hdf5"}), "video")
    with pytest.raises(MicroCinemaError, match="sample must be one of"):
        parse_diffusion_config(_with(base, None, "data", {**table, "sample": "middle"}), "video")
    with pytest.raises(MicroCinemaError, match=r"section 'data \(type procedural\)' lacks num"):
        parse_diffusion_config(_with(base, None, "data", {"type": "procedural", "seed": 1}), "video")
    with pytest.raises(MicroCinemaError, match="unknown key 'shards' in section 'data \\(type captions\\)'"):
        parse_diffusion_config(_with(base, None, "data", {**table, "shards": "a.tar"}), "video")


@pytest.mark.parametrize("task, section, key", [("video", "model", "injektion"), ("t2i", "model", "block_out"),
                                                ("vae", "loss", "kl"), ("vae", "model", "latent_chanels"),
                                                ("classifier", "eval", "heldout"), ("vae", "train", "batchsize")])
def test_the_cli_reports_a_typo_in_one_line_before_any_work(tmp_path, capsys, task, section, key):
    config = load_config(task)
    config.pop("_path")
    config.pop("phases", None)
    config[section][key] = 1
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", task, "--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"unknown key {key!r} in section '{section}'" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing was done


@pytest.mark.parametrize("value", [900.5, "900", True, -1])
def test_hide_motion_from_must_be_an_integer_timestep_or_null(value):
    config = load_config("video")
    config["loss"]["hide_motion_from"] = value
    with pytest.raises(MicroCinemaError, match=r"hide_motion_from must be an integer timestep in \[0, "
                                               r"num_train_timesteps\) or null") as info:
        parse_diffusion_config(config, "video")
    assert "\n" not in str(info.value)
    config["loss"]["hide_motion_from"] = None
    parse_diffusion_config(config, "video")


def test_loss_options_against_the_schedule_are_refused_before_any_training(tmp_path):
    """hide_motion_from beyond the schedule, and max_x0_weight (an epsilon-loss weight) under v-prediction,
    are one-line errors of `train` before any phase starts (no run folder written)."""
    from microcinema.systems.microcinema.task import train

    config = load_config("video")
    config["phases"][3]["loss"]["hide_motion_from"] = 1000
    with pytest.raises(MicroCinemaError, match=r"hide_motion_from must be an integer timestep in \[0, 1000\)"):
        train(config, tmp_path / "a")
    config = load_config("video")
    config["loss"]["prediction_type"] = "v_prediction"  # phase text_modulation sets max_x0_weight: 5
    with pytest.raises(MicroCinemaError, match="max_x0_weight is an epsilon-loss weighting; drop it"):
        train(config, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="max_x0_weight and min_snr_gamma are two loss weightings"):
        VideoLoss(max_x0_weight=5.0, min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="min_snr_gamma must be a number > 0"):
        VideoLoss(min_snr_gamma=0)


def test_every_phase_model_section_is_checked_before_any_training():
    from microcinema.systems.microcinema.task import phase_configs

    config = load_config("video")
    config["phases"][4]["model"] = {"appearance_atention": True}  # the last phase: a typo
    with pytest.raises(MicroCinemaError, match=r"phases \(appearance_attention\): model .* may only switch on"):
        phase_configs(config)
    config = load_config("video")
    config["phases"][1]["model"] = {"injection": "concat"}  # not an option that grows a trained model
    with pytest.raises(MicroCinemaError, match="may only switch on \\(true\\) the options that grow"):
        phase_configs(config)
    config = load_config("video")
    config["model"]["temporal_head_dim"] = 4  # a typo in the first phase: named with the phase
    with pytest.raises(MicroCinemaError, match=r"unknown key 'temporal_head_dim' in section 'model' \(phase base\)"):
        phase_configs(config)
    assert len(phase_configs(load_config("video"))) == 6


def test_key_frame_probe_section_is_typed_strict_and_procedural_only():
    from microcinema.training.config import KeyFrameProbe

    config = _with(load_config("t2i"), None, "probe", {"every": 500, "num_digits": 10})
    probe = parse_diffusion_config(config, "t2i").probe
    assert isinstance(probe, KeyFrameProbe) and (probe.every, probe.num_digits, probe.num_shapes) == (500, 10, 20)
    assert probe.prompt_seed != 999, "the probe must not tune on the evaluation prompts"
    with pytest.raises(MicroCinemaError, match="unknown key 'evry' in section 'probe'"):
        parse_diffusion_config(_with(load_config("t2i"), None, "probe", {"evry": 500}), "t2i")
    with pytest.raises(MicroCinemaError, match="bad section 'probe': every must be an integer >= 1"):
        parse_diffusion_config(_with(load_config("t2i"), None, "probe", {"every": 0}), "t2i")
    real = _with(config, None, "data", {"type": "captions", "table": "clips.csv"})
    with pytest.raises(MicroCinemaError, match="section 'probe' judges key frames against the procedural"):
        parse_diffusion_config(real, "t2i")
