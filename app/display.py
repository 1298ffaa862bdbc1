"""What the chat shows of a message: its text as markdown that renders as that text (as_markdown), a
status note under a reply that did not end normally, and the line of figures under the latest reply.

A reply is markdown (models write it), shown rendered. A person's message is text: outside its code it
shows as typed, "__init__" and "2*3*4" too."""

from __future__ import annotations

import html
import re
from collections import Counter
from datetime import datetime, timezone
from types import SimpleNamespace

from markdown_it import MarkdownIt

from app.chat import ReplyUpdate
from router.decision import ROUTES

STATUS_NOTES = {
    "stopped": "*(stopped)*",
    "interrupted": "*(interrupted: the app stopped before this reply finished)*",
    "error": '<em class="reply-failed">(failed{})</em>',  # the class hides the reply's 👍/👎 (page.css)
}
# A reply that ended because the context window was full: it stops mid-sentence, so the mark says why.
FULL_CONTEXT_NOTE = "*(cut short: the model's context window was full)*"

# Code a message holds: fenced blocks (a fence of 3+ backticks or tildes after at most 3 spaces, to a
# closing fence of the same kind or the end of the text) and code spans (a run of backticks to the next
# run of the same length).
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_BACKTICKS = re.compile(r"`+")
_HTML_READS = re.compile(r"[&<>]|!\[")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]+")
# Backslash-escaped in a failed reply's reason (which follows "(failed: ", never at a line's start): no
# emphasis, code or link can form. "![" can no longer either, once "[" is escaped.
_MARKDOWN_INLINE = re.compile(r"[\\`*_\[\]~|]")
# In a person's message, outside code: the characters markdown reads as syntax, as character references
# (which markdown shows as the character and reads as nothing else; Copy turns them back, copy_as_typed.js),
# and "$", whose "$$" is the Chatbot's LaTeX delimiter. Kept: "-" and "*" list markers and a numbered list's
# "1." (markdown places a code block in a list item by them; a list shows as one anyway), spaces (indented
# code). A line of "-" or "=" alone loses its first: under a line of text it made that line a heading. Kept
# as typed too: what the page's markdown (marked, GFM) makes a link of, a bare URL or an e-mail address, by
# its own expressions (QA 12: a reference at a link's end lost its ";" to the link, and showed as "&#95").
_SYNTAX_CHARS = r"[&<>\\`*_~\[\]|#$]"
_URL_START = r"(?:(?:ftp|https?)://|www\.)[a-zA-Z0-9-]"  # where marked (GFM) begins a bare URL's link
_TYPED_SYNTAX = re.compile(
    rf"(?P<url>{_URL_START}[^\s<\"]*)"  # no URL holds a '"' (QA 28: '<a href="…">')
    r"|(?P<email>(?<![A-Za-z0-9.!#$%&'*+/=?_`{|}~-])[A-Za-z0-9._+-]++@[a-zA-Z0-9_-]++"
    r"(?:\.[a-zA-Z0-9_-]*+(?<=[a-zA-Z0-9]))++(?![-_]))"
    r"|^(?P<line>[ \t]*)(?P<first>[-=])(?=[-= \t]*(?:\r|\n|$))|^(?P<marker>[ \t]*\*)(?=[ \t])"
    r"|" + _SYNTAX_CHARS, re.M)
_TYPED_CHARS = re.compile(_SYNTAX_CHARS)
# Where marked ends a bare URL's link (GFM's trailing punctuation, an unbalanced ")", an entity at the end) ...
_LINK_BACKPEDAL = re.compile(r"""(?:[^?!.,:;*_'"~()&]+|\([^)]*\)|&(?![a-zA-Z0-9]+;\Z)|[?!.,:;*_'"~)]+(?!\Z))+""")
# ... and what ends it here: else it runs to the next space, through the references that follow it, and the
# end it cuts off is a reference's ";" (an HTML comment: nothing shows; Copy takes it out)
LINK_END = "<!-- -->"
# A URL a '"' follows in a reply, or "&quot;" (escaped: "&amp;quot;"): its link ends there too (QA 28: a reply quoting
# '<form action="http://…">' linked to "http://…%22><input"; QA 29: "&quot;https://…/t&quot;" to "…/t&quot")
_URL_BEFORE_QUOTE = re.compile(_URL_START + r'(?:(?!&amp;quot;)[^\s<"])*(?="|&amp;quot;)')
# Markdown's block structure (CommonMark), read to find where it sees an indented code block: the block
# rules alone (inline parsing was 3/4 of the time: 50,000 characters in 186 ms, 11 ms without), and only
# for text with a line indented 4 columns, which such a block needs (a streaming reply is shown 25 times
# a second).
_BLOCKS = MarkdownIt("commonmark").disable(["inline", "text_join"])
_INDENTED = re.compile(r"^(?: {0,3}\t| {4})", re.M)
_LINE_INDENT = re.compile(r"^[ \t]+", re.M)
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # as markdown counts lines: \r\n, \r or \n ends one
# A code block's copy button, as Gradio's markdown gives its own code blocks: its click handler copies
# the text of the button's parent. Icons by CSS (app/page.css): they are not text, so not copied.
COPY_CODE = ('<button class="copy_code_button" title="copy"><span class="copy-text"></span>'
             '<span class="check"></span></button>')


