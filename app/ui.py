"""The Gradio layout. Callbacks only translate between components and ChatService; per-visitor
state (the open chat, the visitor's id) lives in gr.BrowserState and gr.State, never in module globals."""

from __future__ import annotations

import contextlib
import functools
import html
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from app import panel
from app.chat import AUTO, SAVE_RETRY_S, ChatService, no_such_chat, shown_value
from app.display import chat_labels, shown, stats_line, stored_stats_line
from app.memory import SessionStoreError
from router.decision import ROUTES

# QA 23: "see README" named no command and no file: a person reading the page can start a real set from here.
DEMO_BANNER = ("⚠️ **demo weights: replies are random text** — for a real model, start the app with "
               "`python launch.py --profile qwen2.5-1.5b` (a 1.8 GB download; README.md, \"Real models\")")
UI_FRAME_S = 0.04
FOLLOW_S = 0.5  # how often a page redraws a reply it is not streaming itself: the rate a reply is saved at
ENGINE_QUEUE = "engine"  # the Gradio queue every reply waits in (one engine, one reply at a time)
# The open chat when there is none: gr.BrowserState keeps only a value that is true in JavaScript (a None
# was not kept, and a reload reopened the chat open before). No session has this id.
NO_CHAT = "none"
LISTED_CHATS = 50
FEEDBACK = {True: "Like", False: "Dislike"}  # a stored 👍/👎 as the Chatbot's feedback options name it


# Before the Python callback: asks, and sends None (nothing deleted) unless the answer is OK; NO_CHAT if none is open.
# A chat deleted, the page is on no chat: a message sent before that is drawn begins a new one (as after New chat,
# cogumiNewChat), and the page's send count goes with it (delete_chat, as new_chat).
CONFIRM_DELETE = f"""(chat, visitor, on_screen, search) => {{
  const open = !!chat && chat !== "{NO_CHAT}";
  const yes = open && confirm("Delete this chat, with its router decisions and feedback? This cannot be undone.");
  if (yes) window.cogumiNewChat = true;
  return [open ? (yes ? chat : null) : "{NO_CHAT}", visitor, on_screen, search, window.cogumiSends ?? 0];
}}"""
# The open chat per tab: gr.BrowserState keeps one for the whole browser (localStorage), so a reload of one
# tab opened the chat another tab opened last. Each tab also keeps its own in sessionStorage, which a
# reload keeps and a new tab starts without. Read in the page's <head> (launch(head=...)): by the load
# event, restoring the BrowserState has already fired its change, which writes the key.
# The Route picked, and Speculative decoding on or off, are kept the same way.
TAB_CHAT_KEY, TAB_ROUTE_KEY, TAB_DRAFT_KEY = "cogumi-tab-chat", "cogumi-tab-route", "cogumi-tab-draft"
# Enter and Send wait until the page has run its scripts and its load has come back, and the press is made then:
# the box is drawn ~0.35 s before Gradio runs launch(js=...), and a send in that moment (its own script calls
# send_after_reply.js's) showed a red "Error" and was not sent; and one begun before the load had come back could
# have its chat blanked by the load's answer, drawn after its own (59dbc3a, backed out). A load held longer than
# LOAD_WAIT_MS (a busy Space) is not waited for: on_load leaves a chat a send has begun as it is.
LOAD_WAIT_MS = 2000
EARLY_PRESS = """<script>
window.cogumiEarly = false;
const cogumiHold = (e, pressed) => {
  if (window.cogumiReady || !pressed) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  if (e.type !== "keypress") window.cogumiEarly = true;
};
const cogumiEnter = (e) => e.key === "Enter" && !e.shiftKey && !e.isComposing && !!e.target.closest?.("#message");
document.addEventListener("keydown", (e) => cogumiHold(e, cogumiEnter(e)), true);
document.addEventListener("keypress", (e) => cogumiHold(e, cogumiEnter(e)), true);
document.addEventListener("click", (e) => cogumiHold(e, !!e.target.closest?.("#send")), true);
let cogumiScriptsAt = null;
const cogumiWhenReady = () => {
  if (typeof window.cogumiTake === "function") cogumiScriptsAt ??= Date.now();
  if (cogumiScriptsAt === null || (!window.cogumiLoaded && Date.now() - cogumiScriptsAt < %d))
    return setTimeout(cogumiWhenReady, 50);
  window.cogumiReady = true;
  if (window.cogumiEarly) document.querySelector("#send")?.click();
  window.cogumiEarly = false;
};
cogumiWhenReady();
</script>""" % LOAD_WAIT_MS
# New chat and Stop give the keys back to the message box (QA 15, QA 24) where the pointer is a mouse's: on a
# touch screen a focused box opens the keyboard over half the chat, after every tap of either (QA 25).
KEYS_TO_BOX = "if (!matchMedia('(pointer: coarse)').matches) document.querySelector('#message textarea')?.focus(); "

# The tab's own storage, read and written where a browser that keeps no site data throws on any use of it:
# there the tab keeps nothing across a reload, and the page works all the same.
PAGE_HEAD = (f'<script>window.cogumiTabGet = (key) => {{ try {{ return sessionStorage.getItem(key); }} '
             f'catch (e) {{ return null; }} }}; '
             f'window.cogumiTabSet = (key, value) => {{ try {{ sessionStorage.setItem(key, value); }} catch (e) {{}} }}; '
             f'window.cogumiTabChat = cogumiTabGet("{TAB_CHAT_KEY}"); '
             f'window.cogumiTabRoute = cogumiTabGet("{TAB_ROUTE_KEY}"); '
             f'window.cogumiTabDraft = cogumiTabGet("{TAB_DRAFT_KEY}");</script>' + EARLY_PRESS)
