"""The page's controls as build_ui makes them (no browser: what each says before anything is clicked)."""

from __future__ import annotations

from app.chat import ChatService, ChatSettings
from app.memory import Memory
from app.ui import build_ui


def component(demo, elem_id: str):
    (found,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    return found


def test_speculative_decoding_says_why_it_cannot_be_turned_on(engine, tmp_path):
    """QA 22 #3: with no draft model loaded (--no-draft, or --model without --draft) the box was greyed out and
    still read "a small draft model proposes tokens…", with nothing to say why it could not be turned on."""
    service = ChatService(engine, Memory(tmp_path / "sessions.db"), ChatSettings())
    assert service.engine.draft is None
    box = component(build_ui(service), "use-draft")
    assert box.value is False and box.interactive is False
    assert box.info.startswith("off: no draft model is loaded") and "--draft" in box.info and "--no-draft" in box.info


def test_a_failure_of_sessions_db_in_the_page_says_what_was_not_done():
    """QA 28 #2: opening a chat, searching and 👍 said only what failed in sessions.db, not what was not done. In the
    page it is a notice and nothing drawn changes (QA 29 #1: a gr.Error marked the chat, the list and the panel
    "Error", blank until drawn again); an API caller gets it as its error."""
    import gradio as gr
    import pytest

    from app.memory import SessionStoreError
    from app.ui import explained

    def on_like():
        raise SessionStoreError("sessions.db: the table feedback, which this app made in it, is missing: …")

    def feedback_api():
        raise SessionStoreError("sessions.db: locked")

    with pytest.warns(UserWarning, match="^Your 👍/👎 was not saved. sessions.db: the table feedback"):
        assert explained(on_like)() == gr.skip()
    with pytest.raises(gr.Error) as caught:
        explained(feedback_api)()
    assert caught.value.message == "The feedback was not saved. sessions.db: locked"