# Bidi controls that open an embedding, an override or an isolate, each closed at once where a message is shown: it
# shows its characters in the order they were typed (QA 28 #4: "\u202egnp.exe" read "exe.png"; Past chats drops
# them from titles). copy_as_typed.js takes the closings out again.
_BIDI_OPENER = re.compile("[\u202a\u202b\u202d\u202e]|([\u2066-\u2068])")


def in_typed_order(text: str) -> str:
    return _BIDI_OPENER.sub(lambda c: c[0] + ("\u2069" if c[1] else "\u202c"), text)


def shown(role: str, content: str, status: str = "complete", error: str | None = None,
          stop_reason: str | None = None) -> dict:
    """A message as the Chatbot takes it; a failed reply says why (`error`, as stored), on reopening too,
    and so does one cut short by a full context (`stop_reason` "context"). The text goes as a text part:
    the Chatbot passes a string through inspect.cleandoc, which took the indent off pasted code and
    turned its tabs into spaces, on the page and in what Copy gives."""
    text = as_markdown(in_typed_order(content), typed=role == "user")
    note = STATUS_NOTES.get(status) if role == "assistant" else None
    if role == "assistant" and status == "complete" and stop_reason == "context":
        note = FULL_CONTEXT_NOTE
    if role == "assistant" and status in ("stopped", "interrupted") and not content.strip():
        note = f'<em class="unrated">{note.strip("*")}</em>'  # nothing to rate: the class hides 👍/👎 (page.css)
    if status == "error" and note:  # the reason as text: no tag, and no markdown (a __call__ read as bold)
        reason = _escaped(_MARKDOWN_INLINE.sub(r"\\\g<0>", " ".join(error.split()))) if error else ""
        note = note.format(f": {reason}" if reason else "")
    return {"role": role, "content": {"type": "text", "text": "\n\n".join(part for part in (text, note) if part)}}


def as_markdown(text: str, typed: bool = False) -> str:
    """Whatever a user (or the model) typed, shown as that text: outside code, HTML's special characters
    become entities (no tag renders, no image is fetched: "![" too); code keeps its characters, as
    <pre><code> and <code> elements of our own holding it escaped (markdown shows code verbatim, so an
    entity there showed as "&lt;"). Text with &, < or > is never handed to markdown as code: where
    markdown ends a fence or pairs backticks otherwise than this does (list items, indents, blank
    lines), such text left verbatim rendered as HTML (found by fuzzing through markdown-it)."""
    code_blocks = _markdown_code(text)
    parts, at = [], 0
    for opening, inside, inside_end, end in _fenced_code(text):
        parts.append(_prose(text, at, opening, code_blocks, typed))
        info = text[opening:inside].strip().lstrip("`~").strip()
        language = _language_class(info)  # for Copy (copy_as_typed.js)
        # At the fence's own indent, so that a block in a list item stays in it. Markdown takes the item's
        # indent off each line of it, but for the first: that one follows <code> on the <pre> line.
        indent = " " * (len(text[opening:inside]) - len(text[opening:inside].lstrip(" ")))
        code = text[inside:inside_end]
        code = code[min(len(indent), len(code) - len(code.lstrip(" "))):]
        closing = indent if code.endswith("\n") else ""
        after = "\n" if text[:end].endswith("\n") else ""  # the closing fence's line end, if it had one
        parts.append(f"{indent}<pre>{COPY_CODE}<code{language}>{_escaped(code, typed)}{closing}</code></pre>{after}")
        at = end
    shown = "".join(parts + [_prose(text, at, len(text), code_blocks, typed)])
    return _kept_indents(shown) if typed and _LINE_INDENT.search(shown) else shown


