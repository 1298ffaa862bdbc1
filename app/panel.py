"""The router panel's drawings, from the decision rows that sessions.db holds (ChatService.panel).

Four views of the same rows: the path of the latest message through the policy (HTML), the
session's perplexity timeline (an Altair chart for gr.Plot), the route distribution (a frame for
gr.BarPlot) and the recent decisions (a frame for gr.Dataframe). Nothing here computes a route:
every number drawn is one the router stored. Every text a user typed is escaped before it is put
into HTML."""

from __future__ import annotations

import html

import altair as alt
import pandas as pd

from app.display import in_typed_order
from router.decision import route_asked

ROUTE_COLOURS = {"base": "#6b7280", "code": "#2563eb", "reasoning": "#9333ea", "automation": "#ea580c"}
DOMAIN_ORDER = ("code", "reasoning", "automation", "general")
EXCERPT_CHARS = 160  # the message shown at the head of the path
TABLE_ROWS = 12      # recent decisions listed, newest first

# Colours from the page's theme (Gradio's variables), so that the path reads in the light and the dark theme alike
# (QA 15: dark grey on near black, and near-white empty tracks).
_CSS = """<style>
.route-path{font:13px/1.35 system-ui,sans-serif;display:flex;flex-direction:column;gap:2px;color:var(--body-text-color)}
.route-path .step{border:1px solid var(--border-color-primary);border-radius:8px;padding:6px 9px;
  background:var(--block-background-fill)}
.route-path .step.fired{border:2px solid var(--body-text-color)}
.route-path .arrow{text-align:center;color:var(--body-text-color-subdued);line-height:1}
.route-path .label{font-weight:600;margin-right:6px}
.route-path .msg{white-space:pre-wrap;word-break:break-word}
.route-path .bar{display:flex;align-items:center;gap:6px;margin:2px 0}
.route-path .bar .name{width:78px}
.route-path .bar .track{flex:1;height:8px;background:var(--border-color-primary);border-radius:4px;position:relative}
.route-path .bar .fill{height:8px;border-radius:4px}
.route-path .bar .tau{position:absolute;top:-2px;width:2px;height:12px;background:var(--body-text-color)}
.route-path .route{color:#fff;font-weight:600}
.route-path .reason{font-size:12px;color:#4b5563}
.dark .route-path .reason{color:#d4d4d8}
</style>"""


def path_html(decision: dict | None, message: str | None = None) -> str:
    """The latest message's path: message → escalation gate → perplexity gate → domain → route.
    The rule that decided is outlined; the chosen route is filled with its colour."""
    if not decision:
        return _CSS + '<div class="route-path" id="route-path"><div class="step">No message in this chat has ' \
                      "been routed yet: the next one's path through the router appears here.</div></div>"
    d, rule = decision, decision["rule"]
    measured = d["perplexity"] is not None  # None: it could not change the route, so it was not scored
    esc_hit, ppl_hit = d["escalation_p"] >= d["tau_e"], measured and d["perplexity"] <= d["tau_p"]
    steps = []
    if message is not None:
        excerpt = message if len(message) <= EXCERPT_CHARS else message[:EXCERPT_CHARS] + "…"
        steps.append(_step("message", f'<div class="msg">{html.escape(in_typed_order(excerpt))}</div>'))
    steps.append(_step("escalation gate", f"P(unhappy) {unhappy(d)} — {'escalate, never base' if esc_hit else 'pass'}",
                       fired=rule == "escalation" or (d["overridden"] and esc_hit)))
    calibrated = "" if d.get("tau_p_calibrated") else " (fallback, not calibrated)"
    if measured:
        gate = (f"{d['perplexity']:.1f} {'≤' if ppl_hit else '>'} τp {d['tau_p']:.1f}{calibrated} — "
                f"{'familiar: base' if ppl_hit else 'pass'}")
    else:
        gate = f"not measured: the route is the same whatever it is (τp {d['tau_p']:.1f}{calibrated})"
    steps.append(_step("perplexity gate", gate, fired=rule == "perplexity" and not esc_hit))
    bars = "".join(_bar(name, d["domain_probs"].get(name, 0.0), d["tau_d"]) for name in DOMAIN_ORDER)
    steps.append(_step("domain classifier", bars, fired=rule in ("domain", "fallback")))
    colour = ROUTE_COLOURS.get(d["route"], "#111827")
    asked, fell_back = route_asked(d["route"], d["reason"])
    instead = " → base: not available" if fell_back else ""
    if d["overridden"] and d["router_choice"] == asked:
        chosen = f"you chose {html.escape(asked)} · the router agreed{instead}"
    elif d["overridden"]:
        chosen = f"router chose {html.escape(d['router_choice'])} · you chose {html.escape(asked)}{instead}"
    else:
        chosen = f"route: {html.escape(asked)}{instead}"
    steps.append(f'<div class="step route" id="route-chosen" style="background:{colour}">{chosen}</div>')
    steps.append(f'<div class="reason">{html.escape(d["reason"])}</div>')
    arrow = '<div class="arrow">↓</div>'
    return _CSS + '<div class="route-path" id="route-path">' + arrow.join(steps) + "</div>"