# On a Space, the browser's id: read, or made and kept, before the page sends anything. Made on the server
# (the load event's), it raced the first message's: a message sent before the load came back was made
# under one id and the load's, later, took its place (the chat was nobody's from then on); and
# gr.BrowserState may restore its value after the load event has read it. A browser that kept no
# localStorage gets an id for the page's life. The load and send events read the stored id again
# (cogumiStoredVisitor): two tabs of a new browser opened at once can each make one, and the last written
# wins, so the tab whose id lost goes by the winner's before it makes anything (QA 10).
VISITOR_KEY = "cogumi-visitor-id"
VISITOR_HEAD = f"""<script>try {{ window.cogumiVisitor = localStorage.getItem("{VISITOR_KEY}"); }} catch (e) {{}}
if (!window.cogumiVisitor) {{
  window.cogumiVisitor = Array.from(crypto.getRandomValues(new Uint8Array(16)),
                                    b => b.toString(16).padStart(2, "0")).join("");
  try {{ localStorage.setItem("{VISITOR_KEY}", window.cogumiVisitor); }} catch (e) {{}}
}}
window.cogumiStoredVisitor = () => {{
  try {{ window.cogumiVisitor = localStorage.getItem("{VISITOR_KEY}") || window.cogumiVisitor; }} catch (e) {{}}
  return window.cogumiVisitor;
}};</script>"""


def page_head(per_visitor: bool) -> str:
    """Passed to launch(head=...)."""
    return PAGE_HEAD + (VISITOR_HEAD if per_visitor else "")


ROUTE_CHOICES = [AUTO, *ROUTES]
# Passed to launch(js=...): run in the page once it loads, each of these functions.
PAGE_JS = "() => {\n" + "".join(f"({(Path(__file__).parent / name).read_text().strip()})();\n"
                                for name in ("copy_as_typed.js", "chat_scroll.js", "send_after_reply.js",
                                             "radio_groups.js", "keep_draft.js")) + "}"
# Passed to launch(css=...): the icons of a code block's copy button (display.COPY_CODE); the past chats
# list scrolls in its box; on phones and narrow windows, where the columns stack, the chat comes first.
PAGE_CSS = (Path(__file__).parent / "page.css").read_text()


def refused(words: str) -> gr.Error:
    """A request refused, in words for whoever sent it: not logged (each wrote a 30-line traceback, QA 19)."""
    return gr.Error(words, print_exception=False)


# What a callback could not do when sessions.db failed under it (QA 28 #2: only the database's failure was said)
NOT_DONE = {"open_session": "This chat could not be opened.", "on_like": "Your 👍/👎 was not saved.",
            "feedback_api": "The feedback was not saved.", "find_chats": "Past chats could not be listed.",
            "delete_chat": "This chat was not deleted.", "new_chat": "A new chat could not be begun.",
            "on_load": "Your chats could not be read.", "panel_api": "The router panel could not be read.",
            "new_session_api": "No chat was made.", "after_reply": "Past chats and the router panel could not be "
            "drawn again.", "after_stop": "The stopped reply could not be drawn.",
            "follow_reply": "The reply could not be followed."}


def explained(callback):
    """Gradio shows any exception but gr.Error as a bare "Error". The session database's failures
    (locked, read-only, full, damaged; logged too) and refused requests carry their own explanation: show it,
    after what was not done. In the page that is a notice, and what is drawn stays (a gr.Error marked every block
    the callback draws "Error", the chat and Past chats blanked under it until drawn again: QA 29 #1); an API
    caller (a callback named *_api) gets it as its error."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except gr.Error:  # a ValueError too: wrapped again, its words came quoted (QA 19)
            raise
        except SessionStoreError as exc:
            said = " ".join(filter(None, [NOT_DONE.get(callback.__name__), str(exc)]))
            if callback.__name__.endswith("_api"):
                raise gr.Error(said) from exc
            gr.Warning(said)
            return gr.skip()  # (one skip: Gradio skips every output)
        except ValueError as exc:
            raise refused(str(exc)) from exc
    return wrapper


def require_text(**values) -> None:
    """API arguments that must be text (or None): else Gradio's "raised an exception" was all a caller saw."""
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise refused(f"{name} is text, not {type(value).__name__}")


def streaming(stored: list[dict]) -> bool:
    """Whether a chat's stored messages hold a reply still being written."""
    return any(m["status"] == "streaming" for m in stored)


def panel_views(service: ChatService, session_id: str | None, owner: str | None = None) -> tuple:
    """The four router panel views of a session, drawn from sessions.db."""
    return figures_and_panel(service, session_id, owner)[1:]


def figures_and_panel(service: ChatService, session_id: str | None, owner: str | None = None) -> tuple:
    """The line of figures of the session's last reply, then the four panel views: one read of sessions.db."""
    data = service.panel(session_id, owner)
    decisions = data["decisions"]
    latest = decisions[-1] if decisions else None
    shares = panel.distribution_frame(data["routes"]["session"], data["routes"]["all"])
    return (stored_stats_line(latest), panel.path_html(latest, latest["message"] if latest else None),
            gr.update(value=panel.timeline_chart(decisions), visible=bool(decisions)),  # empty, a blank box
            gr.update(value=shares, visible=not shares.empty),  # empty, its axis titles overlapped
            panel.decisions_frame(decisions))


# QA 22: greyed out, the box still described drafting, and nothing said why it could not be turned on.
NO_DRAFT = ("off: no draft model is loaded (the app was started with --no-draft, or the model set has none: "
            "give one with --draft FILE.gguf beside --model)")


