"""Training-step and key-frame time of candidate stage-one U-Nets (2 threads)."""
import time, torch
from diffusers import UNet2DConditionModel
torch.set_num_threads(2)
base = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64, 128],
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
            cross_attention_dim=384, attention_head_dim=[2, 4, 8], use_linear_projection=True, norm_num_groups=16)
variants = {"shipped": {}, "48/96/128": dict(block_out_channels=[48, 96, 128], attention_head_dim=[3, 6, 8]),
            "64/64/128": dict(block_out_channels=[64, 64, 128], attention_head_dim=[4, 4, 8]),
            "lpb2": dict(layers_per_block=2)}
for name, v in variants.items():
    m = UNet2DConditionModel(**{**base, **v})
    n = sum(p.numel() for p in m.parameters()) / 1e6
    opt = torch.optim.AdamW(m.parameters(), 1e-4)
    x = torch.randn(32, 4, 16, 16); c = torch.randn(32, 32, 384); t = torch.randint(0, 1000, (32,))
    ts = []
    for i in range(8):
        t0 = time.perf_counter(); loss = m(x, t, encoder_hidden_states=c).sample.square().mean(); loss.backward(); opt.step(); opt.zero_grad(); ts.append(time.perf_counter() - t0)
    m.eval(); xs = torch.randn(2, 4, 16, 16); cs = torch.randn(2, 32, 384)
    with torch.no_grad():
        for _ in range(3): m(xs, t[:2], encoder_hidden_states=cs)
        t0 = time.perf_counter()
        for _ in range(50): m(xs, t[:2], encoder_hidden_states=cs)
        inf = time.perf_counter() - t0
    print(f"{name}: {n:.2f} M params, train step b32 {sorted(ts)[4]*1000:.0f} ms, 25 CFG steps (50 evals b2) {inf:.3f} s")