def _step(label: str, body: str, fired: bool = False) -> str:
    return f'<div class="step{" fired" if fired else ""}"><span class="label">{label}</span>{body}</div>'


def _bar(name: str, p: float, tau_d: float) -> str:
    colour = ROUTE_COLOURS.get(name, "#9ca3af")
    return (f'<div class="bar"><span class="name">{name}</span><span class="track">'
            f'<span class="fill" style="display:block;width:{p * 100:.0f}%;background:{colour}"></span>'
            f'<span class="tau" style="left:{tau_d * 100:.0f}%" title="τd {tau_d:.2f}"></span></span>'
            f'<span>{p:.2f}</span></div>')


def unhappy(d: dict) -> str:
    """The escalation P against τe, as the path and the timeline's tooltip say it."""
    return f"{d['escalation_p']:.2f} {'≥' if d['escalation_p'] >= d['tau_e'] else '<'} τe {d['tau_e']:.2f}"


def timeline_chart(decisions: list[dict]) -> alt.Chart | None:
    """Perplexity per turn against τp; points coloured by route, escalations ringed in red. A turn
    whose perplexity was not measured (it could not change the route) has no point; the line skips it."""
    if not decisions:
        return None
    # each τp segment reaches back to the turn before it that has one: a failed turn has no decision, and the
    # dashed line had a gap there (QA 17)
    before = [0] + [d["turn"] for d in decisions[:-1]]
    frame = pd.DataFrame([{
        "turn": d["turn"], "perplexity": None if d["perplexity"] is None else round(d["perplexity"], 2),
        "τp": round(d["tau_p"], 2), "route": d["route"], "escalation": d["escalation_p"] >= d["tau_e"],
        "P(unhappy)": unhappy(d),  # the tooltip's: "escalation true" was a raw boolean (QA 22)
        "reason": d["reason"], "from": previous + 0.5, "to": d["turn"] + 0.5,
    } for d, previous in zip(decisions, before)])
    turns = int(frame["turn"].max())  # as the chat numbers them: a failed turn has no point
    # every turn labelled up to 20; past that, Vega-Lite's own ticks (Altair takes Undefined, not None)
    ticks = list(range(1, turns + 1)) if turns <= 20 else alt.Undefined
    scale, axis = alt.Scale(domain=[0.5, turns + 0.5], nice=False), alt.Axis(values=ticks, format="d")
    x = alt.X("turn:Q", title="turn", scale=scale, axis=axis)
    colours = alt.Scale(domain=list(ROUTE_COLOURS), range=list(ROUTE_COLOURS.values()))
    # Only layers with something to draw: an empty one makes Vega warn "Infinite extent" in the console.
    # τp as a dashed segment across each turn's width: a line through the turns drew nothing for one turn
    layers = [alt.Chart(frame).mark_rule(strokeDash=[6, 4], color="#6b7280").encode(  # 3:1 on white and on dark
        x=alt.X("from:Q", scale=scale, axis=axis, title="turn"), x2="to:Q", y=alt.Y("τp:Q", title="perplexity"))]
    measured = frame[frame["perplexity"].notna()]
    if len(measured):
        layers += [
            alt.Chart(frame).mark_line(color="#d1d5db").encode(x=x, y=alt.Y("perplexity:Q", title="perplexity")),
            alt.Chart(frame).mark_circle(size=90, opacity=1).encode(
                x=x, y="perplexity:Q", color=alt.Color("route:N", scale=colours, title="route"),
                tooltip=["turn", "route", "perplexity", "τp", "P(unhappy)", "reason"]),
        ]
    if measured["escalation"].any():
        layers.append(alt.Chart(measured[measured["escalation"]]).mark_point(
            size=300, color="#dc2626", strokeWidth=2).encode(x=x, y="perplexity:Q"))
    # The caption is the chart's own title: as gr.Plot's label it covered the chart's top.
    # with no point, the chart is the dashed τp alone: the subtitle says why (QA 18)
    why = "red ring: escalation" if len(measured) else "no turn measured: it could not change their routes"
    title = alt.Title("Perplexity per turn", subtitle=f"dashed: τp · {why}", anchor="start")
    # Drawn as SVG on no background, so that page.css gives its text the theme's colour: Gradio themes only its own
    # plots, and this one was a white box with black text in the dark theme (QA 15). No actions menu: its button had
    # no name, and one of its actions sends the chart's data, the chat's reasons, to the online Vega editor.
    described = "Perplexity per turn against τp (dashed); points coloured by route, escalations ringed in red"
    return (alt.layer(*layers).properties(height=190, width="container", title=title, description=described,  # page.css
                                          usermeta={"embedOptions": {"renderer": "svg", "actions": False}})
            .configure(background="transparent")
            .configure_legend(orient="bottom", title=None).configure_view(strokeWidth=0))