def build_ui(service: ChatService, banner: str | None = None, model_label: str = "",
             per_visitor: bool = False, state_secret: str | None = None) -> gr.Blocks:
    """per_visitor: many people share this app (a Space); each browser gets an id kept in its
    localStorage (gr.BrowserState, encrypted with state_secret so it survives restarts) and sees
    only its own sessions; each API client is scoped to its own connection."""
    # A page's chat (on_screen["chat"]), read and set by its load and set by its sends: a message sent as the page
    # loads began while the load, which had found no chat, set none after it: the page left the message's chat.
    screen = threading.Lock()

    def api_owner(request: gr.Request | None) -> str | None:
        return f"api:{request.session_hash}" if per_visitor and request is not None else None

    def owner_of(visitor):
        """Whose sessions a callback may touch: None (all) on a personal machine. On a Space never
        None: a browser whose id has not arrived yet gets a fresh one, which owns nothing so far."""
        return (visitor or uuid.uuid4().hex) if per_visitor else None

    def session_choices(visitor, current=None, matching=None):
        """The past chats list: the most recent, or those that hold the searched text, after the chat on
        screen whether it is among them or not (a chat begun while a search held was not listed, and the
        list showed none as open; an old chat opened by a search dropped out as the search was cleared,
        QA 18). It says when there are more than it lists."""
        owner = owner_of(visitor)
        found = service.sessions(owner, matching, limit=LISTED_CHATS + 1, used_only=True)  # not the API's unused
        more, found = len(found) > LISTED_CHATS, found[:LISTED_CHATS]
        opened = service.session(current, owner) if current and all(s["id"] != current for s in found) else None
        sought = matching if matching is None or len(matching) <= 40 else matching[:40] + "…"  # it ran out of the column
        if more:
            label = f" ({'the open chat, and ' if opened else ''}the {LISTED_CHATS} most recent" \
                    f"{' matches' if matching else ''}: search to narrow)"
        elif opened:
            label = f" (the open chat, and those that hold: {sought})" if found else \
                f" (the open chat; no other holds: {sought})"
        else:
            label = f" (no chat holds: {sought})" if matching and not found else ""
        listed = [opened] * (opened is not None) + found
        return gr.update(choices=chat_labels(listed),
                         value=current if any(s["id"] == current for s in listed) else None, label="Past chats" + label)

    def chat_view(session_id, visitor, stored: list[dict] | None = None) -> dict:
        """The chat as stored, with each reply's 👍/👎 (the Chatbot holds those apart, one per reply)."""
        if stored is None:
            stored = service.transcript(session_id, owner_of(visitor)) if session_id else []
        return gr.update(value=[shown(m["role"], m["content"], m["status"], m["error"], m["stop_reason"])
                                for m in stored],
                         feedback_value=[FEEDBACK.get(m["liked"]) for m in stored if m["role"] == "assistant"])

    def watched(chat, visitor, on_screen) -> list[dict]:
        """The stored messages of a chat the page shows and is not streaming a reply into itself; else []."""
        return service.transcript(chat, owner_of(visitor)) if chat and on_screen.get("sending") != chat else []

    def following(session_id, visitor, on_screen) -> gr.Timer:
        """The timer that redraws the chat on screen, on while it has a reply streaming that this page is not
        streaming itself: the reply of a page reloaded or closed goes on (ChatService.carry_on), and so does
        another tab's. (QA 9: the reloaded page showed such a reply as it was when the page loaded.)"""
        return gr.Timer(active=streaming(watched(session_id, visitor, on_screen)))

    @explained
    def follow_reply(visitor, on_screen, matching):
        """A tick of that timer: the chat as saved; once its reply has ended, its figures, the list and the
        panel too, and the timer stops. This page's own reply whose save failed (`unsaved`, tried again for
        SAVE_RETRY_S) is left as the page shows it until it is saved, then drawn as saved, its notice gone
        (QA 32 #2: "could not be saved" stayed after a later try had saved it)."""
        chat = on_screen["chat"]
        stored = watched(chat, visitor, on_screen)
        unsaved_chat, until = on_screen.get("unsaved") or (None, 0.0)
        if not stored:  # another chat, none, deleted meanwhile, or this page's own reply now
            return (*(gr.skip(),) * 7, gr.Timer(active=False), gr.skip())
        if unsaved_chat == chat and streaming(stored):  # what is stored of it is behind what the page shows
            if time.monotonic() < until:
                return (gr.skip(),) * 9
            on_screen["unsaved"] = None  # never saved: left as the page shows it
            return (*(gr.skip(),) * 7, gr.Timer(active=False), gr.skip())
        if streaming(stored):
            drawn = (chat_view(chat, visitor, stored), *(gr.skip(),) * 8)
        else:
            drawn = (chat_view(chat, visitor, stored), *figures_and_panel(service, chat, owner_of(visitor)),
                     session_choices(visitor, chat, matching), gr.Timer(active=False),
                     "" if unsaved_chat == chat else gr.skip())
        # Asked again last (QA 10): New chat, Delete or another chat may have been clicked while this was drawn
        # (the panel takes a while), and their answer is on the page before this one; an answer started after
        # this check comes after it. The timer is then the one they leave, which the next tick stops.
        if on_screen["chat"] != chat or on_screen.get("sending") == chat:
            return (gr.skip(),) * 9
        if unsaved_chat == chat:
            on_screen["unsaved"] = None
        return drawn

    @explained
    def on_load(visitor, session_id, on_screen, route, use_draft):
        """A page opens (or reloads) on the chat it showed last, and the Route and Speculative decoding as set in
        it, kept in the browser."""
        visitor = owner_of(visitor)  # on a Space, the browser's id (VISITOR_HEAD), kept in gr.BrowserState from now on
        try:  # read before the chat is the page's (QA 30 #1: one that could not be read stayed it, unseen, and
            # Delete deleted it)
            if not service.owns(session_id, visitor):  # gone, or from another database
                session_id = None
            drawn = (session_choices(visitor, session_id), session_id, chat_view(session_id, visitor),
                     route if route in ROUTE_CHOICES else "auto",
                     use_draft is not False and service.engine.draft is not None,
                     *figures_and_panel(service, session_id, visitor))
        except SessionStoreError as exc:
            gr.Warning(f"{NOT_DONE['on_load']} {exc} Then reload the page.")
            return (visitor, gr.skip(), NO_CHAT, *(gr.skip(),) * 9)
        with screen:
            if on_screen["chat"] is not None:  # a message was sent before the load came back: the page is that chat's
                return (visitor, session_choices(visitor, on_screen["chat"]), *(gr.skip(),) * 10)
            on_screen["chat"] = session_id
        return (visitor, *drawn, following(session_id, visitor, on_screen))

    @explained
    def open_session(session_id, visitor, on_screen, matching, sends):
        """The chat clicked in the list, or (deleted in another tab since the list was drawn) the list
        redrawn without it, the chat on screen still chosen: it showed the clicked one as chosen while
        the other stayed on screen, and Delete then deleted the one on screen. `sends`: the page's sends at
        the click; a message sent after it went on in this chat (sent_as carries the choice), and this, come
        back after it had begun, drew the chat as it was before it: the message and its reply vanished."""
        owner = owner_of(visitor)
        if not service.owns(session_id, owner):
            gr.Info("That chat is not there any more: it was deleted, in another tab or window.")
            return (*(gr.skip(),) * 8, session_choices(visitor, on_screen["chat"], matching), gr.skip())
        before, on_screen["chat"] = on_screen["chat"], session_id  # first: a message sent meanwhile goes on in it
        try:
            drawn = (chat_view(session_id, owner), "", *figures_and_panel(service, session_id, owner))
        except SessionStoreError as exc:  # not opened: the chat on screen stays it, and the list marks it again
            if on_screen["chat"] == session_id:  # (QA 29 #2: it marked the one clicked, which Delete then took)
                on_screen["chat"] = before
            gr.Warning(f"{NOT_DONE['open_session']} {exc}")
            return (*(gr.skip(),) * 8, gr.update(value=on_screen["chat"]), gr.skip())
        opened = (session_id, *drawn, gr.skip(), following(session_id, visitor, on_screen))  # the list: find_chats, next
        with screen:
            return (gr.skip(),) * len(opened) if overtaken(on_screen, sends) else opened

    def empty_chat(visitor, on_screen, listed) -> tuple:
        """The page on no chat: session id, chat, notice, stats line, the past chats list (`listed`), panel."""
        on_screen["chat"] = None
        return NO_CHAT, chat_view(None, visitor), "", "", listed, *panel_views(service, None, owner_of(visitor))

    def overtaken(on_screen, sends) -> bool:
        """A send the page made after `sends` has begun: it is the chat on screen now (New chat, Delete, opening
        a past chat)."""
        return on_screen.get("began", 0) > (sends or 0)

    @explained
    def new_chat(visitor, on_screen, sends):
        """`sends`: the page's sends at the click. A message sent after it, before this came back, began the new
        chat (sent_as): this, coming back after it had begun, blanked that chat and left its reply out of sight."""
        with screen:
            if overtaken(on_screen, sends):
                return (gr.skip(),) * 9
            return empty_chat(visitor, on_screen, gr.update(value=None))  # the list: find_chats, next

    @explained
    def delete_chat(session_id, visitor, on_screen, matching, sends):
        """Delete the open chat, once the page's confirm() said yes (CONFIRM_DELETE: else None comes)."""
        if session_id is None:
            return (gr.skip(),) * 9
        if session_id == NO_CHAT:
            gr.Info("No chat is open: open one from Past chats to delete it.")
            return (gr.skip(),) * 9
        with screen:  # off the page before its reply is stopped: that reply's last update, "deleted … while it
            # replied", then leaves the page alone (QA 23 #2: drawn a moment after, it put the chat back on screen)
            leaving = not overtaken(on_screen, sends) and on_screen.get("chat") == session_id
            if leaving:
                on_screen["chat"] = None
        try:
            if not service.owns(session_id, owner_of(visitor)):  # gone: nothing is lost, and the page moves on
                gr.Info("This chat was already deleted, in another tab or window.")
            else:
                if waiting := service.waiting_for_lock("This chat is deleted"):  # (QA 32 #5)
                    gr.Info(waiting)
                service.delete_session(session_id, owner_of(visitor))
        except BaseException:  # not deleted (its reply did not stop, a lock): the chat is on screen still
            with screen:
                if leaving and on_screen.get("chat") is None:
                    on_screen["chat"] = session_id
            raise
        with screen:
            if overtaken(on_screen, sends):  # the list, without the deleted chat
                return (*(gr.skip(),) * 4, session_choices(visitor, on_screen["chat"], matching), *(gr.skip(),) * 4)
            return empty_chat(visitor, on_screen, session_choices(visitor, None, matching))

    @explained
    def find_chats(matching, session_id, visitor):
        return session_choices(visitor, session_id, matching)

    @explained
    def after_reply(visitor, matching, on_screen):
        """The list and the panel for the chat on screen: the page may have opened another meanwhile; and for a reply
        of its own not saved yet, the timer that draws it once it is (follow_reply)."""
        chat = on_screen["chat"]
        waits = (on_screen.get("unsaved") or (None,))[0] == chat
        return (session_choices(visitor, chat, matching), *panel_views(service, chat, owner_of(visitor)),
                gr.Timer(active=True) if waits else gr.skip())  # (on even if saved already: it draws it so)

    def send(message, session_id, route, use_draft, visitor, on_screen, matching, press, chosen=None):
        """Streams the reply into the page while the page shows its chat. Opened elsewhere (another chat,
        a new one), the reply goes on and is saved, and the page is left alone: each update once drew
        this chat back, and made it the one the next message went to. `press` numbers the page's sends:
        a Stop pressed after this one ends its reply, or takes it back if it has waited in the queue.
        `chosen`: the chat marked in Past chats, which is the one on screen once its opening has come back;
        until then it is the one the person means (QA 20: sent at once, the message went to the chat before)."""
        visitor = owner_of(visitor)  # kept in the browser by the first yield, if it was new
        session_id = chosen or session_id
        def stopped() -> bool:  # Stop was pressed after this send (stop_reply)
            return (press or 0) <= on_screen.get("stopped_at", 0)
        # The page emptied the box as Gradio took this send (sent_as); one not sent goes back to the box by its
        # number (the page kept its text: half an emoji could not be sent back).
        if stopped():
            yield (gr.skip(), press, session_id, "Stopped before it was sent: your message is back in the box.",
                   gr.skip(), gr.skip(), visitor, gr.skip(), gr.skip())
            return
        refused = service.refusal(message, route)
        if refused:
            yield gr.skip(), press, session_id, refused, gr.skip(), gr.skip(), visitor, gr.skip(), gr.skip()
            return
        made = None  # the chat made for this message, if it is the first of one
        try:
            known = service.owns(session_id, visitor)
            deleted = not known and session_id not in (None, NO_CHAT)  # on screen, then deleted elsewhere
            if not known:  # so that Stop, even before the reply starts, finds it
                if waiting := service.waiting_for_lock():  # (QA 28: 10 s with an empty box and not a word)
                    yield gr.skip(), gr.skip(), gr.skip(), waiting, *(gr.skip(),) * 2, visitor, gr.skip(), gr.skip()
                session_id = made = service.new_session(visitor)
            stored = chat_view(session_id, visitor)  # QA 27: a table dropped by another program: bare "Error"s
        except SessionStoreError as exc:
            if made:  # not left behind, empty (QA 30 #7)
                service.discard_unsent(made)
            yield (gr.skip(), press, gr.skip(), f"Your message was not sent. {exc}", gr.skip(), gr.skip(), visitor,
                   gr.skip(), gr.skip())
            return
        before = stored["value"]
        # The message shows at once; the box is the person's to type the next message in (no yield empties it:
        # one that came after the press took what had been typed since, QA 15).
        with screen:
            on_screen["chat"] = on_screen["sending"] = session_id  # (following() leaves this reply to this page)
            on_screen["began"] = max(press or 0, on_screen.get("began", 0))
        moved = ("The chat on screen was deleted, in another tab or window: this message starts a new chat."
                 if deleted else "")
        yield (gr.update(value=before + [shown("user", message)], feedback_value=stored["feedback_value"]), gr.skip(),
               session_id, moved, "", gr.skip(), visitor, gr.skip(), press)
        shown_at, path_drawn, left, ending, told = 0.0, False, False, False, None
        replies = service.respond(session_id, message, override=route, use_draft=use_draft, owner=visitor)
        try:
            for update in replies:
                if not ending and stopped():  # pressed before respond() had this reply for service.stop to find
                    ending = service.stop(session_id, visitor)
                away = on_screen["chat"] != session_id
                if update.status == "ignored":  # not saved: the message goes back to the box
                    if made:  # not left behind, empty (QA 30 #7)
                        service.discard_unsent(made)
                        with screen:
                            if not away:
                                on_screen["chat"] = None
                    yield (gr.skip() if away else before, press, NO_CHAT if made and not away else gr.skip(),
                           update.notice, gr.skip(), gr.skip(), visitor, gr.skip(), gr.skip())
                    return
                if away:  # one update that leaves the page alone: Gradio sends the last one again at the end
                    if not left:
                        left = True
                        yield (*(gr.skip(),) * 6, visitor, gr.skip(), gr.skip())
                    continue
                if update.status == "waiting":  # behind the chat's reply still going on: that reply, as it grows
                    stored = chat_view(session_id, visitor)
                    before = stored["value"]
                    yield (gr.update(value=before + [shown("user", message)], feedback_value=stored["feedback_value"]),
                           gr.skip(), gr.skip(), update.notice or gr.skip(), *(gr.skip(),) * 2, visitor, gr.skip(),
                           gr.skip())
                    continue
                # Each yield re-sends the chat to the browser: at most ~25 a second, so a fast model is
                # not held back by the page.
                if not update.done and time.monotonic() - shown_at < UI_FRAME_S and update.notice == told:
                    continue  # (one that says something new is drawn: it may stay a while, ChatService.WAITING_TO_SAVE)
                shown_at, told = time.monotonic(), update.notice
                status = update.status if update.done else "complete"
                stop_reason = update.stats.stop_reason if update.done and update.stats else None
                chat = before + [shown("user", message),
                                 shown("assistant", update.text, status, update.notice, stop_reason)]
                drawing, listed = gr.skip(), gr.skip()
                if not path_drawn:  # the route is known before the first token: draw it once
                    # The chat before this turn, as saved now: a reply that still went on in it when this
                    # message was sent (a reloaded page's, another tab's) has ended (respond waits for it).
                    before = chat_view(session_id, visitor)["value"][:-2]
                    drawing = panel.path_html(update.decision.to_dict(), message) if update.decision else gr.skip()
                    # and the list, now that the message is stored: this chat moves to the top here, as the
                    # person sends, not under their pointer as the reply ends (a click then opened another)
                    listed, path_drawn = session_choices(visitor, session_id, matching), True
                if update.done and not update.saved:  # drawn as saved once a later try saves it (follow_reply)
                    on_screen["unsaved"] = (session_id, time.monotonic() + SAVE_RETRY_S + 5)
                said = " ".join(filter(None, [moved, update.notice]))
                # failed before a word: back in the box too, to send again (QA 15)
                unanswered = press if update.done and update.status == "error" and not update.text else gr.skip()
                yield chat, unanswered, update.session_id, said, stats_line(update), drawing, visitor, listed, gr.skip()
        except GeneratorExit:  # the page went away (a reload, a closed tab)
            service.carry_on(replies)
            raise
        except SessionStoreError as exc:  # the chat could not be read back to draw it: the reply goes on, saved
            service.carry_on(replies)
            yield (*(gr.skip(),) * 3, f"This chat could not be shown. {exc}", *(gr.skip(),) * 2, visitor,
                   gr.skip(), gr.skip())
        finally:
            if on_screen.get("sending") == session_id:
                on_screen["sending"] = None

    @explained
    def stop_reply(session_id, visitor, on_screen, pressed):
        """Ends the reply streaming here, and any send pressed before this Stop: one still waiting in the
        queue is not sent (send() reads stopped_at), one only just begun ends as it begins."""
        sending = on_screen.get("sending")
        # The page's own sends only while their chat is on screen (begun in a new chat, the page may not know its
        # id yet): moved to another chat, Stop there ended that reply, unseen (QA 20).
        if sending is None or sending == on_screen.get("chat"):
            on_screen["stopped_at"] = max(pressed or 0, on_screen.get("stopped_at", 0))
            service.stop(sending, owner_of(visitor))
        service.stop(session_id, owner_of(visitor))

    @explained
    def after_stop(session_id, visitor, matching, on_screen):
        """The chat as stored once the stopped reply is saved (marked stopped), and the panel. A page that has
        not yet heard its new chat's id is shown that chat (it drew an empty chat over the stopped message)."""
        owner = owner_of(visitor)
        session_id = session_id or on_screen.get("chat")
        for _ in range(100):  # the reply's generator is closed on its thread, a moment after the cancel
            transcript = service.transcript(session_id, owner)
            if not streaming(transcript):
                break
            time.sleep(0.05)
        return (chat_view(session_id, visitor), session_choices(visitor, session_id, matching),
                *figures_and_panel(service, session_id, owner))

    @explained
    def on_like(session_id, visitor, on_screen, matching, like: gr.LikeData):
        liked = like.liked if isinstance(like.liked, bool) else None  # "" or None: the click was taken back
        owner = owner_of(visitor)
        if not service.owns(session_id, owner):  # the page moves on, as a Delete of it does (QA: the thumb
            gr.Warning("This chat was deleted, in another tab or window: its 👍/👎 cannot be kept.")  # stayed lit)
            return empty_chat(visitor, on_screen, session_choices(visitor, None, matching))
        if waiting := service.waiting_for_lock("Your 👍/👎 is saved"):  # (QA 32 #5: 10 s, Gradio's timer alone)
            gr.Info(waiting)
        try:
            service.give_feedback(session_id, like.index if isinstance(like.index, int) else like.index[0], liked, owner)
        except SessionStoreError as exc:  # the thumbs as stored again, where the chat can be read
            gr.Warning(f"{NOT_DONE['on_like']} {exc}")
            with contextlib.suppress(SessionStoreError):
                return gr.skip(), chat_view(session_id, owner), *(gr.skip(),) * 7
            return gr.skip()
        return (*(gr.skip(),) * 8, panel.decisions_frame(service.panel(session_id, owner)["decisions"]))  # the table

    def chat_api(message: str, session_id: str = "", override: str = "", request: gr.Request = None) -> str:
        """Send one message and return the whole reply. Pass a session id (from /new_session) to
        continue a conversation; without one each call starts a new session. `override` picks
        the route by hand (base, code, reasoning, automation); empty or "auto" lets the router choose."""
        require_text(message=message, session_id=session_id, override=override)
        owner = api_owner(request)
        if session_id and not service.owns(session_id, owner):  # else a new session each call, its id never told
            raise refused(f"There is no chat {shown_value(session_id)} here: pass a session id from /new_session, "
                          f"or none to start a new chat with each call.")  # "chat", as /panel and /feedback say
        final = None
        for final in service.respond(session_id or None, message, override=override or None, owner=owner):
            pass
        if final.status in ("error", "ignored"):  # refused (empty, too long...), or failed (logged as it failed)
            raise refused(final.notice)
        return final.text

    @explained
    def new_session_api(request: gr.Request = None) -> str:
        """Create an empty session and return its id, for /chat."""
        return service.new_session(api_owner(request))

    @explained
    def panel_api(session_id: str, request: gr.Request = None) -> dict:
        """The data the router panel draws for a session, as stored in sessions.db: its decisions
        (oldest first, each with its message and 👍/👎) and route counts for the session and for all sessions."""
        require_text(session_id=session_id)
        if session_id and not service.owns(session_id, api_owner(request)):  # "" still gives all chats' counts
            raise ValueError(no_such_chat(session_id))
        return service.panel(session_id, api_owner(request))

    @explained
    def feedback_api(session_id: str, index: int, liked: bool | None, request: gr.Request = None) -> int:
        """👍 (true), 👎 (false) or neither (null) on the reply at `index` of the session's messages
        (0-based, user and assistant messages counted); returns the message id."""
        require_text(session_id=session_id)
        return service.give_feedback(session_id, index, liked, api_owner(request))

    with gr.Blocks(title="Cogumi Chat") as demo:
        # The chat the page shows: kept in the browser, so that a reload reopens it ...
        session_id = gr.BrowserState(None, storage_key="cogumi-open-chat", secret=state_secret)
        # ... and here, changed in place where the page opens another, so that a streaming reply sees it.
        on_screen = gr.State({"chat": None})
        visitor = (gr.BrowserState(None, storage_key="cogumi-visitor", secret=state_secret) if per_visitor
                   else gr.State(None))
        gr.Markdown(f"## Cogumi Chat {model_label}")
        if banner:
            gr.Markdown(banner, elem_id="banner")  # the demo set's, a Space's storage that will not last
        status = service.modifier_status()
        missing = [f"**{name}**: {html.escape(reason)}" for name, reason in status.items() if reason]
        if missing:
            gr.Markdown("Modifiers not available, their messages use the plain base — " + "; ".join(missing),
                        elem_id="modifier-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=200):
                new_button = gr.Button("New chat", elem_id="new-chat")
                route = gr.Radio([(f"{r} (not available: base)" if status.get(r) else r, r) for r in ROUTE_CHOICES],
                                 value="auto", label="Route",
                                 info="auto: the router picks per message; pick one to overrule it until you "
                                      "change it back (the router's own choice is still shown)",
                                 elem_id="route")
                drafting = service.engine.draft is not None
                use_draft = gr.Checkbox(value=drafting, label="Speculative decoding",
                                        info="a small draft model proposes tokens, the base keeps those it would "
                                             "have written itself: only the speed changes" if drafting else NO_DRAFT,
                                        interactive=drafting, elem_id="use-draft")
                search = gr.Textbox(label="Search past chats", placeholder="Search past chats", show_label=False,
                                    elem_id="search-chats")
                sessions = gr.Radio(label="Past chats", choices=[], elem_id="sessions")
                delete_button = gr.Button("Delete this chat", size="sm", variant="secondary", elem_id="delete-chat")
            with gr.Column(scale=5, elem_id="chat-column"):
                # autoscroll: chat_scroll.js does it. No "share" button: it had no name, and on a Space it posts the
                # chat to the Space's Discussions. No label shown: it floated over the chat's top line (QA 22); the
                # chat's log keeps Gradio's name for a screen reader ("chatbot conversation").
                chatbot = gr.Chatbot(label="Cogumi", show_label=False, height=520, elem_id="chat", autoscroll=False,
                                     buttons=["copy", "copy_all"])
                notice = gr.Markdown(elem_id="notice")
                with gr.Row():
                    box = gr.Textbox(label="Message", placeholder="Message Cogumi…", show_label=False, scale=8,
                                     autofocus=True, elem_id="message", max_lines=12)
                    send_button = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="send")
                    stop_button = gr.Button("Stop", scale=1, min_width=70, elem_id="stop")
                stats = gr.Markdown(elem_id="stats")
            with gr.Column(scale=3, min_width=320, elem_id="router-panel"):
                gr.Markdown("### Router")
                path = gr.HTML(panel.path_html(None), elem_id="path")
                timeline = gr.Plot(show_label=False, elem_id="timeline")  # the chart carries its title
                distribution = gr.BarPlot(x="scope", y="share %", color="route", color_map=panel.ROUTE_COLOURS,
                                          tooltip=["route", "share %", "replies"], label="Route distribution",
                                          sort=["this chat", "all chats"], colors_in_legend=list(panel.ROUTE_COLOURS),
                                          y_lim=[0, 100], elem_id="distribution")  # a height clips the legend
        table = gr.Dataframe(headers=panel.TABLE_COLUMNS, interactive=False, wrap=True, elem_id="decisions",
                             label=f"Recent decisions (the last {panel.TABLE_ROWS} turns, newest first)")  # widths: page.css

        # The number of the page's send Gradio takes (sent_as), and of the last at a Stop; of one begun (its message
        # now in the chat); and of one not sent, whose text the page puts back in the box (send_after_reply.js).
        press, began, unsent = (gr.Number(0, visible=False, precision=0) for _ in range(3))
        follow = gr.Timer(FOLLOW_S, active=False)  # on while the chat on screen has a reply this page is not streaming
        views = [path, timeline, distribution, table]
        outputs = [chatbot, unsent, session_id, notice, stats, path, visitor, sessions, began]
        inputs = [box, session_id, route, use_draft, visitor, on_screen, search, press, sessions]
        # One queue for everything that runs the engine, page and API alike, so a waiting visitor's
        # place counts everyone ahead of them.
        # The browser's id, if the load has not yet set it (a message sent at once on a busy Space); and the
        # send's number, from send_after_reply.js, which empties the box (this runs only for sends Gradio takes).
        # After New chat, until the page has drawn it, the send is the new chat's (cogumiNewChat): it carried the
        # chat still on screen, and went on in it (CI, stop 52's landing).
        sent_as = "(message, chat, route, draft, visitor, on_screen, search, press, chosen) => { " \
                  "const fresh = window.cogumiNewChat; window.cogumiNewChat = false; " \
                  "return [message, fresh ? '" + NO_CHAT + "' : chat, route, " \
                  "draft, visitor ?? window.cogumiStoredVisitor?.() ?? null, on_screen, search, " \
                  "window.cogumiTake(message), fresh ? null : chosen]; }"
        # Enter and Send are one event, so that while a reply is open Gradio takes neither (trigger_mode
        # "once"): as two, Send during a reply begun by Enter was taken, and its reply's start emptied the box
        # of what was typed after it. send_after_reply.js sends such a message once the reply has ended.
        sent = gr.on([box.submit, send_button.click], send, inputs, outputs, api_visibility="private",
                     concurrency_id=ENGINE_QUEUE, js=sent_as)
        sent.then(after_reply, [visitor, search, on_screen], [sessions, *views, follow], api_visibility="private")
        began.change(None, began, None, js="(n) => { window.cogumiBegan(n); return []; }")
        unsent.change(None, unsent, None, js="(n) => { window.cogumiUnsent(n); return []; }")
        # Not Gradio's cancels=: the stopped reply ends its own stream. A cancel missed a reply that had only
        # just begun (it ran on, out of sight), and its answer could reach the page before the stream's end,
        # which the page could not read: a red "Error" stayed over the chat and the box (QA 14).
        stop_button.click(stop_reply, [session_id, visitor, on_screen, press], None, api_visibility="private",
                          js="(chat, visitor, on_screen) => { " + KEYS_TO_BOX +
                             "return [chat, visitor, on_screen, window.cogumiSends ?? 0]; }").then(  # QA 24: keys to the box
            after_stop, [session_id, visitor, search, on_screen], [chatbot, sessions, stats, *views],
            api_visibility="private")
        # The list for the search as it is now and the chat now open: after a chat is opened or a new one
        # begun, it is drawn again (QA 11: the chat left stayed listed, as "the open chat"), with the search
        # box read then, not at the click (typed meanwhile, the list drawn last was the older search's).
        list_chats = (find_chats, [search, session_id, visitor], sessions)
        # A New chat or Delete that failed leaves the page on its chat: the next send is that chat's (QA 30 #2: it
        # began a new chat, the flag set at the click left on).
        still_on_a_chat = (None, session_id, None)
        still_on_a_chat_js = (f"(chat) => {{ if (chat && chat !== '{NO_CHAT}') window.cogumiNewChat = false; "
                              f"return []; }}")
        for starts_afresh in (new_button.click, chatbot.clear):  # the chat's trash button (hidden: page.css)
            # and the box takes the keys (QA 15: by keyboard, they stayed on New chat)
            afresh = starts_afresh(new_chat, [visitor, on_screen, press],
                                   [session_id, chatbot, notice, stats, sessions, *views],
                                   js="(visitor, on_screen) => { " + KEYS_TO_BOX + "window.cogumiNewChat = true; "
                                      "return [visitor, on_screen, window.cogumiSends ?? 0]; }",
                                   api_visibility="private")
            afresh.then(*list_chats, api_visibility="private")
            afresh.then(*still_on_a_chat, js=still_on_a_chat_js, api_visibility="private")
        delete_button.click(delete_chat, [session_id, visitor, on_screen, search, press],
                            [session_id, chatbot, notice, stats, sessions, *views], api_visibility="private",
                            js=CONFIRM_DELETE).then(*still_on_a_chat, js=still_on_a_chat_js, api_visibility="private")
        search.change(*list_chats, api_visibility="private")  # typed or pasted
        sessions.input(open_session, [sessions, visitor, on_screen, search, press],
                       [session_id, chatbot, notice, stats, *views, sessions, follow], api_visibility="private",
                       js="(chat, visitor, on_screen, search) => { window.cogumiNewChat = false; window.cogumiShowChat?.(); "
                          "return [chat, visitor, on_screen, search, window.cogumiSends ?? 0]; }").then(
            *list_chats, api_visibility="private")
        follow.tick(follow_reply, [visitor, on_screen, search], [chatbot, stats, *views, sessions, follow, notice],
                    api_visibility="private", show_progress="hidden")  # no spinner over the chat twice a second
        chatbot.like(on_like, [session_id, visitor, on_screen, search], [session_id, chatbot, notice, stats, sessions,
                                                                       *views], api_visibility="private")
        demo.load(on_load, [visitor, session_id, on_screen, route, use_draft],
                  [visitor, sessions, session_id, chatbot, route, use_draft, stats, *views, follow],
                  api_visibility="private", js="(visitor, chat, on_screen, route, draft) => [visitor ?? "
                                               "window.cogumiStoredVisitor?.() ?? null, window.cogumiTabChat ?? chat, on_screen, "
                                               "window.cogumiTabRoute ?? route, window.cogumiTabDraft == null ? "
                                               "draft : window.cogumiTabDraft === 'true']").then(
            None, None, None, js="() => { window.cogumiLoaded = true; return []; }", api_visibility="private")
        # A load that could not read sessions.db is on no chat (NO_CHAT, which only that failure gives a load), but
        # the tab keeps its chat for the reload its notice asks for (QA 31 #2: that reload was on no chat too).
        session_id.change(None, session_id, None,
                          js=f"(chat) => {{ if (!(chat === '{NO_CHAT}' && !window.cogumiLoaded)) "
                             f"window.cogumiTabSet('{TAB_CHAT_KEY}', chat ?? '{NO_CHAT}'); return []; }}")
        route.change(None, route, None, js=f"(route) => {{ window.cogumiTabSet('{TAB_ROUTE_KEY}', route); return []; }}")
        use_draft.input(None, use_draft, None, js=f"(on) => {{ window.cogumiTabSet('{TAB_DRAFT_KEY}', on); return []; }}")
        if per_visitor:  # the id the page goes by, where the next page reads it (a browser's from before VISITOR_HEAD)
            visitor.change(None, visitor, None, js=f"(visitor) => {{ if (visitor) {{ window.cogumiVisitor = visitor; "
                                                   f"try {{ localStorage.setItem('{VISITOR_KEY}', visitor); }} "
                                                   f"catch (e) {{}} }} return []; }}")
        gr.api(chat_api, api_name="chat", concurrency_id=ENGINE_QUEUE)
        gr.api(new_session_api, api_name="new_session")
        gr.api(panel_api, api_name="panel")
        gr.api(feedback_api, api_name="feedback")
    return demo
