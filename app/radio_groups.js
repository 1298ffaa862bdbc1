() => {
  // Gradio names each radio button apart (radio-1, radio-2, …), so the browser took every option for a group of
  // its own: each was a Tab stop, and the arrow keys did nothing (QA 14, 15). One name per Radio makes it one
  // group, one Tab stop whose options the arrows move through, and its label names it for screen readers.
  // Gradio names an option again whenever it draws it: each block is watched.
  const GROUPS = {route: "Route", sessions: "Past chats"};
  for (const [id, label] of Object.entries(GROUPS)) {
    const block = document.getElementById(id);
    if (!block) continue;
    const group = () => {
      for (const input of block.querySelectorAll("input[type=radio]")) if (input.name !== id) input.name = id;
    };
    block.setAttribute("aria-label", label);
    new MutationObserver(group).observe(block, {subtree: true, childList: true, attributes: true,
                                                attributeFilter: ["name"]});
    group();
  }
  // Past chats: the arrows (Home, End) move the focus only, and Enter or Space opens the chat there. A radio group's
  // arrows check the next option, and checking one opens that chat: arrowing down the list opened every chat on the
  // way.
  const chats = document.getElementById("sessions");
  if (!chats) return;
  const options = () => [...chats.querySelectorAll("input[type=radio]")];
  chats.addEventListener("keydown", (event) => {
    const all = options(), at = all.indexOf(event.target);
    if (at < 0 || event.altKey || event.ctrlKey || event.metaKey) return;
    const to = {ArrowDown: at + 1, ArrowRight: at + 1, ArrowUp: at - 1, ArrowLeft: at - 1, Home: 0,
                End: all.length - 1};
    if (event.key in to) {
      event.preventDefault();
      all[Math.min(all.length - 1, Math.max(0, to[event.key]))].focus();
    } else if (event.key === "Enter") {
      event.preventDefault();
      event.target.click();
    }
  });
  // The focus stays on its chat as the list is drawn again: Gradio draws the options anew in place, so the focus
  // stayed at its place in the list, on another chat where the list changed (QA 29 #3: with a search typed, the
  // chat left drops out of it as the chat opened comes first), or fell to the page where the list grew shorter.
  let focused = null;  // the value of the chat whose option has the focus
  chats.addEventListener("focusin", (event) => { if (options().includes(event.target)) focused = event.target.value; });
  chats.addEventListener("focusout", (event) => { if (event.relatedTarget) focused = null; });  // moved on by hand
  document.addEventListener("pointerdown", (event) => { if (!chats.contains(event.target)) focused = null; }, true);
  new MutationObserver(() => {
    const active = document.activeElement;
    if (focused === null || active?.value === focused || (active !== document.body && !chats.contains(active))) return;
    options().find((option) => option.value === focused)?.focus();
  }).observe(chats, {subtree: true, childList: true, characterData: true, attributes: true});
}
