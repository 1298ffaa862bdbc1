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
  const check = () => {
    if ((window.cogumiSends ?? 0) > pending.sends || box()?.value !== pending.text) {  // taken, or edited
      [pending, checking] = [null, false];
      say("");
      return;
    }
    say("Sends when this reply ends (Stop ends it now). Edit it and it waits for Enter again.");
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
  const taken = {};  // a send's number → its text, for cogumiUnsent
  const typed = (el, value) => {
    el.value = value;
    el.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio's box reads its value from this event
  };
  window.cogumiTake = (message) => {  // a send Gradio takes: numbered, and out of the box
    const n = window.cogumiSends = (window.cogumiSends ?? 0) + 1;
    [taken[n], taken[n - 20]] = [message, undefined];
    const el = box();
    if (el?.value.startsWith(message)) typed(el, el.value.slice(message.length));  // keeps what was typed after it
    return n;
  };
  window.cogumiUnsent = (n) => {  // that send was not sent: its text goes back, before anything typed since
    const [text, el] = [taken[n], box()];
    if (text === undefined || !el) return;
    taken[n] = undefined;
    typed(el, el.value.trim() ? `${text}\n${el.value}` : text);
  };
  document.addEventListener("click", (e) => { if (!again && e.target.closest?.("#send")) pressed(); }, true);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.target === box()) pressed();
  }, true);
}
