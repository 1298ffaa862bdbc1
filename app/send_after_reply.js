() => {
  // The box empties as Gradio takes a send, and a send that was not sent puts its text back (cogumiTake, cogumiUnsent,
  // from ui.py). Emptied by the server's first answer instead, the box lost what was typed meanwhile (QA 15).
  //
  // A message sent while the reply before it is still going (streaming, or stopped a moment ago) is sent once that
  // reply has ended. Gradio ignores a send while the one before it is open (its trigger_mode "once"): Enter during
  // a reply did nothing and said nothing, and Stop then Enter at once left the text in the box, unsent, 4 times in
  // 5, the person believing it sent (QA 13). A send Gradio takes counts itself (window.cogumiSends, in
  // cogumiTake); one it did not take is pressed again, a moment apart, until it takes it, while the box holds that
  // text (edited, it waits for Enter again), and a line under the box says so. One loop, for the press last made:
  // two pressing together could both be taken, and send the message twice.
  const EVERY_MS = 250;
  let pending = null, checking = false, again = false, hint = null;  // pending: the press last made, {text, sends}
  const box = () => document.querySelector("#message textarea");
  const say = (text) => {  // in a line of ours, above the reply's figures
    const stats = document.querySelector("#stats");
    if (!hint?.isConnected && stats) {
      hint = document.createElement("div");
      hint.id = "send-hint";
      hint.setAttribute("role", "status");
      stats.before(hint);
    }
    if (hint) [hint.textContent, hint.hidden] = [text, !text];
  };
  const taken = {}, waiting = new Set();  // sends Gradio took: number → text; and those not begun on the server
  // Those not begun are kept in this tab's storage too, and the tab's next page puts them back in the box
  // (keep_draft.js): the app stopped as one was on its way, or was down, and the page reloads itself when the
  // app is back; the message had left the box, and was gone (QA 21).
  const UNCONFIRMED = "cogumi-unconfirmed";
  let carried = [];  // the last page's, until keep_draft.js takes them
  try { carried = JSON.parse(sessionStorage.getItem(UNCONFIRMED) ?? "[]"); } catch (e) {}
  const keepUnconfirmed = () => {
    const texts = [...carried, ...[...waiting].map((n) => taken[n]).filter((text) => text !== undefined)];
    try {
      if (texts.length) sessionStorage.setItem(UNCONFIRMED, JSON.stringify(texts));
      else sessionStorage.removeItem(UNCONFIRMED);
    } catch (e) {}  // storage blocked: not kept
  };
  window.cogumiCarried = () => {  // the texts the last page sent that never began, once
    const texts = carried;
    carried = [];
    keepUnconfirmed();
    return texts;
  };
  let held = null, saysWaiting = false;  // held: a send's text to go back in the box once the press held there goes
  const typed = (el, value) => {
    el.value = value;
    el.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio's box reads its value from this event
  };
  const putBack = (text) => {  // before anything typed since
    const el = box();
    if (el) typed(el, el.value.trim() ? `${text}\n${el.value}` : text);
  };
  const check = () => {
    if ((window.cogumiSends ?? 0) > pending.sends || box()?.value !== pending.text) {  // taken, or edited
      [pending, checking] = [null, false];
      say("");
      if (held !== null) putBack(held);  // the press it waited for has gone (or was edited): it comes back now
      held = null;
      return;
    }
    // Gradio takes no send while it has lost the app (its own toast says so); it reloads the page once the app
    // answers, and this text is kept in the box (keep_draft.js)
    const down = [...document.querySelectorAll('[data-testid="toast-body"]')].some(
      (toast) => toast.textContent.includes("Connection to the server was lost"));
    say(down ? "The app is not answering: this message stays in the box, to send once it is back (the page reloads " +
               "itself then)." : "Sends when this reply ends (Stop ends it now). Edit it and it waits for Enter again.");
    again = true;
    document.querySelector("#send")?.click();
    again = false;
    setTimeout(check, EVERY_MS);
  };
  const pressed = () => {
    const text = box()?.value;
    if (!text?.trim()) return;
    pending = {text, sends: window.cogumiSends ?? 0};
    if (!checking) {
      checking = true;
      setTimeout(check, EVERY_MS);
    }
  };
  window.cogumiTake = (message) => {  // a send Gradio takes: numbered, and out of the box
    const n = window.cogumiSends = (window.cogumiSends ?? 0) + 1;
    [taken[n], taken[n - 20]] = [message, undefined];
    waiting.add(n);
    keepUnconfirmed();
    const el = box();
    if (el?.value.startsWith(message)) typed(el, el.value.slice(message.length));  // keeps what was typed after it
    setTimeout(() => {  // out of the box and not yet in the chat (a Space's queue): said, and Stop takes it back
      if (!waiting.has(n) || pending) return;
      const shown = message.length > 80 ? `${message.slice(0, 80)}…` : message;
      say(`Waiting to be sent: “${shown}”. Stop takes it back into the box.`);
      saysWaiting = true;
    }, 500);
    return n;
  };
  const takenBack = new Map();  // sends Stop put back before the server said whether it had begun them: n → text
  window.cogumiBegan = (n) => {  // its reply has begun: the message is in the chat
    waiting.delete(n);
    keepUnconfirmed();
    if (saysWaiting && !waiting.size) {
      say("");
      saysWaiting = false;
    }
    const text = takenBack.get(n);
    if (text === undefined) return;
    // Stop put it back, but the server had begun it: it is in the chat (its reply stopped), so out of the box
    // again, else Enter sent it twice (QA 19)
    takenBack.delete(n);
    const el = box();
    if (el?.value.startsWith(text)) typed(el, el.value.slice(text.length).replace(/^\n/, ""));
  };
  window.cogumiUnsent = (n) => {  // that send was not sent: its text goes back in the box
    takenBack.delete(n);  // (if Stop put it back already, it stays)
    window.cogumiBegan(n);
    const text = taken[n];
    if (text === undefined) return;
    taken[n] = undefined;
    // A press the box holds (sent while this one was open) goes first: put back now, this text became part of it
    // and neither went (QA 16).
    if (pending && box()?.value === pending.text) held = held === null ? text : `${held}\n${text}`;
    else putBack(text);
  };
  // Stop takes back at once a send that has not begun (QA 16: it came back only when its turn came, a whole
  // reply later); the server, told by the same Stop (ui.py's stop_reply), does not send it.
  document.addEventListener("click", (e) => {
    if (!e.target.closest?.("#stop")) return;
    for (const n of [...waiting]) {
      const text = taken[n];
      window.cogumiUnsent(n);
      if (text !== undefined) takenBack.set(n, text);  // until the server says began (undone) or unsent (kept)
    }
  }, true);
  document.addEventListener("click", (e) => { if (!again && e.target.closest?.("#send")) pressed(); }, true);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.target === box()) pressed();
  }, true);
}
