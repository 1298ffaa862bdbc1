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
  if (!kept) return;
  const restore = (tries) => {  // once the box is there (Gradio draws the page after this runs)
    const el = box();
    if (!el) return tries > 0 && setTimeout(() => restore(tries - 1), 50);
    if (el.value) return;  // typed already
    el.value = kept;
    el.dispatchEvent(new Event("input", {bubbles: true}));  // Gradio's box reads its value from this event
  };
  restore(200);
}
