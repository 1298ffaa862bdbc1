() => {
  // The chat follows a streaming reply while the person is at its bottom, and stays where they scrolled to
  // otherwise; a message sent, or another chat opened, shows its end. Gradio's autoscroll scrolled 300 ms
  // after each update that found the chat at the bottom, whether the person had scrolled away since or not:
  // at 25 updates a second they could not read back while a reply streamed (QA 13). So the Chatbot has
  // autoscroll off (ui.py), and this follows the bottom.
  let box = null, following = true, shown = "", put = 0;
  const atBottom = () => box.scrollHeight - box.scrollTop - box.clientHeight < 2;  // a fraction of a pixel off
  new MutationObserver(() => {
    const now = document.querySelector("#chat .bubble-wrap");
    if (!now) return;
    if (now !== box) {
      box = now;
      box.addEventListener("scroll", () => { following = atBottom(); }, {passive: true});
    }
    const rows = box.querySelectorAll(".message-row.user-row");  // the chat, and its messages sent so far
    const chat = `${rows.length}:${rows[0]?.innerText ?? ""}`;
    if (chat !== shown) {
      [shown, following] = [chat, true];
    } else if (following && box.scrollTop < put - 1 && !atBottom()) {
      following = false;  // scrolled up since it was put at the bottom: the scroll event comes after this
    }
    if (following) {
      box.scrollTop = box.scrollHeight;
      put = box.scrollTop;
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
  // A chat opened from Past chats where the columns stack (a phone), the list under the chat: the chat opened
  // above, out of sight, and only the list's dot moved (QA 22). Where they stand side by side, nothing moves.
  window.cogumiShowChat = () => {
    const chat = document.querySelector("#chat"), list = document.querySelector("#sessions");
    const {top, bottom} = chat.getBoundingClientRect();
    if (list.getBoundingClientRect().top >= bottom && top < 0) chat.scrollIntoView({block: "start"});
  };
}
