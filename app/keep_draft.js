() => {
  // The message box keeps its text across a reload of the tab (sessionStorage: this tab's, gone with it). A message
  // sent while a reply streams waits in the box for that reply's end (send_after_reply.js), and a reload lost it,
  // as it lost any message being written (QA 20). Every change of the box, typed or ours (a send taking its text
  // out, a text put back), comes as an input event, so what is kept is what the box holds.
  const KEY = "cogumi-draft";
  const box = () => document.querySelector("#message textarea");
  const keep = (text) => { try { sessionStorage.setItem(KEY, text); } catch (e) {} };  // storage blocked: not kept
  document.addEventListener("input", (e) => { if (e.target === box()) keep(e.target.value); }, true);
  let kept = null;
  try { kept = sessionStorage.getItem(KEY); } catch (e) {}
  const unsent = window.cogumiCarried?.() ?? [];  // sent from the last page, never begun (send_after_reply.js)
  if (!kept && !unsent.length) return;
  const restore = (tries) => {  // once the box is there
    const el = box();
    if (!el) return tries > 0 && setTimeout(() => restore(tries - 1), 50);
    const text = [...unsent, el.value || kept].filter(Boolean).join("\n");  // (typed already: that, not kept)
    if (text === el.value) return;
    el.value = text;
    el.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio's box reads its value from this event
  };
  restore(200);
}
