"""ChatService: the one place that knows every room. The UI and the API call it; it reads session
memory, asks the router for a route, streams from the engine under that route's modifier, and
writes the turn, its Decision and its GenerationStats back to memory."""

from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterator

from app.memory import Memory
from models.engine import Engine, GenerationStats
from models.errors import ContextOverflowError
from router.decision import ROUTES, Decision
from router.router import Router

log = logging.getLogger(__name__)


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
    status: str = "streaming"     # when done: complete | stopped | error | ignored
    notice: str | None = None     # something the user should be told (a hint, a dropped turn, an error)
    stats: GenerationStats | None = None
    message_id: int | None = None  # the assistant row in sessions.db
    decision: Decision | None = None  # how this reply was routed (None: no router configured)


AUTO = "auto"           # the override value that leaves the choice to the router
RECENT_TURNS = 5        # how many of the session's last turns the router reads


@dataclass
class ChatService:
    engine: Engine
    memory: Memory
    settings: ChatSettings = field(default_factory=ChatSettings)
    unavailable: dict[str, str] = field(default_factory=dict)  # modifier → why it could not be loaded
    router: Router | None = None  # None: every reply runs on the override, else the plain base

    def modifier_status(self) -> dict[str, str | None]:
        """Each modifier route → None when ready, else the reason it is not available."""
        loaded = set(self.engine.modifiers.names)
        return {r: None if r in loaded else self.unavailable.get(r, "not installed in this model set")
                for r in ROUTES[1:]}

    # -- sessions, for the UI's list ----------------------------------------------------------
    def new_session(self) -> str:
        return self.memory.new_session()

    def sessions(self) -> list[dict]:
        return self.memory.list_sessions()

    def transcript(self, session_id: str) -> list[dict]:
        """The stored conversation as {id, role, content, status} dicts, oldest first."""
        return [{"id": m["id"], "role": m["role"], "content": m["content"], "status": m["status"]}
                for m in self.memory.messages(session_id)]

    # -- the router panel and feedback --------------------------------------------------------
    def panel(self, session_id: str | None) -> dict:
        """What the router panel draws, all of it read from sessions.db: the session's decisions
        (oldest first, each with its user message, the reply's speed figures and the user's 👍/👎)
        and the routes used in this session and in all sessions."""
        known = bool(session_id) and self.memory.session(session_id) is not None
        return {
            "session_id": session_id if known else None,
            "decisions": self.memory.decisions(session_id) if known else [],
            "routes": {"session": self.memory.route_counts(session_id) if known else {},
                       "all": self.memory.route_counts()},
        }

    def give_feedback(self, session_id: str, index: int, liked: bool | None) -> int:
        """👍 (True), 👎 (False) or neither (None) on the message at `index` of the session's
        transcript (the chat's own numbering); returns that message's id."""
        messages = self.memory.messages(session_id) if session_id else []
        if not 0 <= index < len(messages) or messages[index]["role"] != "assistant":
            raise ValueError(f"there is no reply at position {index} of this chat")
        self.memory.set_feedback(messages[index]["id"], liked)
        return messages[index]["id"]

    # -- one message --------------------------------------------------------------------------
    def respond(self, session_id: str | None, message: str, override: str | None = None,
                use_draft: bool = True) -> Iterator[ReplyUpdate]:
        """Store the message, route it, stream the reply, store it as it grows. Yields ReplyUpdates;
        the last one has done=True. Closing the iterator (Stop) keeps the partial reply as
        "stopped". `override` picks the route by hand (base, code, reasoning, automation);
        None or "auto" lets the router choose."""
        if not message or not message.strip():
            yield ReplyUpdate(session_id or "", done=True, status="ignored",
                              notice="Type a message first: empty messages are not sent.")
            return
        override = (override or AUTO).strip().lower()
        if override not in (AUTO, *ROUTES):
            yield ReplyUpdate(session_id or "", done=True, status="ignored",
                              notice=f"Unknown route {override!r}: choose auto, {', '.join(ROUTES)}.")
            return
        if not session_id or self.memory.session(session_id) is None:
            session_id = self.memory.new_session()
        history = [{"role": m["role"], "content": m["content"]} for m in self.memory.messages(session_id)
                   if m["content"] and m["status"] != "error"]
        self.memory.add_message(session_id, "user", message)  # committed before anything can fail
        reply_id = self.memory.add_message(session_id, "assistant", "", status="streaming")
        update = ReplyUpdate(session_id, message_id=reply_id)
        pieces: list[str] = []
        try:
            decision = update.decision = self._route(session_id, message, history, override)
            route = decision.route if decision else (override if override != AUTO else "base")
            missing = self.modifier_status().get(route)
            if missing:
                update.notice = f"The {route} modifier is not available ({missing}); this reply uses the plain base."
                if decision:
                    decision.reason += f"; the {route} modifier is not available → base"
                    decision.route = "base"
                route = "base"
            if decision:
                self.memory.add_decision(session_id, reply_id, decision.to_dict())
            messages = [{"role": "system", "content": self.settings.system_prompt}, *history,
                        {"role": "user", "content": message}]
            yield from self._stream(messages, route, use_draft, reply_id, update, pieces)
        except ContextOverflowError as exc:
            update.status, update.done, update.notice = "error", True, str(exc)
        except GeneratorExit:
            update.status, update.done = "stopped", True
            raise
        except Exception as exc:  # the reply fails; what was written so far is kept
            log.exception("generation failed")
            update.status, update.done = "error", True
            update.notice = f"The model failed while replying ({type(exc).__name__}: {exc}). The text so far is kept."
        finally:
            stats = update.stats.to_dict() if update.stats else None
            self.memory.update_message(reply_id, content="".join(pieces), status=update.status or "stopped",
                                       stats=stats, error=update.notice if update.status == "error" else None)
            if stats and update.decision:
                self.memory.add_decision_stats(reply_id, stats)
        if self.router and update.status == "complete":
            self.router.remember(update.text)
        yield update

    def _route(self, session_id: str, message: str, history: list[dict], override: str) -> Decision | None:
        """The router's Decision, from the message, the conversation and the session's last turns."""
        if self.router is None:
            return None
        return self.router.decide(message, history, self.memory.decisions(session_id, last=RECENT_TURNS),
                                  override=None if override == AUTO else override,
                                  system_prompt=self.settings.system_prompt)

    def _stream(self, messages: list[dict], route: str, use_draft: bool, reply_id: int, update: ReplyUpdate,
                pieces: list[str]) -> Iterator[ReplyUpdate]:
        """Generate on `route`, growing `pieces` and saving the text every save_every_s."""
        saved_at = time.monotonic()
        seed = self.settings.seed if self.settings.seed is not None else time.time_ns() & 0x7FFFFFFF
        stream = self.engine.generate(messages, max_tokens=self.settings.max_tokens,
                                      temperature=self.settings.temperature, top_p=self.settings.top_p,
                                      seed=seed, modifier=None if route == "base" else route, use_draft=use_draft)
        with closing(stream):  # on Stop, release the engine at once
            for item in stream:
                if isinstance(item, GenerationStats):
                    update.stats = item
                    break
                pieces.append(item)
                update.text = "".join(pieces)
                if time.monotonic() - saved_at >= self.settings.save_every_s:
                    self.memory.update_message(reply_id, content=update.text)
                    saved_at = time.monotonic()
                yield update
        update.status, update.done = "complete", True
        if update.stats and update.stats.dropped_turns:
            dropped = (f"This conversation is longer than the model's context window: the oldest "
                       f"{update.stats.dropped_turns} message(s) were left out of this reply.")
            update.notice = f"{update.notice} {dropped}" if update.notice else dropped
