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
}
