"""The ART-V training probe (``probe:`` of an ART-V config; eval/longvideo.make_probe): short multi-prompt videos
from the EMA weights, frame 0 the ground truth's, judged for drift; a probed run trains exactly as an unprobed
one."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from microcinema.core.errors import MicroCinemaError
from microcinema.eval.longvideo import MAIN_RATES, benchmark_sequences, make_probe
from microcinema.systems.artv.task import parse_artv_config
from microcinema.training.common import load_config
from microcinema.training.config import ARTVProbe


def test_shipped_config_probes_apart_from_the_benchmark_prompts():
    parsed = parse_artv_config(load_config("artv"))
    probe = parsed.probe
    assert isinstance(probe, ARTVProbe) and probe.every == 1000 and probe.prompt_seed != 999
    captions = {s.caption for seq in benchmark_sequences(probe.num_sequences, seed=probe.prompt_seed,
                                                         frames_per_segment=probe.frames_per_segment,
                                                         num_segments=probe.num_segments) for s in seq}
    benchmark = {s.caption for seq in benchmark_sequences(50) for s in seq}
    assert len(captions - benchmark) > len(captions) // 2  # mostly other prompts than the benchmark's


@pytest.mark.parametrize("probe, message", [
    ({"every": 100, "num_sequence": 2}, "unknown key 'num_sequence' in section 'probe'"),
    ({"steps": 5}, "section 'probe' lacks every"),
    ({"every": 0}, "every must be an integer >= 1"),
    ({"every": 10, "frames_per_segment": 1}, "frames_per_segment must be an integer >= 2"),
    ({"every": 10, "seed": -1}, "seed must be an integer >= 0"),
    ({"every": 10, "pipeline": {"guidance": 2.0}}, "pipeline must map settings among sampler"),
])
def test_bad_probe_sections_are_one_line_errors(probe, message):
    config = {**load_config("artv"), "probe": probe}
    with pytest.raises(MicroCinemaError, match=message) as info:
        parse_artv_config(config)
    assert "\n" not in str(info.value)


def test_probe_needs_procedural_data():
    config = {**load_config("artv"), "data": {"type": "captions", "table": "x.csv", "num_frames": 8, "fps": 8}}
    with pytest.raises(MicroCinemaError, match="section 'probe' judges videos against the procedural"):
        parse_artv_config(config)
    config.pop("probe")
    assert parse_artv_config(config).probe is None


def tiny_artv_parts(tmp_path):
    from microcinema.systems.artv.model import ARTVModel
    from microcinema.testing import tiny_unet2d, tiny_vae

    torch.manual_seed(0)
    vae = tiny_vae((8, 16, 16))  # x4: 32 px frames -> 8x8 latents
    model = ARTVModel.from_unet(tiny_unet2d(cross_attention_dim=384, sample_size=8),
                                mask_block_out_channels=[8, 8], mask_layers_per_block=1).eval()
    return vae, model


def test_probe_returns_the_main_rates_the_same_whatever_the_global_rng(tmp_path):
    vae, model = tiny_artv_parts(tmp_path)
    probe = make_probe(vae, "minilm", num_sequences=2, frames_per_segment=3, num_segments=2, steps=2, size=32)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = probe(model, 10)
    assert torch.equal(torch.get_rng_state(), state), "the probe must not draw from torch's global RNG"
    torch.manual_seed(2)
    assert probe(model, 20) == first
    assert set(first) == set(MAIN_RATES)
    for name, value in first.items():
        assert value is None or (0 <= value <= 1 if "contrast" not in name else value >= 0), (name, value)
    assert first["background_kept_every_frame"] is not None


def test_probed_run_trains_exactly_as_an_unprobed_one_and_plots(tmp_path):
    from safetensors.torch import load_file

    from microcinema.cli import main
    from microcinema.testing import tiny_unet2d, tiny_vae

    tiny_vae((8, 16, 16)).save_pretrained(tmp_path / "vae")
    tiny_unet2d(cross_attention_dim=384, sample_size=8).save_pretrained(tmp_path / "t2i")
    config = load_config("artv")
    config.pop("_path")
    config.update(vae=str(tmp_path / "vae"), init_from=str(tmp_path / "t2i"),
                  model={"mask_block_out_channels": [8, 8], "mask_layers_per_block": 1})
    config["data"] = {**config["data"], "num": 4, "num_frames": 6, "size": 32}
    config["train"] = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 10,
                       "log_every": 1, "ema_decay": 0.9, "progress_bar": False}
    config["probe"] = {"every": 2, "num_sequences": 1, "frames_per_segment": 2, "num_segments": 2, "steps": 1}
    weights = {}
    for name, probe in (("probed", config["probe"]), ("plain", None)):
        run_config = {**config, "probe": probe}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(run_config))
        extra = ["--plot"] if probe else []
        assert main(["train", "artv", "--config", str(path), "--output-dir", str(tmp_path / name), *extra]) == 0
        weights[name] = load_file(str(tmp_path / name / "final" / "diffusion_pytorch_model.safetensors"))
    assert weights["probed"].keys() == weights["plain"].keys()
    assert all(torch.equal(weights["probed"][k], weights["plain"][k]) for k in weights["plain"])
    records = [json.loads(line) for line in (tmp_path / "probed" / "probe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]  # every 2 steps and at the end
    assert set(MAIN_RATES) <= set(records[0])
    assert (tmp_path / "probed" / "probe.png").stat().st_size > 0
    assert not (tmp_path / "plain" / "probe.jsonl").exists()


def test_probe_pipeline_settings_reach_the_pipeline(monkeypatch):
    """``probe: pipeline:`` sets the probe's sampling (sampler, guidance, reference level) instead of the paper's."""
    import microcinema.systems.artv.pipeline as artv_pipeline

    config = {**load_config("artv"), "probe": {"every": 5, "pipeline": {"sampler": "ddim", "ref_noise_level": 0}}}
    parsed = parse_artv_config(config)
    assert parsed.probe.pipeline == {"sampler": "ddim", "ref_noise_level": 0}
    seen = {}

    class Stop(Exception):
        pass

    def fake_pipeline(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(artv_pipeline, "ARTVPipeline", fake_pipeline)
    probe = make_probe(torch.nn.Identity(), text_encoder=object(), num_sequences=1, **parsed.probe.pipeline)

    with pytest.raises(Stop):
        probe(torch.nn.Linear(1, 1), 0)  # any model with a parameter: the probe only reads its device
    assert seen["sampler"] == "ddim" and seen["ref_noise_level"] == 0 and seen["num_inference_steps"] == 6
