"""FewShotPipeline (issue 18 item 5) and the training step under it (item 4): the structured noise prior as the
initial latents, an adapter loaded onto its base (and refused on another base or size), the untuned base for
--compare, and training that changes the paper's parameters only."""

from __future__ import annotations

import pytest
import torch

from microcinema.core.errors import MicroCinemaError
from microcinema.systems.fewshot.adapter import AdapterMetadata, save_adapter
from microcinema.systems.fewshot.base import load_base
from microcinema.systems.fewshot.pipeline import FewShotPipeline
from microcinema.systems.fewshot.structured_noise import structured_noise
from microcinema.testing import make_tiny_sd_pipeline


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("fewshot_base") / "sd")


def _adapter(path, pipe, **overrides):
    state = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
             for k, v in pipe.unet.trainable_state_dict().items()}
    values = dict(base=pipe.base, base_fingerprint=pipe.base_fingerprint, attention=pipe.unet.attention,
                  num_frames=3, height=32, width=32, fps=4.0, noise="autoregressive", noise_alpha=0.5, steps=1)
    return save_adapter(path, state, AdapterMetadata(**{**values, **overrides}))


def _run(pipe, seed=0, **kwargs):
    return pipe("a red ball bouncing", num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                output_type="latent", progress=False, **kwargs).frames


def test_untuned_pipeline_uses_the_structured_prior(base_dir):
    pipe = FewShotPipeline.from_base(str(base_dir), "sparse-causal", noise="shared", noise_alpha=0.4, num_frames=3)
    out = _run(pipe)
    assert out.shape == (1, 4, 3, 16, 16) and torch.isfinite(out).all()
    noise = structured_noise("shared", (1, 4, 3, 16, 16), torch.Generator().manual_seed(0), alpha=0.4)
    assert torch.equal(_run(pipe, seed=5, latents=noise), out)
    seen = []
    pipe("x", num_inference_steps=2, num_frames=2, output_type="latent", progress=False,
         callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {})
    assert seen == [0, 1]
    video = pipe("x", num_inference_steps=1, num_frames=2, output_type="np", progress=False).frames
    assert video.shape == (1, 2, 32, 32, 3)


def test_adapter_loads_onto_its_base_and_untuned_is_the_fresh_model(base_dir, tmp_path):
    untuned = FewShotPipeline.from_base(str(base_dir), "recurrent", noise="autoregressive", noise_alpha=0.5,
                                        num_frames=3)
    path = _adapter(tmp_path / "a.safetensors", untuned)
    pipe = FewShotPipeline.from_adapter(path)
    assert pipe.num_frames == 3 and pipe.fps == 4.0 and pipe.noise == "autoregressive" and pipe.noise_alpha == 0.5
    tuned = _run(pipe)
    reference = _run(untuned)
    assert not torch.allclose(tuned, reference)
    with pipe.untuned():
        assert torch.equal(_run(pipe), reference)
    assert torch.equal(_run(pipe), tuned)


def test_adapter_refused_on_another_base_size_or_attention(base_dir, tmp_path):
    pipe = FewShotPipeline.from_base(str(base_dir), "recurrent")
    other = make_tiny_sd_pipeline(tmp_path / "other", seed=1)
    path = _adapter(tmp_path / "a.safetensors", pipe)
    with pytest.raises(MicroCinemaError, match="tuned on base") as info:
        FewShotPipeline.from_adapter(path, base=str(other))
    assert "\n" not in str(info.value)
    tuned = FewShotPipeline.from_adapter(path)
    with pytest.raises(MicroCinemaError, match="tuned at 32x32"):
        _run(tuned, height=64, width=64)
    sparse = FewShotPipeline.from_base(str(base_dir), "sparse-causal")
    with pytest.raises(MicroCinemaError, match="recurrent attention"):
        sparse.load_adapter(path)
    with pytest.raises(MicroCinemaError, match="base model not found"):
        FewShotPipeline.from_adapter(_adapter(tmp_path / "b.safetensors", pipe, base=str(tmp_path / "gone")))


def test_training_changes_only_the_papers_parameters(base_dir, tmp_path):
    from safetensors.torch import load_file

    from microcinema.systems.fewshot.inflation import inflate_unet, mark_trainable
    from microcinema.systems.fewshot.task import TrainableView, _ClipLatents, make_loss_fn
    from microcinema.training.trainer import TrainConfig, Trainer

    base = load_base(str(base_dir))
    model = inflate_unet(base.unet, "recurrent")
    names = set(mark_trainable(model, log=None))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    items = [{"latents": torch.randn(4, 3, 8, 8, generator=g), "encoder_hidden_states": torch.randn(77, 32, generator=g)}
             for _ in range(2)]
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=1, learning_rate=1e-2,
                         ema_decay=None, checkpoint_every=1, progress_bar=False)
    Trainer(TrainableView(model), _ClipLatents(items), make_loss_fn(base.scheduler_config, "shared", 0.3), config).train()
    after = dict(model.named_parameters())
    frozen = [k for k in before if k not in names]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in names if ".memories." not in k or "w_hh" not in k)
    saved = TrainableView.unescape(load_file(str(tmp_path / "run" / "final" / "model.safetensors")))
    assert set(saved) == names  # checkpoints and export hold the adapter's parameters only
    ckpt = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert sum(f.stat().st_size for f in ckpt.rglob("*.safetensors")) < sum(v.numel() for v in saved.values()) * 4 + 65536


def test_memory_estimate_is_the_measured_unfused_forward():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from microcinema.systems.fewshot.inflation import inflate_unet, mark_trainable
    from microcinema.systems.fewshot.memory import estimate_memory
    from microcinema.testing import tiny_unet2d

    unet = tiny_unet2d()
    settings = dict(num_frames=4, latent_size=(8, 8), text_length=77, text_dim=32)
    estimate = estimate_memory(dict(unet.config), "recurrent", batch_size=1, **settings)
    model = inflate_unet(unet, "recurrent")
    names = mark_trainable(model, log=None)
    assert estimate.trainable_parameters == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert estimate.optimizer_bytes == 8 * estimate.trainable_parameters and estimate.ema_bytes == 0
    weights, saved = {id(p) for p in model.parameters()}, {}

    def pack(t):
        base = t._base if t._base is not None else t
        saved[id(base)] = (base, max(saved.get(id(base), (None, 0))[1], base.numel() * base.element_size()))
        return t

    with sdpa_kernel(SDPBackend.MATH), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(1, 4, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32))
    real = sum(size for key, (_, size) in saved.items() if key not in weights)
    assert abs(estimate.activations_bytes - real) <= 0.01 * real
    double = estimate_memory(dict(unet.config), "recurrent", batch_size=2, **{**settings, "num_frames": 8})
    assert double.activations_bytes > 3 * estimate.activations_bytes
    assert "activations" in estimate.describe() and estimate.total_bytes > estimate.activations_bytes
    with pytest.raises(MicroCinemaError, match="do not fit the base model"):
        estimate_memory(dict(unet.config), "recurrent", batch_size=1, **{**settings, "text_dim": 31})
