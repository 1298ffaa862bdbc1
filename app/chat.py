"""ChatService: the one place that knows every room. The UI and the API call it; it reads session
memory, asks the router for a route, streams from the engine under that route's modifier, and
writes the turn, its Decision and its GenerationStats back to memory."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import re
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlite_utils.db import NotFoundError

from app.memory import LOCK_WAIT_S, Memory, SessionStoreError
from models.engine import Engine, GenerationStats
from models.errors import ContextOverflowError
from router.decision import NOT_AVAILABLE, ROUTES, Decision, route_asked
from router.router import Router

log = logging.getLogger(__name__)
SAVE_RETRY_S = 120.0  # how long a reply that could not be saved is tried again (ChatService._save_later)


@dataclass
class ChatSettings:
    system_prompt: str = "You are Cogumi, a helpful assistant running locally."
    max_tokens: int = 256        # per reply; the engine keeps this much room in the context
    temperature: float = 0.7     # 0 = greedy and deterministic (the tests and benchmarks use it)
    top_p: float = 0.95
    seed: int | None = None      # None: a new seed per reply, so "regenerate" gives new text
    save_every_s: float = 0.5    # how often a streaming reply is written to sessions.db


@dataclass
class ReplyUpdate:
    session_id: str
    text: str = ""                # the reply so far
    done: bool = False
    status: str = "streaming"     # when done: complete | stopped | error | ignored; "waiting": not sent yet,
                                  # after the chat's reply still going on (another tab's, a reloaded page's)
    notice: str | None = None     # something the user should be told (a hint, a dropped turn, an error)
    stats: GenerationStats | None = None
    message_id: int | None = None  # the assistant row in sessions.db
    decision: Decision | None = None  # how this reply was routed (None: no router configured)
    saved: bool = True            # False: its save at the end failed, and is tried again (ChatService._save_later)

    def tell(self, text: str) -> None:
        """Add `text` to the notice, after what it says already."""
        self.notice = f"{self.notice} {text}" if self.notice else text


AUTO = "auto"           # the override value that leaves the choice to the router
LOCKED = "another program holds a lock on it (a database tool, a backup)"
WAITING_FOR_LOCK = f"Waiting for sessions.db: {LOCKED}."
MESSAGE_WAITS = f"Your message is sent as soon as it lets go, or comes back to the box after {LOCK_WAIT_S:.0f} s."
WAITING_TO_SAVE = f"Saving this reply waits for sessions.db: {LOCKED}."
RECENT_TURNS = 5        # how many of the session's last turns the router reads


@dataclass
class ChatService:
    engine: Engine
    memory: Memory
    settings: ChatSettings = field(default_factory=ChatSettings)
    unavailable: dict[str, str] = field(default_factory=dict)  # modifier → why it could not be loaded
    router: Router | None = None  # None: every reply runs on the override, else the plain base
    # session id → the Stop signal of the reply streaming in it (stop()); replies never overlap, but a
    # Space's visitors each have a session
    _stopping: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)
    _deleting: set[str] = field(default_factory=set, init=False, repr=False)  # stopped by delete_session
    _ending: bool = field(default=False, init=False, repr=False)  # the app is stopping: end_replies()

    def modifier_status(self) -> dict[str, str | None]:
        """Each modifier route → None when ready, else the reason it is not available."""
        loaded = set(self.engine.modifiers.names)
        return {r: None if r in loaded else self.unavailable.get(r, "not installed in this model set")
                for r in ROUTES[1:]}

    # -- sessions, for the UI's list ----------------------------------------------------------
    # `owner` scopes sessions to one visitor when many share the app (a Space); None (a personal
    # machine) sees them all. A session of another owner is treated as one that does not exist.
    def owns(self, session_id: str | None, owner: str | None = None) -> bool:
        """True when session_id names a stored session that `owner` may read and write."""
        return self.session(session_id, owner) is not None

    def session(self, session_id: str | None, owner: str | None = None) -> dict | None:
        """The stored session (id, title, ...) named session_id, if `owner` may read and write it."""
        if not isinstance(session_id, str) or not session_id or _lone_surrogate(session_id) is not None:
            return None
        row = self.memory.session(session_id)
        return row if row is not None and (owner is None or row["owner"] == owner) else None

    def new_session(self, owner: str | None = None) -> str:
        return self.memory.new_session(owner=owner)

    def discard_unsent(self, session_id: str) -> None:
        """Delete a chat made for a message that was not sent, if it holds nothing: it was listed as "New chat",
        empty (QA 30 #7). Where that cannot be done either, it is left: an empty chat loses nothing."""
        try:
            self.memory.discard_unused(session_id)
        except SessionStoreError as exc:
            log.info("empty chat %s left: %s", session_id, exc)

    def waiting_for_lock(self, done: str | None = None) -> str | None:
        """What a write to sessions.db would wait for now (another program's lock), as the page says it, with what is
        `done` when it lets go (by default, a message sent); else None."""
        if not self.memory.locked_elsewhere():
            return None
        if done is None:
            return f"{WAITING_FOR_LOCK} {MESSAGE_WAITS}"
        return f"{WAITING_FOR_LOCK} {done} as soon as it lets go, within {LOCK_WAIT_S:.0f} s, or not at all."

    def sessions(self, owner: str | None = None, matching: str | None = None, limit: int = 50,
                 used_only: bool = False) -> list[dict]:
        """The `limit` most recent sessions, or of those whose title or messages hold `matching`; `used_only`:
        of those with a message."""
        if matching and _lone_surrogate(matching) is not None:
            return []  # no stored text holds half a character
        return self.memory.list_sessions(limit=limit, owner=owner, matching=matching, used_only=used_only)

    def delete_session(self, session_id: str | None, owner: str | None = None, wait_s: float = 10.0) -> None:
        """Delete a chat and all it holds (its routing decisions and 👍/👎 too). A reply still streaming
        there is stopped first, and the delete waits (up to wait_s) until it is saved: it writes to the chat."""
        if not self.owns(session_id, owner):
            raise ValueError("There is no chat to delete here: open one from the list first.")
        deadline = time.monotonic() + wait_s
        self._deleting.add(session_id)  # the reply says so as it ends
        try:
            while (replying := self._stopping.get(session_id)) is not None:
                replying.set()
                if time.monotonic() > deadline:
                    raise ValueError(f"This chat's reply did not stop within {wait_s:g} s, so the chat was not "
                                     f"deleted: press Stop, then delete it again.")
                time.sleep(0.02)
            self.memory.delete_session(session_id)
        finally:
            self._deleting.discard(session_id)

    def transcript(self, session_id: str, owner: str | None = None) -> list[dict]:
        """The stored conversation as {id, role, content, status, error, stop_reason, liked} dicts, oldest
        first; `error` is why a reply failed; `stop_reason` why a reply ended (GenerationStats: "eos",
        "length", "context", "stopped"; None while it streams); `liked` is a reply's 👍 (True) or 👎 (False),
        else None."""
        if not self.owns(session_id, owner):
            return []
        liked = self.memory.feedback(session_id)
        return [{"id": m["id"], "role": m["role"], "content": m["content"], "status": m["status"],
                 "error": m["error"], "stop_reason": (m["stats"] or {}).get("stop_reason"),
                 "liked": liked.get(m["id"])} for m in self.memory.messages(session_id)]

    # -- the router panel and feedback --------------------------------------------------------
    def panel(self, session_id: str | None, owner: str | None = None) -> dict:
        """What the router panel draws, all of it read from sessions.db: the session's decisions
        (oldest first, each with its user message, the reply's speed figures and the user's 👍/👎)
        and the routes used in this session and in all sessions."""
        known = self.owns(session_id, owner)
        return {
            "session_id": session_id if known else None,
            "decisions": self.memory.decisions(session_id) if known else [],
            "routes": {"session": self.memory.route_counts(session_id) if known else {},
                       "all": self.memory.route_counts(owner=owner)},
        }

    def give_feedback(self, session_id: str, index: int, liked: bool | None, owner: str | None = None) -> int:
        """👍 (True), 👎 (False) or neither (None) on the message at `index` of the session's
        transcript (the chat's own numbering); returns that message's id."""
        if not session_id:  # QA 22: "it was deleted, or the id is wrong", of no id at all
            raise ValueError("No chat given: pass the session id of the chat the reply is in (from /new_session).")
        if not self.owns(session_id, owner):
            raise ValueError(no_such_chat(session_id))
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"the index is a whole number, not {shown_value(index)}")
        if liked is not None and not isinstance(liked, bool):  # JSON's -7 or 2 was stored, and read as 👍
            raise ValueError(f"liked is true (👍), false (👎) or null (neither), not {shown_value(liked)}")
        messages = self.memory.messages(session_id)
        if not 0 <= index < len(messages) or messages[index]["role"] != "assistant":
            raise ValueError(f"There is no reply at position {index} of this chat: {reply_positions(messages)}")
        if messages[index]["status"] == "error" and liked is not None:  # its turn is not in the conversation
            raise ValueError("This reply failed, so it takes no 👍/👎: send the message again for one that can.")
        if not messages[index]["content"].strip() and liked is not None:  # QA 18: a 👎 stored on nothing
            raise ValueError("This reply has no text, so it takes no 👍/👎: send the message again for one that can.")
        self.memory.set_feedback(messages[index]["id"], liked)
        return messages[index]["id"]

    # -- one message --------------------------------------------------------------------------
    def respond(self, session_id: str | None, message: str, override: str | None = None,
                use_draft: bool = True, owner: str | None = None) -> Iterator[ReplyUpdate]:
        """Store the message, route it, stream the reply, store it as it grows. Yields ReplyUpdates;
        the last one has done=True. Closing the iterator (Stop) keeps the partial reply as
        "stopped". `override` picks the route by hand (base, code, reasoning, automation);
        None or "auto" lets the router choose."""
        refused = self.refusal(message, override)
        if refused:
            yield ReplyUpdate(session_id or "", done=True, status="ignored", notice=refused)
            return
        override = (override or AUTO).strip().lower()
        stopping, made = threading.Event(), False
        try:
            if waiting := self.waiting_for_lock():  # the writes below wait for it: say so (QA 28)
                yield ReplyUpdate(session_id or "", status="waiting", notice=waiting)
            if not self.owns(session_id, owner):  # none yet, or not this visitor's: a new one
                session_id, made = self.memory.new_session(owner=owner), True
            # A reply still going on in this chat (a reloaded page's, carried on; another tab's): this message
            # comes after it whole. Its reply would wait for the engine anyway; its conversation held the
            # reply as far as it was saved (often nothing yet).
            waited = time.monotonic()
            while session_id in self._stopping:
                if time.monotonic() - waited >= self.settings.save_every_s:  # a page can draw that reply as it grows
                    waited = time.monotonic()
                    yield ReplyUpdate(session_id, status="waiting")
                time.sleep(0.02)
            self._stopping[session_id] = stopping  # first: a Stop pressed as the message shows finds this reply
            history = _conversation(self.memory.messages(session_id))
            reply_id = self.memory.add_turn(session_id, message)  # committed before anything can fail
        except BaseException as exc:  # registered, this reply must not stay so: the chat's next message waits for it
            if session_id and self._stopping.get(session_id) is stopping:
                del self._stopping[session_id]
            if not isinstance(exc, SessionStoreError):
                raise
            if made:
                self.discard_unsent(session_id)
            # locked, read-only, full: nothing is answered that is not kept
            yield ReplyUpdate(session_id or "", done=True, status="ignored",
                              notice=f"Your message was not sent, because it could not be saved. {exc}")
            return
        update = ReplyUpdate(session_id, message_id=reply_id)
        pieces: list[str] = []
        unsaved_decision = None
        try:
            decision = update.decision = self._route(session_id, message, history, override)
            route = decision.route if decision else (override if override != AUTO else "base")
            missing = self.modifier_status().get(route)
            if missing:
                update.notice = f"The {route} modifier is not available ({missing.rstrip('.')}); this reply uses the plain base."
                if decision:
                    decision.reason += "; " + NOT_AVAILABLE.format(route)
                    decision.route = "base"
                route = "base"
            if decision:
                unsaved_decision = {**decision.to_dict(), "override_held": self._held(override, owner)}
                try:
                    self.memory.add_decision(session_id, reply_id, unsaved_decision)
                    unsaved_decision = None
                except SessionStoreError as exc:  # QA 28: a lock taken just now; written with the reply instead
                    log.warning("routing decision of reply %s not saved yet: %s", reply_id, exc)
            messages = [{"role": "system", "content": self.settings.system_prompt}, *history,
                        {"role": "user", "content": message}]
            yield from self._stream(messages, route, use_draft, reply_id, update, pieces, stopping.is_set)
            if self.memory.locked_elsewhere():  # the save below waits for it: the whole reply first, and why (QA 32 #1:
                # its last words were held back, without a word, until the lock went)
                yield dataclasses.replace(update, done=False, status="streaming",
                                          notice=" ".join(filter(None, [update.notice, WAITING_TO_SAVE])))
        except ContextOverflowError as exc:
            update.status, update.done, update.notice = "error", True, str(exc)
        except GeneratorExit:  # Stop, or the page gone; as the reply waited for its save, it has ended as it ended
            update.status, update.done = update.status if update.done else "stopped", True
            raise
        except SessionStoreError as exc:  # the session's decisions could not be read to route it (QA 30: "the reply
            # could not be saved", where no reply was made)
            update.status, update.done = "error", True
            update.notice = f"This message was not answered: sessions.db could not be read to route it. {exc}"
        except Exception as exc:  # the reply fails; what was written so far is kept
            log.exception("generation failed")
            update.status, update.done = "error", True
            update.notice = f"The model failed while replying ({type(exc).__name__}: {exc}). The text so far is kept."
        finally:
            stats = update.stats.to_dict() if update.stats else None
            save = functools.partial(self._save_reply, reply_id, "".join(pieces), update.status or "stopped", stats,
                                     update.notice if update.status == "error" else None, update.decision is not None,
                                     [(session_id, unsaved_decision)] if unsaved_decision else [])
            try:
                save()
            except SessionStoreError as exc:  # shown, and saved once it can be: say so (earlier rows are untouched)
                log.warning("reply %s not saved: %s", reply_id, exc)
                update.saved = False
                update.tell(f"This reply could not be saved. {exc} The app tries again each second for "
                            f"{SAVE_RETRY_S / 60:.0f} minutes.")
                self._save_later(reply_id, save)
            finally:  # last: until it is saved, the reply writes to the chat (delete_session waits for this)
                if session_id in self._deleting:  # (the page that shows this reply may not be the one deleting)
                    update.notice = "This chat was deleted, in another tab or window, while it replied: the reply is not kept."
                if self._stopping.get(session_id) is stopping:
                    del self._stopping[session_id]
        if self.router and update.status == "complete":
            self.router.remember(update.text)
        yield update

    def _save_reply(self, reply_id: int, text: str, status: str, stats: dict | None, error: str | None,
                    decided: bool, unsaved_decision: list[tuple[str, dict]] = ()) -> None:
        """A reply as it ended, with its figures beside its routing decision; first that decision where it could
        not be written before the reply (taken off the list once written: a later try does not write it twice)."""
        if unsaved_decision:
            session_id, decision = unsaved_decision[0]
            self.memory.add_decision(session_id, reply_id, decision)
            unsaved_decision.clear()
        self.memory.update_message(reply_id, content=text, status=status, stats=stats, error=error)
        if stats and decided:
            self.memory.add_decision_stats(reply_id, stats)
        self.memory.checkpoint()

    @staticmethod
    def _save_later(reply_id: int, save: Callable[[], None]) -> None:
        """Try a reply's save again each second, for SAVE_RETRY_S: a lock another program holds (a backup, a
        sync, a database tool) is often let go soon. It stayed "streaming", empty, until the next start marked
        it interrupted (QA 19), and a page showing its chat followed it meanwhile."""
        def retry() -> None:
            deadline = time.monotonic() + SAVE_RETRY_S
            while time.monotonic() < deadline:
                time.sleep(1.0)
                try:
                    save()
                except SessionStoreError:
                    continue
                except NotFoundError:  # its chat was deleted meanwhile: nothing left to save it into
                    log.info("reply %s not saved: its chat was deleted", reply_id)
                    return
                log.info("reply %s saved on a later try", reply_id)
                return
            log.warning("reply %s was not saved: the next start keeps what was saved of it, marked interrupted",
                        reply_id)
        threading.Thread(target=retry, name=f"save-reply-{reply_id}", daemon=True).start()

    def refusal(self, message: str, override: str | None = None) -> str | None:
        """Why respond() would not send this message (the notice it gives), or None: nothing is stored
        for an empty message, one that is not valid Unicode, an unknown route, or one too long for the
        model. The page asks before it makes a new chat for the message (QA 18: a refused one left an
        empty chat listed)."""
        if message is None or shows_nothing(message):  # None: an API call without one (QA 19)
            return "Type a message first: empty messages are not sent."
        broken = _lone_surrogate(message)
        if broken is not None:  # JSON can carry "\ud800" (half an emoji); SQLite and llama.cpp take UTF-8 only
            return (f"This message is not valid Unicode text (character {broken + 1} is half of a UTF-16 pair), "
                    f"so it was not sent. Delete or retype that character.")
        override = (override or AUTO).strip().lower()
        if override not in (AUTO, *ROUTES):
            return f"Unknown route {shown_value(override)}: choose auto, {', '.join(ROUTES)}."
        return self.too_long(message)

    def too_long(self, message: str) -> str | None:
        """Why the message can never fit the model's context, with its size, or None. It is refused before it
        is stored, as an empty one is (QA 16, 17: kept with a failed reply, each try at shortening it stayed
        in the chat, and a first one began a chat titled with it); the page puts it back in the box."""
        try:
            self.engine.fit([{"role": "system", "content": self.settings.system_prompt},
                             {"role": "user", "content": message}], self.settings.max_tokens)
        except ContextOverflowError as exc:
            return f"{exc} It was not sent."
        return None

    def _route(self, session_id: str, message: str, history: list[dict], override: str) -> Decision | None:
        """The router's Decision, from the message, the conversation and the session's last turns."""
        if self.router is None:
            return None
        return self.router.decide(message, history, self.memory.decisions(session_id, last=RECENT_TURNS),
                                  override=None if override == AUTO else override,
                                  system_prompt=self.settings.system_prompt,
                                  session_escalations=self.memory.escalations(session_id))  # QA 27: not the last 5

    def _held(self, override: str | None, owner: str | None) -> int | None:
        """For an override, whether the owner's message before it (in any chat) had that route picked too: the
        page's Route choice held, not picked for this message (router.history). None where the router chose."""
        if override in (None, AUTO):
            return None
        before = self.memory.last_decision(owner)
        picked_before = route_asked(before["route"], before["reason"])[0] if before and before["overridden"] else None
        return int(picked_before == override)

    def wait_for_replies(self, wait_s: float) -> int:
        """Wait (up to wait_s) until no reply is streaming, each saved as it ends; returns how many still
        are (the app is stopping: launch.py)."""
        deadline = time.monotonic() + wait_s
        while self._stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._stopping)

    def end_replies(self, wait_s: float) -> int:
        """The app is stopping and waits no longer (launch.py): each reply still streaming ends at its next
        token, saved with every word it wrote and marked interrupted. It left saved as far as its last save, up
        to save_every_s before, words the page had shown (QA 20). Waits up to wait_s; returns how many are left."""
        self._ending = True
        for stopping in list(self._stopping.values()):
            stopping.set()
        return self.wait_for_replies(wait_s)

    @staticmethod
    def carry_on(replies: Iterator[ReplyUpdate]) -> None:
        """A reply whose page stopped reading it goes on to its end on a thread, saved as it grows and at
        its end with its figures, as when the page opens another chat. A page that is reloaded or closed
        stops reading (QA: the reply ended there, marked "stopped"); so does Stop, which has told the
        reply to end at its next token (the stream's close had ended it first, without its figures)."""
        threading.Thread(target=collections.deque, args=(replies, 0), name="reply-carried-on", daemon=True).start()

    def stop(self, session_id: str | None, owner: str | None = None) -> bool:
        """Stop the reply streaming in this session (the page's Stop, beside closing the stream): it ends
        at its next token, kept as "stopped". False when none is streaming there."""
        stopping = self._stopping.get(session_id) if self.owns(session_id, owner) else None
        if stopping is None:
            return False
        stopping.set()
        return True

    def _stream(self, messages: list[dict], route: str, use_draft: bool, reply_id: int, update: ReplyUpdate,
                pieces: list[str], should_stop) -> Iterator[ReplyUpdate]:
        """Generate on `route`, growing `pieces` and saving the text every save_every_s."""
        saved_at, told = time.monotonic(), False
        seed = self.settings.seed if self.settings.seed is not None else time.time_ns() & 0x7FFFFFFF
        stream = self.engine.generate(messages, max_tokens=self.settings.max_tokens,
                                      temperature=self.settings.temperature, top_p=self.settings.top_p,
                                      seed=seed, modifier=None if route == "base" else route, use_draft=use_draft,
                                      should_stop=should_stop)
        with closing(stream):  # on Stop, release the engine at once
            for item in stream:
                if isinstance(item, GenerationStats):
                    update.stats = item
                    break
                pieces.append(item)
                update.text = "".join(pieces)
                if time.monotonic() - saved_at >= self.settings.save_every_s:
                    try:  # without waiting for another program's lock: the next save tries again
                        self.memory.update_message(reply_id, content=update.text, wait=False)
                    except SessionStoreError as exc:  # keep replying; the save at the end says if it is kept
                        if not told:
                            log.warning("reply %s not saved as it streams: %s", reply_id, exc)
                        told = True
                    saved_at = time.monotonic()
                yield update
        stopped = update.stats is not None and update.stats.stop_reason == "stopped"
        update.status, update.done = ("interrupted" if self._ending else "stopped") if stopped else "complete", True
        if update.stats and update.stats.dropped_turns:
            n = update.stats.dropped_turns
            dropped = (f"This conversation is longer than the model's context window: "
                       f"{'the oldest message was' if n == 1 else f'the oldest {n} messages were'} left out of this reply.")
            update.tell(dropped)
        if update.stats and update.stats.stop_reason == "context":  # it ended mid-sentence: say why
            full = (f"This reply stopped where the model's context window ({self.engine.n_ctx:,} tokens) is full. "
                    f"Start a new chat to go on, or start the app with a larger --n-ctx.")
            update.tell(full)


