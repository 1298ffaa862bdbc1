() => {
  // A message sent in the moment after Stop is sent, not left in the box. Gradio ignores a send while the one
  // before it is still open (its trigger_mode "once"), and a stopped reply's stays open until Stop's cancel
  // has come back: Stop, then Enter at once, and the text stayed in the box, unsent, 4 times in 5 (QA 13).
  // A send Gradio takes counts itself (window.cogumiSends, in ui.py's sent_as). One pressed soon after Stop
  // that Gradio did not take is pressed again, a moment apart, until it takes it, while the box still holds
  // that text. One at a time: two presses taken together would send the message twice.
  const STOP_MS = 5000, EVERY_MS = 250;
  let stoppedAt = -Infinity, sendsAtStop = 0, retrying = false, again = false;
  const box = () => document.querySelector("#message textarea");
  const pressed = () => {
    const text = box()?.value, sends = window.cogumiSends ?? 0;
    // Only while the send Gradio holds open is the stopped one: none taken since Stop (one taken since is
    // a reply streaming, and Enter then does nothing, as at any other time)
    if (retrying || performance.now() - stoppedAt > STOP_MS || sends !== sendsAtStop || !text?.trim()) return;
    retrying = true;
    let tries = STOP_MS / EVERY_MS;
    const check = () => {
      if ((window.cogumiSends ?? 0) > sends || box()?.value !== text || tries-- === 0) {  // taken, edited, given up
        retrying = false;
        return;
      }
      again = true;
      document.querySelector("#send")?.click();
      again = false;
      setTimeout(check, EVERY_MS);
    };
    setTimeout(check, EVERY_MS);
  };
  document.addEventListener("click", (e) => {
    if (e.target.closest?.("#stop")) [stoppedAt, sendsAtStop] = [performance.now(), window.cogumiSends ?? 0];
    else if (!again && e.target.closest?.("#send")) pressed();
  }, true);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.target === box()) pressed();
  }, true);
}