def distribution_frame(session_counts: dict[str, int], all_counts: dict[str, int]) -> pd.DataFrame:
    """Share of replies per route, for this session and for all sessions (stacked bars)."""
    rows = []
    for scope, counts in (("this chat", session_counts), ("all chats", all_counts)):
        total = sum(counts.values())
        rows += [{"scope": scope, "route": route, "share %": round(100 * counts.get(route, 0) / total, 1),
                  "replies": counts.get(route, 0)} for route in ROUTE_COLOURS if total]
    return pd.DataFrame(rows, columns=["scope", "route", "share %", "replies"])


TABLE_COLUMNS = ["turn", "route", "reason", "routing ms", "model ms to first token", "tok/s", "draft accepted",
                 "feedback"]


def decisions_frame(decisions: list[dict]) -> pd.DataFrame:
    """The recent decisions, newest first, with the reply's speed figures and the user's 👍/👎."""
    rows = []
    for d in reversed(decisions):
        route = route_label(d)
        liked = d.get("liked")
        rows.append([
            d["turn"], route, d["reason"], _num(d["routing_ms"], 1),
            _num(d.get("ttft_ms") if d.get("tokens") != 0 else None, 1),  # 0 tokens: no first token to time
            _num(d.get("tokens_per_s"), 1),
            f"{d['draft_accepted']}/{d['draft_proposed']}" if d.get("draft_proposed") or d.get("drafting") else "—",
            "" if liked is None else ("👍 up" if liked else "👎 down"),
        ])
        if len(rows) == TABLE_ROWS:
            break
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def route_label(d: dict) -> str:
    """The route a reply ran on, and whose choice it was, for the table."""
    asked, fell_back = route_asked(d["route"], d["reason"])
    if fell_back and d["overridden"]:
        if d["router_choice"] == asked:
            return f"base (you and the router chose {asked}: not available)"
        return f"base (you chose {asked}: not available; router: {d['router_choice']})"
    if fell_back:
        return f"base ({asked}: not available)"
    if d["overridden"] and d["router_choice"] == d["route"]:
        return f"{d['route']} (you chose it; the router agreed)"
    return f"{d['route']} (router: {d['router_choice']})" if d["overridden"] else d["route"]


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
