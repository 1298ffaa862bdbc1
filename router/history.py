"""Turn real use into training data: what users overrode, disliked, liked and escalated.

    python -m router.history --export FILE [--db sessions.db]

Reads the decisions, messages and feedback in sessions.db and writes one JSON Lines file in the
router's training formats, each row marked with its "kind" so router.train (--extra FILE) and
router.evaluate (--domain FILE --escalation FILE) each read the rows of their kind:

- domain rows {"text", "label"} from overrides: the route the user picked by hand is the label
  (base → general), whatever the router chose, and even where its modifier was not loaded and
  the plain base ran; a message sent while a pick made for an earlier one held (in any chat) is left out;
- escalation rows {"previous_answer", "text", "label"}: the message that followed a 👎 answer
  (label 1) or a 👍 answer (label 0), and messages the router itself took for an escalation
  (label 1, source "router": the router's opinion, not the user's; feedback on the same pair wins).

Each row also carries "source", "session_id" and "message_id" (the user message), so it can be
traced back or filtered. The database is opened read-only."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from router.decision import route_asked

# sessions.db's schema is app/memory.py's; this reads it with plain SQL so the router needs no app import.
DOMAIN_OF_ROUTE = {"base": "general", "code": "code", "reasoning": "reasoning", "automation": "automation"}


def default_db() -> Path:
    return Path(os.environ.get("COGUMI_DATA_DIR") or Path(__file__).resolve().parents[1]) / "sessions.db"


# Each decision with the user message it routed and the answer before that message (if any).
ROUTED = """
select d.session_id, s.owner, d.route, d.reason, d.router_choice, d.overridden, {held} as override_held,
       d.escalation_p >= d.tau_e as escalated,
       u.id as message_id, u.content as text, a.content as previous_answer
from decisions d
join sessions s on s.id = d.session_id
join messages u on u.id = (select max(id) from messages
                           where session_id = d.session_id and role = 'user' and id < d.message_id)
left join messages a on a.id = (select max(id) from messages
                                where session_id = d.session_id and role = 'assistant' and id < u.id)
order by d.id"""


def export_rows(db: sqlite3.Connection) -> tuple[list[dict], int]:
    """The labelled rows, oldest first: overrides, then escalation pairs; and how many overrides were held.

    The page's Route choice holds for the following messages until it is changed, in a new chat or a past one
    opened too, so only an override unlike the decision before it (the one before it of the chat's owner, on a
    Space) is taken for the person's word on that message (QA 24, 25: every message after one pick became a
    label). Held ones are left out: a label lost costs less than a wrong one trained on. An API client that
    names the route at every call loses all but the first of a run the same way: sessions.db cannot tell."""
    db.row_factory = sqlite3.Row
    rows = []
    pairs: dict[int, dict] = {}  # user message id → escalation row; feedback overrides the router's guess
    previous: dict[str | None, str | None] = {}  # owner → the route picked by hand for their last message, if any
    held = 0
    stored = any(c[1] == "override_held" for c in db.execute("pragma table_info(decisions)"))
    for r in db.execute(ROUTED.format(held="d.override_held" if stored else "null")):
        asked = route_asked(r["route"], r["reason"])[0] if r["overridden"] else None  # not a base that stood in
        # stored as the message was routed since QA 26 (a deleted chat took the decision before with it); worked
        # out here from the decisions before it for older rows
        if asked and (r["override_held"] if r["override_held"] is not None else asked == previous.get(r["owner"])):
            held += 1
        elif asked:
            rows.append({"kind": "domain", "text": r["text"], "label": DOMAIN_OF_ROUTE[asked],
                         "source": "override", "router_choice": r["router_choice"], "session_id": r["session_id"],
                         "message_id": r["message_id"]})
        previous[r["owner"]] = asked
        if r["escalated"] and r["previous_answer"] is not None:
            pairs[r["message_id"]] = _escalation_row(r, 1, "router")
    rated = db.execute(
        "select f.session_id, f.liked, a.content as previous_answer, u.id as message_id, u.content as text "
        "from feedback f join messages a on a.id = f.message_id "
        "join messages u on u.id = (select min(id) from messages where session_id = f.session_id "
        "and role = 'user' and id > f.message_id) order by f.message_id")
    for r in rated:
        pairs[r["message_id"]] = _escalation_row(r, 0 if r["liked"] else 1, "like" if r["liked"] else "dislike")
    return rows + [pairs[k] for k in sorted(pairs)], held


def _escalation_row(r: sqlite3.Row, label: int, source: str) -> dict:
    return {"kind": "escalation", "previous_answer": r["previous_answer"], "text": r["text"], "label": label,
            "source": source, "session_id": r["session_id"], "message_id": r["message_id"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, metavar="FILE", help="JSON Lines file to write")
    parser.add_argument("--db", type=Path, default=None, help="sessions.db (default: $COGUMI_DATA_DIR/sessions.db)")
    args = parser.parse_args(argv)
    path = args.db or default_db()
    if not path.is_file():
        print(f"error: {path}: no such sessions database; pass --db or set COGUMI_DATA_DIR", file=sys.stderr)
        return 2
    if args.export.exists() and args.export.resolve() == path.resolve():  # the rows were written over every chat
        print(f"error: {args.export} is the sessions database itself; pass another file to --export", file=sys.stderr)
        return 2
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows, held = export_rows(db)
    except sqlite3.Error as exc:
        print(f"error: {path}: cannot read routing history ({exc})", file=sys.stderr)
        return 2
    try:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        with open(args.export, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    except OSError as exc:  # a directory, a path under a file, a read-only or full disk: a traceback before
        print(f"error: {args.export}: cannot write the export ({exc.strerror or exc}); pass a file path "
              f"to --export", file=sys.stderr)
        return 2
    counts = {}
    for row in rows:
        counts[f"{row['kind']}/{row['source']}"] = counts.get(f"{row['kind']}/{row['source']}", 0) + 1
    print(f"wrote {len(rows)} rows to {args.export}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                                           or "no overrides, feedback or escalations yet")
          + (f"; {held} message{'s' * (held != 1)} sent under a route picked for an earlier one left out" if held else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