def _kept_indents(markdown: str) -> str:
    """A person's markdown with the indent of each line of its paragraphs as character references, which
    markdown keeps (and page.css shows): code pasted without fences, a traceback, JSON kept its line breaks
    but lost every indent, markdown taking it off a paragraph's lines. Paragraphs in lists and quotes keep
    their markdown: there an indent places the line in its item."""
    lines = _LINES.findall(markdown)
    for block in _BLOCKS.parse(markdown):
        if block.type == "paragraph_open" and block.level == 0:
            for n in range(*block.map):
                if indent := _LINE_INDENT.match(lines[n]):
                    lines[n] = "".join(f"&#{ord(c)};" for c in indent[0]) + lines[n][indent.end():]
    return "".join(lines)


def _markdown_code(text: str) -> list[tuple[int, int, object, int]]:
    """The code blocks markdown reads in text that has a line indented 4 columns (which an indented block,
    and a fence _fenced_code leaves, need): (first line, line after, block token, the list item's text
    indent) of each indented block and fence, but those in a quote. Read from the whole text, so that a
    block after a fenced one keeps its list item."""
    if not _INDENTED.search(text):
        return []
    lines, found, items = _LINES.findall(text), [], []  # items: the open list items' indents (None: a quote)
    for block in _BLOCKS.parse(text):
        if block.type == "list_item_open":
            items.append(_item_indent(lines[block.map[0]], block))
        elif block.type == "blockquote_open":
            items.append(None)
        elif block.type in ("list_item_close", "blockquote_close"):
            items.pop()
        elif block.type in ("code_block", "fence") and (not items or items[-1] is not None):
            found.append((*block.map, block, items[-1] if items else 0))
    return found


def _prose(text: str, start: int, stop: int, code_blocks: list, typed: bool) -> str:
    """text[start:stop], outside the fenced code _fenced_code finds: the code blocks markdown reads in it
    (_markdown_code: lines indented 4 columns past their list item's text after a blank line; a fence 4
    spaces in or more, in a nested list item) as ours, holding their lines as typed; the rest escaped
    (_escape_prose). Markdown shows code verbatim, so our entities showed there ("&lt;")."""
    prose = text[start:stop]
    if not code_blocks:
        return _escape_prose(prose, typed)
    first = len(_LINES.findall(text[:start]))  # the line prose starts on (start is at a line's start)
    lines = _LINES.findall(prose)
    parts, at = [], 0
    for begin, end, block, item in code_blocks:
        begin, end = begin - first, end - first
        if begin >= at and end <= len(lines):
            parts += [_escape_prose("".join(lines[at:begin]), typed), _code_html(lines[begin:end], block, item, typed)]
            at = end
    return "".join(parts + [_escape_prose("".join(lines[at:]), typed)])


def _item_indent(line: str, item) -> int:
    """Where a list item's text starts: after its marker ("-", "1.") and 1 to 4 spaces (more: the text is
    indented code, which starts one space after the marker)."""
    marker = len(line) - len(line.lstrip(" ")) + len(item.info) + len(item.markup)
    spaces = len(line[marker:]) - len(line[marker:].lstrip(" "))
    return marker + (spaces if 1 <= spaces <= 4 and line[marker:].strip() else 1)


def _code_html(lines: list[str], block, item: int, typed: bool) -> str:
    """A code block's lines as our <pre>, in a list item whose text is indented `item`. The <pre> goes at
    that indent, so that the block stays in the item; a newline after it is not shown (HTML), and lets
    markdown take that indent off every line of the code but the first, which has it taken off here, and
    put back by Copy, with a fence's own lines, kept in attributes (copy_as_typed.js). A first line
    indented by tabs shows them as spaces, as markdown does the others' (its indent rides along, typed)."""
    opening = closing = ""
    if block.type == "fence":
        opening, lines = lines[0], lines[1:]
        last = lines[-1].strip() if lines else ""
        if last.startswith(block.markup) and not last.lstrip(block.markup[0]):  # else it runs to the item's end
            closing, lines = lines[-1], lines[:-1]
    code = "".join(lines)
    if closing:  # its line end goes after the block, as the code's last line end does for one not closed
        end = closing[len(closing.rstrip("\r\n")):]
        closing = closing[:len(closing) - len(end)]
    else:
        end = code[len(code.rstrip("\r\n")):]
        code = code[:len(code) - len(end)]
    attributes = ""
    if block.type == "fence":
        attributes = (f'{_language_class(block.info.strip())} data-open="{_attribute(opening)}" '
                      f'data-close="{_attribute(closing)}"')
    indent = re.match(r"[ \t]*", code)[0]
    if code and indent.startswith(" " * item) and "\t" not in indent:
        shown = code[item:]
    elif code:  # QA: a tab there, and markdown read the block as code, but it was left as prose ("&lt;")
        shown = indent.expandtabs(4)[item:] + code[len(indent):]
        attributes += f' data-first="{_attribute(indent)}"'
    else:
        shown = code
    closing_at = " " * item if code.endswith("\n") else ""  # a line that starts at column 0 would end the item
    return (f"{' ' * item}<pre>\n{' ' * item}{COPY_CODE}<code data-typed{attributes}>{_escaped(shown, typed)}"
            f"{closing_at}</code></pre>{end}")


