"""The training probe (50 digit + 20 shape prompts, seed 555) on a saved text-to-image model.
    python experiments/stage_one_digits/probe_model.py [MODEL_DIR]   (default: the shipped embedded model)"""
import json, sys, time
from microcinema.eval.stage_one import make_probe
from microcinema.pipelines.text_to_image import TextToImagePipeline

pipe = TextToImagePipeline.embedded() if len(sys.argv) < 2 else TextToImagePipeline.from_pretrained(sys.argv[1])
t = time.time()
print(json.dumps({**make_probe(pipe.vae)(pipe.unet, 0), "seconds": round(time.time() - t, 1)}))
