"""The startup page's words while the models are fetched (app/startup.py)."""

from __future__ import annotations

import logging

from app.startup import StartupProgress, hub_retries_shown_on


def test_the_hubs_retries_are_said_on_the_page_not_only_on_the_terminal():
    """QA 24 #2: with no network the page read "Checking the model files…" for the half a minute the Hub client
    spent retrying, and a visitor could not tell waiting from trying."""
    progress = StartupProgress()
    hub_log = logging.getLogger("huggingface_hub.utils._http")
    with hub_retries_shown_on(progress):
        hub_log.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/x")
        hub_log.warning("Retrying in 2s [Retry 2/5].")
        said = progress.markdown()
    assert "The HuggingFace Hub does not answer ([Errno -2] Name or service not known)" in said, said
    assert "retrying in 2s (2 of 5)" in said, said
    hub_log.warning("Retrying in 4s [Retry 3/5].")  # once the download is over, the page is left alone
    assert progress.markdown() == said
