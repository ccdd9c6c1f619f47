"""experiments/artv/ablations.py (issue 17 item 10) end to end on tiny random ART-V models: every row on the same
sequences, the anchor dropped at inference, the mean mask per sampling step, the table and plots; and the two
ablation configs, which must stay the embedded recipe but for the ablated key."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from microcinema.systems.artv.model import ARTVModel
from microcinema.systems.artv.pipeline import ARTVPipeline
from microcinema.systems.artv.task import parse_artv_config
from microcinema.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_unet2d, tiny_vae
from microcinema.training.common import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "artv"
D = 32


@pytest.fixture(scope="module")
def ablations():
    spec = importlib.util.spec_from_file_location("artv_ablations", EXPERIMENTS / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_artv(path: Path, masked_diffusion: bool = True, seed: int = 1) -> Path:
    """A tiny random ART-V pipeline folder (16x16 latents, x2 VAE: 32 px frames), its new parts randomised."""
    torch.manual_seed(0)
    model = ARTVModel.from_unet(tiny_unet2d(cross_attention_dim=D, sample_size=16), masked_diffusion=masked_diffusion,
                                mask_block_out_channels=[8, 8], mask_layers_per_block=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in set(model.new_parameter_names()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pipe = ARTVPipeline(model.eval(), tiny_vae(), tiny_clip_text_model(hidden_size=D), tiny_clip_tokenizer(),
                        num_inference_steps=4)
    return pipe.save_pretrained(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("artv")
    return {"full": tiny_artv(root / "full"), "no_mask": tiny_artv(root / "no_mask", False)}


@pytest.fixture
def quick_row_plots(monkeypatch):
    """Each row's curves.png and grid.png (the benchmark's, tested in test_drift.py) as empty files: matplotlib
    would take most of this test's time."""
    import microcinema.core.video_io as video_io
    import microcinema.eval.longvideo as longvideo

    monkeypatch.setattr(longvideo, "plot_drift", lambda path, *a, **k: Path(path).touch())
    monkeypatch.setattr(video_io, "save_grid", lambda path, *a, **k: Path(path).touch())


