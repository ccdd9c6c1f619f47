"""The recurrent few-shot system (recurrent few-shot paper): tune a few layers of an image model on 8-16 clips of
one motion. :mod:`.inflation` (pseudo-3D U-Net with sparse-causal or recurrent causal attention, trainable
parameters), :mod:`.structured_noise` (independent, shared and auto-regressive noise priors), :mod:`.base` (the
base text-to-image model and its fingerprint), :mod:`.adapter` (the adapter file: trained parameters + metadata),
:mod:`.data` (tuning clips: the user's, and procedural clips of new motions), :mod:`.memory` (memory estimate),
:mod:`.task` (tuning on the shared trainer), :mod:`.pipeline` (:class:`FewShotPipeline`), :mod:`.cli`
(``microcinema fewshot``)."""
