"""The page a visitor sees while the app downloads and loads its models (a first start of a real
profile, or a Space waking up): each file's progress, then a reload into the chat once it is up.
launch.py serves it on the chat's own address and replaces it with the chat when ready."""

from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager

import gradio as gr

TITLE = "Cogumi Chat · starting"
# A reason on one line ran off the page, the command to fix it with it (a code block keeps its lines as written).
WRAP_THE_REASON = "#startup-status pre, #startup-status pre code { white-space: pre-wrap; overflow-wrap: anywhere; }"
# Once the start has failed, the process ends and Gradio's client says "Connection to the server was lost.
# Attempting reconnection...": no reconnection comes, and on a phone it covered the reason (QA 26 #3).
NO_RECONNECTING_AFTER_A_FAILURE = "body:has(#startup-status.failed) .toast-wrap { display: none; }"
FAILURE_SHOWN_S = 3.0  # the page polls every second: three chances to fetch why the start failed
# Once the models are ready the chat replaces this page on the same address: poll until the
# address serves the chat (its title changes), then reload into it.
RELOAD_WHEN_READY = """(status) => {
  if (!status || !status.includes("Starting the chat") || window.__cogumiPolling) return;
  window.__cogumiPolling = true;
  setInterval(async () => {
    try {
      const config = await (await fetch("/config", {cache: "no-store"})).json();
      if (config.title && config.title !== "%s") location.reload();
    } catch (e) {}
  }, 1000);
}""" % TITLE


class StartupProgress:
    """What the start is doing, written by the loading thread and read by the page."""

    def __init__(self):
        self._lock = threading.Lock()
        self.files: dict[str, tuple[int, int]] = {}  # what → (bytes done, bytes in all)
        self.stage = "Checking the model files…"
        self.error: str | None = None

    def update(self, what: str, done: int, total: int) -> None:
        with self._lock:
            self.files[what] = (done, total)
            self.stage = "Downloading the model files (they are kept: the next start is quick)…"

    def set_stage(self, stage: str) -> None:
        with self._lock:
            self.stage = stage

    def fail(self, error: str) -> None:
        with self._lock:
            self.error = error

    def markdown(self) -> str:
        with self._lock:
            if self.error:
                return (f"## Cogumi Chat could not start\n\n**The app could not start.** It has stopped: do what "
                        f"this says, then start it again.\n\n```\n{self.error}\n```")
            lines = ["## Cogumi Chat is starting", "", f"**{self.stage}**", ""]
            for what, (done, total) in sorted(self.files.items()):
                lines.append(f"- `{what}`: {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB ({done / max(total, 1):.0%})")
            return "\n".join(lines)


class HubRetries(logging.Handler):
    """huggingface_hub's warnings that it is trying a request again, said on the page as they come: offline, it
    tries five times over about 25 s, and the page read "Checking the model files…" all the while (QA 24)."""

    def __init__(self, progress: StartupProgress):
        super().__init__(logging.WARNING)
        self.progress, self.error = progress, "no reply"

    def emit(self, record: logging.LogRecord) -> None:
        said = record.getMessage()
        thrown = re.match(r"'(.+)' thrown while requesting", said)  # the warning just before each retry
        if thrown:
            self.error = thrown[1]
        retry = re.match(r"Retrying in (\S+) \[Retry (\d+)/(\d+)\]", said)
        if retry:
            self.progress.set_stage(f"The HuggingFace Hub does not answer ({self.error}): retrying in {retry[1]} "
                                    f"({retry[2]} of {retry[3]})…")


@contextmanager
def hub_retries_shown_on(progress: StartupProgress):
    """While the models are fetched, the Hub client's retries are said on the page too."""
    handler, hub_log = HubRetries(progress), logging.getLogger("huggingface_hub")
    hub_log.addHandler(handler)
    try:
        yield
    finally:
        hub_log.removeHandler(handler)


def build_startup_ui(progress: StartupProgress) -> gr.Blocks:
    def status() -> gr.Markdown:  # marked "failed" once the start has failed: NO_RECONNECTING_AFTER_A_FAILURE
        failed = ["failed"] if progress.error else []
        return gr.Markdown(progress.markdown(), elem_id="startup-status", elem_classes=failed)

    with gr.Blocks(title=TITLE) as page:
        shown = status()
        timer = gr.Timer(1.0)
        timer.tick(status, None, shown, show_progress="hidden").then(
            None, shown, None, js=RELOAD_WHEN_READY)
    return page


class StartupPage:
    """The startup page served on the chat's address until close() (safe to call twice)."""

    def __init__(self, host: str, port: int, inbrowser: bool):
        self.progress = StartupProgress()
        self.blocks = build_startup_ui(self.progress)
        self.blocks.launch(server_name=host, server_port=port, inbrowser=inbrowser, prevent_thread_lock=True,
                           quiet=True, css=WRAP_THE_REASON + NO_RECONNECTING_AFTER_A_FAILURE)

    def hub_retries_shown(self):
        return hub_retries_shown_on(self.progress)

    def show_failure(self, error: str) -> None:
        """Put the reason on the page, and keep serving it long enough for an open page to fetch it (it asks
        every second) before the process ends and takes the page down with it."""
        self.progress.fail(error)
        time.sleep(FAILURE_SHOWN_S)

    def close(self) -> None:
        if self.blocks is not None:
            self.blocks.close()
            self.blocks = None