def test_ablations_end_to_end_on_tiny_models(ablations, folders, quick_row_plots, tmp_path):
    full, no_mask = folders["full"], folders["no_mask"]
    no_anchor = full  # any ART-V model folder: the row samples it without the anchor
    out = tmp_path / "out"
    code = ablations.main(["--model", str(full), "--no-mask-model", str(no_mask), "--no-anchor-model", str(no_anchor),
                           "--out", str(out), "--num-sequences", "2", "--frames-per-segment", "2",
                           "--num-segments", "2", "--steps", "2", "--levels", "0,200"])
    assert code == 0
    result = json.loads((out / "ablations.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["full", "no_masked_diffusion", "no_anchor_trained", "no_anchor_inference", "ref_level_0",
                     "ref_level_200"]
    assert result["steps"] == 2 and result["size"] == 32
    # same sequences, seed and steps in every row that ran
    prompts = set()
    for name in names[:5]:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["seed"] == 0 and metrics["prompt_seed"] == 999 and metrics["frames"] == 4
        assert "2 steps per frame" in metrics["notes"][0]
        prompts.add(json.dumps([s["prompts"] for s in metrics["per_sequence"]]))
    assert len(prompts) == 1
    assert result["rows"][5]["motion_right_per_segment"] == result["rows"][0]["motion_right_per_segment"]
    # the mask per step: one point per sampling step, every sampled frame (3 per video) counted
    curve = result["mask_per_step"]
    assert [p["step"] for p in curve] == [1, 2] and all(p["frames"] == 6 for p in curve)
    assert all(0 < p["mean_mask"] < 1 for p in curve) and curve[0]["timestep"] > curve[1]["timestep"]
    table = (out / "ablations.md").read_text()
    assert "| row | what | motion right / segment |" in table and "| no_anchor_inference |" in table
    assert "the mean mask rises as denoising proceeds" in table
    for png in ("mask_per_step.png", "measures.png"):
        assert (out / png).stat().st_size > 0
    assert (out / "full" / "curves.png").exists() and (out / "ref_level_0" / "report.md").exists()


def test_missing_ablated_models_are_skipped_with_a_note(ablations, folders, quick_row_plots, tmp_path):
    result = ablations.run_ablations(folders["full"], tmp_path / "out", num_sequences=1, frames_per_segment=2, num_segments=2,
                                     steps=1, levels=[200])
    assert [r["name"] for r in result["rows"]] == ["full", "no_anchor_inference", "ref_level_200"]
    assert any("no_masked_diffusion skipped" in n for n in result["notes"])
    assert any("no_anchor_trained skipped" in n for n in result["notes"])
    claims = {c["claim"]: c["held"] for c in result["claims"]}
    assert claims["dropping masked diffusion makes the videos drift more (Fig. 8 a)"] is None
    # run again with an ablated model: the rows already made are reused (with the full row's mask curve)
    made = []
    real = ablations.run_longvideo

    def counting(make_video, out, **kw):
        made.append(Path(out).name)
        return real(make_video, out, **kw)

    ablations.run_longvideo = counting
    try:
        again = ablations.run_ablations(folders["full"], tmp_path / "out", no_mask_model=folders["no_mask"],
                                        num_sequences=1, frames_per_segment=2, num_segments=2, steps=1, levels=[200])
    finally:
        ablations.run_longvideo = real
    assert made == ["no_masked_diffusion"]
    assert [r["name"] for r in again["rows"]] == ["full", "no_masked_diffusion", "no_anchor_inference", "ref_level_200"]
    assert again["mask_per_step"] == result["mask_per_step"] and again["rows"][0] == result["rows"][0]


def test_without_anchor_samples_every_frame_without_the_anchor_and_restores(ablations, folders):
    pipe = ARTVPipeline.from_pretrained(folders["full"])
    pipe.set_progress_bar_config(disable=True)
    seen: list[bool] = []
    forward = pipe.unet.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("anchor") is not None)
        return forward(*args, **kwargs)

    pipe.unet.forward = spy
    prompts = [("a red circle moving left", 3), ("a red circle moving up", 3)]
    image = torch.zeros(3, 32, 32)
    with ablations.without_anchor(pipe):
        list(pipe.stream(prompts, image=image, num_inference_steps=1, output_type="latent"))
    assert seen and not any(seen)
    seen.clear()
    list(pipe.stream(prompts, image=image, num_inference_steps=1, output_type="latent"))
    assert seen and all(seen), "the pipeline has its anchor again after the context"


def test_ablation_configs_are_the_embedded_recipe_but_for_the_ablated_key():
    embedded = load_config("artv")
    for name, section, key, value in (("artv_no_mask", "model", "masked_diffusion", False),
                                      ("artv_no_anchor", "loss", "anchor_dropout", 1.0)):
        config = load_config(EXPERIMENTS / f"{name}.yaml")
        parse_artv_config(config)
        assert config[section][key] == value and embedded[section][key] != value
        config[section][key] = embedded[section][key]
        assert {k: v for k, v in config.items() if k != "_path"} == {k: v for k, v in embedded.items() if k != "_path"}


def test_mask_claim_needs_a_real_rise(ablations):
    """Fig. 4's claim holds only for a rise above the curve's wobble: the embedded model's flat curve (0.399 ->
    0.402) is not counted as rising; a climb is."""
    def curve(values):
        return [{"step": i + 1, "timestep": 900 - 100 * i, "mean_mask": v} for i, v in enumerate(values)]

    def held(values):
        (claim,) = [c for c in ablations.claims([], curve(values), 200) if "mean mask" in c["claim"]]
        return claim["held"]

    flat = [0.3985, 0.4004, 0.3933, 0.3836, 0.3790, 0.3789, 0.3825, 0.4206]
    assert held(flat) is False
    assert held([0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) is True
    assert held(list(reversed(flat))) is False
