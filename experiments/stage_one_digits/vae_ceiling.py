"""How legible are digits after the embedded VAE's round trip? (the ceiling stage one can reach)"""
import numpy as np, torch
from microcinema.data.synthetic import sample_clip, render_frame
from microcinema.training.common import load_vae
from microcinema.eval.judge import judge_frames, default_object_classifier

torch.set_num_threads(2)
specs = [sample_clip(i, seed=777, split="train", num_frames=9, fps=2.0, digit_weight=100.0) for i in range(300)]
specs = [s for s in specs if s.object.startswith("digit")][:250]
frames = np.stack([render_frame(s, 0) for s in specs])
vae = load_vae("embedded").eval()
with torch.no_grad():
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = vae.encode(x).latent_dist.mode()
    rec = vae.decode(z).sample
rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
clf = default_object_classifier()
for name, fr in (("ground truth", frames), ("vae round trip", rec)):
    js = judge_frames(fr, clf)
    acc = np.mean([j.object == s.object for j, s in zip(js, specs)])
    print(f"{name}: digits right {acc:.1%} of {len(specs)}")
    from collections import Counter
    print(Counter((s.object, j.object) for j, s in zip(js, specs) if j.object != s.object).most_common(8))