def _language_class(info: str) -> str:
    """A fence's info string as the <code> class markdown gives it, when it names a language."""
    return f' class="language-{info}"' if _LANGUAGE.fullmatch(info) else ""


def _attribute(text: str) -> str:
    return html.escape(text, quote=True).replace("\r", "&#13;").replace("\n", "&#10;")


def _fenced_code(text: str) -> list[tuple[int, int, int, int]]:
    """Each fenced code block: where its opening fence's line starts, where the code starts and ends, and
    where the block ends (after its closing fence's line, or at the end of the text)."""
    blocks, fence, at = [], None, 0
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):
        found = _FENCE.match(line)
        if fence is None:
            if found and not (found[1][0] == "`" and "`" in line[found.end():]):  # no backtick after a ``` fence
                fence, opening = found[1], (at, at + len(line))
        elif found and found[1][0] == fence[0] and len(found[1]) >= len(fence) and not line[found.end():].strip():
            blocks.append((*opening, at, at + len(line)))
            fence = None
        at += len(line)
    if fence is not None:  # a fence left open runs to the end
        blocks.append((*opening, len(text), len(text)))
    return blocks


def _escape_prose(text: str, typed: bool) -> str:
    """text outside fenced code: escaped, and its code spans kept as code. A span holding nothing HTML
    reads (no &, <, > or "![") stays as typed; one that does becomes a <code> element with the span
    escaped inside, which shows the same. Pairing backticks exactly as markdown does would need its
    block structure (a blank line or a "# " line ends the pairing); this way nothing of the text can
    become a tag, whichever way they pair. `typed`: a person's text, whose markdown is shown as typed
    too (_typed)."""
    escaped = _typed if typed else _reply_prose
    parts, at, runs = [], 0, list(_BACKTICKS.finditer(text))
    i = 0
    while i < len(runs):
        opening = runs[i]
        closing = next((j for j in range(i + 1, len(runs)) if len(runs[j][0]) == len(opening[0])), None)
        if closing is None or text[opening.start() - 1:opening.start()] == "\\":  # not a span: literal backticks
            i += 1
            continue
        span = text[opening.start():runs[closing].end()]
        inside = span[len(opening[0]):-len(opening[0])]
        parts += [escaped(text[at:opening.start()]),
                  f"<code>{_escaped(inside, typed)}</code>" if _HTML_READS.search(span) or typed and "$" in span else span]
        at, i = runs[closing].end(), closing + 1
    return "".join(parts + [escaped(text[at:])])


def _escaped(text: str, typed: bool = False) -> str:
    """HTML's special characters as entities, "![" too (no image is fetched); in a person's text "$" too (a "$$"
    anywhere in a message, code included, has the Chatbot read the whole message's text for LaTeX)."""
    escaped = html.escape(text, quote=False).replace("![", "&#33;[")
    return escaped.replace("$", "&#36;") if typed else escaped


def _reply_prose(text: str) -> str:
    return _URL_BEFORE_QUOTE.sub(lambda url: url[0] + LINK_END, _escaped(text))


def _typed(text: str) -> str:
    """A person's text outside code, as markdown that shows it as typed (_TYPED_SYNTAX)."""
    def reference(found: re.Match) -> str:
        if found["email"]:
            return _escaped(found[0])
        if found["url"]:
            link, cut = found[0], ""
            while cut != link:
                cut, link = link, (_LINK_BACKPEDAL.match(link) or [""])[0]
            rest = found[0][len(link):] + text[found.end():found.end() + 1]  # and the "<" that may end it
            return (_escaped(link[:-1], typed=True) + _escaped(link[-1:])  # "$" too, but at its end: a reference there
                    + (LINK_END if rest.strip() else "") + _TYPED_CHARS.sub(_character, found[0][len(link):]))  # breaks it
        if found["first"]:
            return f"{found['line']}&#{ord(found['first'])};"
        if found["marker"]:
            return found[0]
        return _character(found)
    return _TYPED_SYNTAX.sub(reference, text)


