"""The web UI: ``microcinema ui`` (:mod:`microcinema.ui.app`), its jobs without the web
(:mod:`microcinema.ui.backend`, :mod:`microcinema.ui.jobs`) and the store of past runs (:mod:`microcinema.ui.runs`)."""
