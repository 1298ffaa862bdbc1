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
  // Past chats: the arrows move the focus only, and Enter or Space opens the chat there. A radio group's arrows
  // check the next option, and checking one opens that chat: arrowing down the list opened every chat on the way.
  const chats = document.getElementById("sessions");
  chats?.addEventListener("keydown", (event) => {
    const options = [...chats.querySelectorAll("input[type=radio]")];
    const at = options.indexOf(event.target);
    if (at < 0 || event.altKey || event.ctrlKey || event.metaKey) return;
    const step = {ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1}[event.key];
    if (step) {
      event.preventDefault();
      options[Math.min(options.length - 1, Math.max(0, at + step))].focus();
    } else if (event.key === "Enter") {
      event.preventDefault();
      event.target.click();
    }
  });
}