def _character(found: re.Match) -> str:
    return html.escape(found[0], quote=False) if found[0] in "&<>" else f"&#{ord(found[0])};"


def chat_labels(chats: list[dict], now: datetime | None = None) -> list[tuple[str, str]]:
    """(label, id) of each chat in the Past chats list: its title, and where another listed chat has the same
    title, how long ago it was last used (QA 20: three chats that began alike were three identical entries).
    An age, not a time of day: the page's time zone is not the server's on a Space. Labels that still meet
    (QA 22: chats begun within a minute all read "just now") are numbered in the order the chats were begun."""
    now = now or datetime.now(timezone.utc)
    repeated = {title for title, n in Counter(c["title"] for c in chats).items() if n > 1}
    labels = [f"{c['title']} · {_age(datetime.fromisoformat(c['updated_at']), now)}" if c["title"] in repeated
              else c["title"] for c in chats]
    clashing, counted = {label for label, n in Counter(labels).items() if n > 1}, Counter()
    for i in sorted(range(len(chats)), key=lambda i: chats[i].get("created_at") or chats[i]["updated_at"]):
        if labels[i] in clashing:
            counted[labels[i]] += 1
            labels[i] = f"{labels[i]} ({counted[labels[i]]})"
    return list(zip(labels, [c["id"] for c in chats]))


def _age(then: datetime, now: datetime) -> str:
    age = now - then
    minutes = int(age.total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 24 * 60:
        return f"{minutes // 60} h ago"
    if age.days < 14:
        return f"{age.days} day{'s' * (age.days > 1)} ago"
    return then.strftime("%-d %b %Y")


def stats_line(update: ReplyUpdate) -> str:
    return _figures(update.decision, update.stats)


def stored_stats_line(decision: dict | None) -> str:
    """The line for a reply as sessions.db keeps it (a decision row holds its reply's figures), for a chat
    opened or reloaded, and for a reply Stop ended (QA 9: the line kept only the route)."""
    if not decision:
        return ""
    row = SimpleNamespace(**decision)
    return _figures(row, row if decision.get("tokens") is not None else None)


def _figures(d, s) -> str:
    """d: the Decision (route, reason, routing_ms), s: the GenerationStats, each None when there is none."""
    route = f"**→ {d.route}** — {html.escape(_why(d))}  \n" if d else ""
    if not s:
        return route
    # the engine times the first token from its own start; the person waited for the routing too (on the
    # base route its prefill is routing's, and the engine's part alone read "0 ms"). The parts are named as
    # the decisions table's columns, and the whole is their sum as shown.
    routing, model = (d.routing_ms if d else 0), s.ttft_ms
    whole = round(routing) + round(model)
    first = "" if not s.tokens else (  # stopped before it: no first token to time (QA 19)
        f"first token {whole} ms (routing {_ms(routing)} + model {_ms(model)}) · " if d else f"first token {whole} ms · ")
    speed = f" · {s.tokens_per_s:.1f} tok/s" if s.tokens_per_s is not None else ""  # one token: nothing to time
    dropped = getattr(s, "dropped_turns", None) or 0  # said here too, so a reopened chat still says it (QA 17)
    left_out = f"; {dropped} earlier message{'s' * (dropped != 1)} left out" if dropped else ""
    return route + (f"{s.adapter or 'base'} · {s.tokens} token{'s' * (s.tokens != 1)}{speed} · {first}"
            f"prompt {s.prompt_tokens} tokens ({s.reused_tokens} reused{left_out}) · stop: {s.stop_reason}"
            + _drafted(s))


def _ms(value: float) -> str:
    return "<1" if round(value) == 0 else str(round(value))  # QA 23: "model 0" read as if the model never ran


_ROUTE_ARROW = re.compile(rf" → (?:{'|'.join(ROUTES)})\b")  # a route as the router's reason names it


def _why(d) -> str:
    """The router's reason without its "→ route": the line leads with the route already (QA 22 #6: "→ base —
    … → base"). An overridden reason names the router's choice just before its own; a modifier that is not
    installed says so, and the line's lead says where the reply went instead."""
    return _ROUTE_ARROW.sub("", d.reason)


def _drafted(s) -> str:
    if s.draft_proposed:
        return f" · draft {s.draft_accepted}/{s.draft_proposed} accepted ({s.draft_acceptance:.0%})"
    # on, yet nothing proposed: the adaptive drafter found plain decoding faster, or the draft unsure, at every step
    return " · draft on: none proposed" if s.drafting else ""