def _conversation(stored: list[dict]) -> list[dict]:
    """What the model reads of a session's stored messages ({role, content}): a turn whose reply failed
    (a model error; in older chats, a message too long for the context) is left out whole, the message
    with its reply, so that it does not push the turns before it out of every later prompt."""
    kept = []
    for i, m in enumerate(stored):
        reply = stored[i + 1] if i + 1 < len(stored) else None
        failed = m["status"] == "error" or (m["role"] == "user" and reply is not None
                                            and reply["role"] == "assistant" and reply["status"] == "error")
        if m["content"] and not failed:
            kept.append({"role": m["role"], "content": m["content"]})
    return kept


# Spaces, Unicode's default-ignorable characters (DerivedCoreProperties.txt: zero-width spaces and joiners,
# byte-order marks, bidirectional controls, variation selectors, Hangul fillers, tags), the braille blank and
# control characters (QA 25: a NUL): a message of nothing else shows as nothing, and was sent, answered and
# titled blank (QA). Not every format character: the Arabic number sign shows a mark.
_SHOWS_NOTHING = re.compile("[\\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                            "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
                            "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]*")


def shows_nothing(text: str) -> bool:
    return _SHOWS_NOTHING.fullmatch(text) is not None


def reply_positions(messages: list[dict]) -> str:
    """Where a chat's replies are, its messages counted from 0 (QA 22: a refused position said not where)."""
    at = [str(i) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(at) <= 1:
        return f"its reply is at position {at[0]}." if at else "it has no reply yet."
    if len(at) > 6:
        return f"its {len(at)} replies are at positions {', '.join(at[:3])}, … {at[-1]}."
    return f"its replies are at positions {', '.join(at[:-1])} and {at[-1]}."


def no_such_chat(session_id) -> str:
    return f"There is no chat {shown_value(session_id)} here: it was deleted, or the id is wrong."


def shown_value(value, limit: int = 40) -> str:
    """A value from a request as an error message quotes it: its repr, cut at `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit + 1] + "…" + text[-1]


def _lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (not encodable as UTF-8), else None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return exc.start
