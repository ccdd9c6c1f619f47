"""The web UI (gradio): one tab per system (MicroCinema, ART-V, few-shot tuning) and a gallery of past runs.

The page only shows the events of the jobs in :mod:`microcinema.ui.backend`. One job runs at a time (the models
share the CPU or GPU): the others wait in a queue of at most ``max_queue`` requests, and a request beyond that
is told the queue is full. Every long step reports progress; the cancel button stops the session's job at its
next sampling or training step. Input errors appear in the page as one line (and as a gradio error toast).

    microcinema ui                       # http://127.0.0.1:7860, the embedded models, offline
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from microcinema.core.errors import MicroCinemaError, first_line
from microcinema.ui.backend import MAX_ARTV_FRAMES, MAX_CLIPS, MIN_CLIPS, Studio
from microcinema.ui.jobs import Cancelled, Event, JobRegistry, run_job
from microcinema.ui.runs import Run

#: Requests that may wait for the models (beyond them: "the queue is full").
DEFAULT_MAX_QUEUE = 4
#: The id of the one concurrency slot every model job shares.
MODELS = "models"
#: Pixels the 64x64 embedded frames are shown at.
SHOW = 256

DEFAULT_SEGMENTS = [["a red circle moving left", 16], ["a red circle moving up", 16]]


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings
    try:
        import gradio as gr
    except ImportError:
        raise MicroCinemaError("the web UI needs gradio: pip install 'microcinema[ui]'") from None
    return gr


def error_text(error: BaseException) -> str:
    """The one line the page shows for a job's exception (never a stack trace)."""
    if isinstance(error, Cancelled):
        return "Cancelled."
    if isinstance(error, MicroCinemaError):
        return f"Error: {error}"
    return f"Error: something went wrong ({type(error).__name__}: {first_line(error)[:200]})"


