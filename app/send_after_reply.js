() => {
  // A message sent while the reply before it is still going (streaming, or stopped a moment ago) is sent once that
  // reply has ended. Gradio ignores a send while the one before it is open (its trigger_mode "once"): Enter during
  // a reply did nothing and said nothing, and Stop then Enter at once left the text in the box, unsent, 4 times in
  // 5, the person believing it sent (QA 13). A send Gradio takes counts itself (window.cogumiSends, ui.py's
  // sent_as); one it did not take is pressed again, a moment apart, until it takes it, while the box holds that
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
  document.addEventListener("click", (e) => { if (!again && e.target.closest?.("#send")) pressed(); }, true);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.target === box()) pressed();
  }, true);
}
