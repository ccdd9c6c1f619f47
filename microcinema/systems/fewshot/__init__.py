"""The recurrent few-shot system (recurrent few-shot paper): tune a few layers of an image model on 8-16 clips of
one motion. :mod:`.inflation` (pseudo-3D U-Net with sparse-causal or recurrent causal attention, trainable
parameters), :mod:`.structured_noise` (independent, shared and auto-regressive noise priors)."""