def _upscaled(frame: Any) -> Any:
    from PIL import Image

    image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
    factor = max(1, SHOW // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _session(request: Any) -> str:
    """The browser session a request comes from (its job is the one its cancel button stops)."""
    return getattr(request, "session_hash", None) or "local"


def _run_markdown(run: Run) -> str:
    s = run.settings
    return (f"Done: {s['num_frames']} frames at {s['fps']:g} fps, **seed {s['seed']}**. "
            f"Same video from the command line: `{s['command']}`")


def offline_theme() -> Any:
    """gradio's default theme with system fonts: no web fonts to fetch, so the page works offline."""
    gr = _gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(studio: Studio, *, max_queue: int = DEFAULT_MAX_QUEUE) -> Any:
    """The gradio Blocks app on ``studio`` (queue configured: one job at a time, ``max_queue`` waiting)."""
    gr = _gradio()
    import pandas as pd

    registry = JobRegistry()

    def gallery_items() -> list[tuple[str, str]]:
        return [(str(r.preview), r.caption()) for r in studio.runs.list()]

    def finished(run: Run, video: Any, files: Any, status: Any, *notes: str) -> dict:
        """A tab's updates for a finished run: its video, downloads, the status line and the refreshed gallery."""
        return {video: str(run.mp4), files: [str(run.mp4), str(run.gif)],
                status: " ".join([*notes, _run_markdown(run)]), runs_gallery: gallery_items()}

    def drive(request: Any, progress: Any, target: Callable, status: Any,
              on_event: Callable[[Event], dict | None], on_done: Callable[[Any], dict]) -> Iterator[dict]:
        """Run ``target(job)``, turning its events into page updates; errors end as one line in ``status``."""
        session = _session(request)
        job = registry.start(session)
        try:
            yield {status: "Working..."}
            for event in run_job(target, job):
                if event.kind == "progress":
                    fraction, text = event.payload
                    progress(fraction, desc=text)
                elif event.kind == "error":
                    yield {status: error_text(event.payload)}
                    if not isinstance(event.payload, Cancelled):
                        raise gr.Error(error_text(event.payload).removeprefix("Error: "), print_exception=False)
                    return
                elif event.kind == "done":
                    yield on_done(event.payload)
                else:
                    update = on_event(event)
                    if update:
                        yield update
        finally:
            registry.finish(session, job)

    def waiting_for_models() -> int:
        """Requests waiting in the models' queue (gradio keeps one queue per concurrency id)."""
        groups = getattr(getattr(demo, "_queue", None), "event_queue_per_concurrency_id", None) or {}
        group = groups.get(MODELS)
        return len(group.queue) if group is not None else 0

    def admit(*inputs: Any) -> list:
        """The validator of every model job (gradio runs it before the job enters the queue, for the page and
        API clients alike): when ``max_queue`` requests already wait, the job is refused and the message shows
        on its first input. gradio's own ``max_size`` is not used: it would refuse the cancel button too."""
        waiting = waiting_for_models()
        full = waiting >= max_queue
        message = (f"The queue is full: {waiting} request(s) are waiting for the one that is running (the limit "
                   f"is {max_queue}). Try again when a video has finished.") if full else ""
        return [gr.validate(not full or i > 0, message if i == 0 else "") for i in range(len(inputs))]

    def cancel(request: gr.Request) -> str:
        session = _session(request)
        return "Cancelling..." if registry.cancel(session) else "Nothing is running."

    def seed_boxes(prefix: str) -> tuple[Any, Any]:
        """The seed input (-1: random) and the read-only seed the last run used."""
        return (gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id=f"{prefix}-seed"),
                gr.Textbox(label="Seed used", interactive=False, elem_id=f"{prefix}-seed-used"))

    def run_buttons(go_id: str, cancel_id: str, label: str = "Generate") -> tuple[Any, Any]:
        with gr.Row():
            return (gr.Button(label, variant="primary", elem_id=go_id),
                    gr.Button("Cancel", variant="stop", elem_id=cancel_id))

    def result_column(prefix: str, image_label: str | None, video_label: str, image_id: str = "",
                      status_id: str = "", video_height: int = SHOW) -> tuple[Any, Any, Any, Any]:
        """Status line, optional image, video and downloads of a tab's right-hand column."""
        status = gr.Markdown(elem_id=status_id or f"{prefix}-status")
        image = None if image_label is None else gr.Image(label=image_label, interactive=False, height=SHOW,
                                                          elem_id=image_id)
        video = gr.Video(label=video_label, interactive=False, autoplay=True, loop=True, height=video_height,
                         elem_id=f"{prefix}-video")
        files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
        return status, image, video, files

    with gr.Blocks(title="MicroCinema") as demo:
        gr.Markdown("# MicroCinema\nText to video with diffusion models: MicroCinema (key frame, then video), "
                    "ART-V (long multi-prompt videos, frame by frame) and few-shot motion tuning. "
                    f"Models: `{studio.model or 'embedded'}` (64x64 procedural shapes when embedded).")
        with gr.Tabs():
            # ---------------------------------------------------------------- MicroCinema
            with gr.Tab("MicroCinema", id="microcinema"):
                with gr.Row():
                    with gr.Column():
                        mc_prompt = gr.Textbox(label="Prompt", placeholder="a red circle moving left",
                                               elem_id="mc-prompt")
                        mc_image = gr.Image(label="Key frame (optional; fitted to the model's size)", type="pil",
                                            image_mode=None,
                                            sources=["upload", "clipboard"], elem_id="mc-image")
                        mc_negative = gr.Textbox(label="Negative prompt", elem_id="mc-negative")
                        with gr.Row():
                            mc_steps = gr.Number(label="Steps (0: the model's)", value=0, precision=0,
                                                 elem_id="mc-steps")
                            mc_guidance = gr.Textbox(label="Guidance (empty: the model's)", value="",
                                                     elem_id="mc-guidance")
                            mc_frames = gr.Number(label="Base frames (odd)", value=9, precision=0,
                                                  elem_id="mc-frames")
                        with gr.Row():
                            mc_seed, mc_seed_used = seed_boxes("mc")
                        mc_go, mc_stop = run_buttons("mc-generate", "mc-cancel")
                    with gr.Column():
                        mc_status, mc_key, mc_video, mc_files = result_column("mc", "Key frame", "Video",
                                                                              image_id="mc-key")

            # ---------------------------------------------------------------- ART-V
            with gr.Tab("ART-V", id="artv"):
                with gr.Row():
                    with gr.Column():
                        av_segments = gr.Dataframe(
                            value=DEFAULT_SEGMENTS, headers=["prompt", "frames"], datatype=["str", "number"],
                            column_count=(2, "fixed"), row_count=2, interactive=True,
                            label=f"Prompts in order, with their frames (at most {MAX_ARTV_FRAMES} in all)",
                            elem_id="av-segments")
                        av_image = gr.Image(label="First frame (optional)", type="pil", image_mode=None,
                                            sources=["upload", "clipboard"],
                                            elem_id="av-image")
                        with gr.Row():
                            av_steps = gr.Number(label="Steps per frame (0: the model's)", value=0, precision=0,
                                                 elem_id="av-steps")
                            av_guidance = gr.Textbox(label="Text guidance (empty: the model's)", value="",
                                                     elem_id="av-guidance")
                            av_seed, av_seed_used = seed_boxes("av")
                        av_go, av_stop = run_buttons("av-generate", "av-cancel")
                    with gr.Column():
                        av_status, av_frame, av_video, av_files = result_column(
                            "av", "Latest frame", "Video (grows as it is made)", image_id="av-frame")

            # ---------------------------------------------------------------- few-shot
            with gr.Tab("Few-shot", id="fewshot"):
                gr.Markdown(f"Teach the model a motion from {MIN_CLIPS}-{MAX_CLIPS} clips of it, then generate it "
                            "for other things, next to the untuned model with the same seed.")
                with gr.Row():
                    with gr.Column():
                        fs_clips = gr.File(label=f"Clips ({MIN_CLIPS}-{MAX_CLIPS} videos of one motion)",
                                           file_count="multiple", file_types=["video"], elem_id="fs-clips")
                        fs_caption = gr.Textbox(label="Caption of the clips", placeholder="a red circle bouncing",
                                                elem_id="fs-caption")
                        with gr.Row():
                            fs_steps = gr.Number(label="Tuning steps", value=300, precision=0, elem_id="fs-steps")
                            fs_lr = gr.Number(label="Learning rate", value=2e-4, elem_id="fs-lr")
                            fs_frames = gr.Number(label="Frames", value=8, precision=0, elem_id="fs-frames")
                            fs_fps = gr.Number(label="Frames per second", value=2, elem_id="fs-fps")
                        with gr.Row():
                            fs_attention = gr.Radio(["recurrent", "sparse-causal"], value="recurrent",
                                                    label="Attention", elem_id="fs-attention")
                            fs_noise = gr.Radio(["independent", "shared", "autoregressive"], value="autoregressive",
                                                label="Noise prior", elem_id="fs-noise")
                        fs_train, fs_stop = run_buttons("fs-train", "fs-cancel", "Tune")
                    with gr.Column():
                        fs_status = gr.Markdown(elem_id="fs-status")
                        fs_loss = gr.LinePlot(x="step", y="loss", title="Tuning loss", height=220, elem_id="fs-loss")
                        fs_sample = gr.Video(label="Sample during tuning (the caption)", interactive=False,
                                             autoplay=True, loop=True, height=SHOW // 2, elem_id="fs-sample")
                with gr.Row():
                    with gr.Column():
                        fs_adapter = gr.Textbox(label="Adapter file", elem_id="fs-adapter")
                        fs_prompt = gr.Textbox(label="Prompt", placeholder="a yellow star bouncing",
                                               elem_id="fs-prompt")
                        with gr.Row():
                            fs_gen_steps = gr.Number(label="Steps", value=25, precision=0, elem_id="fs-gen-steps")
                            fs_seed, fs_seed_used = seed_boxes("fs")
                        fs_go, fs_gen_stop = run_buttons("fs-generate", "fs-gen-cancel")
                    with gr.Column():
                        fs_gen_status, _, fs_video, fs_files = result_column(
                            "fs", None, "Tuned (left) | untuned base (right), same seed", status_id="fs-gen-status")

            # ---------------------------------------------------------------- gallery
            with gr.Tab("Past runs", id="runs"):
                runs_refresh = gr.Button("Refresh", elem_id="runs-refresh")
                runs_gallery = gr.Gallery(value=gallery_items, label="Past runs (newest first)", columns=6,
                                          allow_preview=False, elem_id="runs-gallery")
                runs_settings = gr.JSON(label="Settings of the selected run", elem_id="runs-settings")
                runs_video = gr.Video(label="Selected run", interactive=False, height=SHOW, elem_id="runs-video")
                runs_files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="runs-files")

        # -------------------------------------------------------------------- handlers
        def model_job(button: Any, stop: Any, handler: Callable, inputs: list, outputs: list, api_name: str) -> None:
            """Wire a model job: one at a time (the shared concurrency id), refused by :func:`admit` when the
            queue is full, stopped by its cancel button (which writes the tab's status, ``outputs[0]``)."""
            event = button.click(handler, inputs, outputs, concurrency_limit=1, concurrency_id=MODELS,
                                 validator=admit, api_name=api_name)
            stop.click(cancel, None, outputs[0], cancels=[event], queue=False)

        def mc_handler(prompt, image, negative, steps, guidance, frames, seed, request: gr.Request,
                       progress=gr.Progress()):
            fitted: list[str] = []

            def on_event(event: Event) -> dict | None:
                if event.kind == "seed":
                    return {mc_seed_used: event.payload, mc_status: f"Seed {event.payload}: making the key frame..."}
                if event.kind == "key_frame":
                    return {mc_key: _upscaled(event.payload)}
                if event.kind == "notes" and event.payload:
                    fitted.append("Your image was " + "; ".join(event.payload) + ".")
                    return {mc_status: fitted[0]}
                return None

            def on_done(run: Run) -> dict:
                return finished(run, mc_video, mc_files, mc_status, *fitted)

            yield from drive(request, progress, lambda job: studio.microcinema(
                job, prompt, image, negative, steps, guidance, seed, frames), mc_status, on_event, on_done)

        model_job(mc_go, mc_stop, mc_handler,
                  [mc_prompt, mc_image, mc_negative, mc_steps, mc_guidance, mc_frames, mc_seed],
                  [mc_status, mc_seed_used, mc_key, mc_video, mc_files, runs_gallery], "microcinema")

        def av_handler(segments, image, steps, guidance, seed, request: gr.Request, progress=gr.Progress()):
            def on_event(event: Event) -> dict | None:
                if event.kind == "seed":
                    return {av_seed_used: event.payload, av_status: f"Seed {event.payload}: generating..."}
                if event.kind == "frame":
                    index, total, frame = event.payload
                    return {av_frame: _upscaled(frame), av_status: f"Frame {index + 1} of {total}"}
                if event.kind == "partial":
                    return {av_video: str(event.payload)}
                if event.kind == "notes" and event.payload:
                    return {av_status: "Note: " + "; ".join(event.payload)}
                return None

            def on_done(run: Run) -> dict:
                return finished(run, av_video, av_files, av_status)

            yield from drive(request, progress, lambda job: studio.artv(job, segments, image, steps, guidance, seed),
                             av_status, on_event, on_done)

        model_job(av_go, av_stop, av_handler, [av_segments, av_image, av_steps, av_guidance, av_seed],
                  [av_status, av_seed_used, av_frame, av_video, av_files, runs_gallery], "artv")

        def fs_train_handler(files, caption, steps, lr, frames, fps, attention, noise, request: gr.Request,
                             progress=gr.Progress()):
            points: list[tuple[int, float]] = []

            def on_event(event: Event) -> dict | None:
                if event.kind == "loss":
                    points.extend(event.payload)
                    return {fs_loss: pd.DataFrame(points, columns=["step", "loss"])}
                if event.kind == "sample":
                    step, path = event.payload
                    return {fs_sample: str(path), fs_status: f"Sample at step {step}."}
                if event.kind == "notes":
                    return {fs_status: " ".join(event.payload)}
                return None

            def on_done(report: dict) -> dict:
                return {fs_adapter: report["adapter"], fs_prompt: report["caption"],
                        fs_status: f"Tuned {report['steps']} steps in {report['train_seconds']:.0f} s: "
                                   f"adapter `{report['adapter']}` ({report['adapter_bytes'] / 2**20:.2f} MiB). "
                                   "Now generate the motion for something else below."}

            yield from drive(request, progress, lambda job: studio.fewshot_train(
                job, files, caption, steps, lr, attention, noise, num_frames=frames, fps=fps), fs_status, on_event,
                on_done)

        model_job(fs_train, fs_stop, fs_train_handler,
                  [fs_clips, fs_caption, fs_steps, fs_lr, fs_frames, fs_fps, fs_attention, fs_noise],
                  [fs_status, fs_loss, fs_sample, fs_adapter, fs_prompt], "fewshot_train")

        def fs_gen_handler(adapter, prompt, steps, seed, request: gr.Request, progress=gr.Progress()):
            def on_event(event: Event) -> dict | None:
                if event.kind == "seed":
                    return {fs_seed_used: event.payload, fs_gen_status: f"Seed {event.payload}: generating..."}
                return None

            def on_done(run: Run) -> dict:
                return finished(run, fs_video, fs_files, fs_gen_status)

            yield from drive(request, progress, lambda job: studio.fewshot_generate(job, adapter, prompt, seed, steps),
                             fs_gen_status, on_event, on_done)

        model_job(fs_go, fs_gen_stop, fs_gen_handler, [fs_adapter, fs_prompt, fs_gen_steps, fs_seed],
                  [fs_gen_status, fs_seed_used, fs_video, fs_files, runs_gallery], "fewshot_generate")

        def select_run(event: gr.SelectData) -> tuple:
            runs = studio.runs.list()
            if event.index is None or event.index >= len(runs):
                return None, None, None
            run = runs[event.index]
            return run.settings, str(run.mp4), [str(run.mp4), str(run.gif)]

        runs_refresh.click(gallery_items, None, runs_gallery, queue=False)
        runs_gallery.select(select_run, None, [runs_settings, runs_video, runs_files], queue=False)

    demo.queue(max_size=None, default_concurrency_limit=1)
    return demo


def launch(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, max_queue: int = DEFAULT_MAX_QUEUE,
           open_browser: bool = False, block: bool = True) -> Any:
    """Build and serve the app; returns the Blocks (``block=False``: the server runs in the background)."""
    demo = build_app(studio, max_queue=max_queue)
    demo.launch(server_name=host, server_port=port, inbrowser=open_browser, prevent_thread_lock=not block,
                allowed_paths=[str(Path(studio.outputs).resolve())], theme=offline_theme(), quiet=True,
                show_error=True)
    return demo


__all__ = ["DEFAULT_MAX_QUEUE", "build_app", "error_text", "launch", "offline_theme"]
