() => {
  // The chat's Copy buttons copy a message as the page was given it (app/display.py as_markdown): "<", ">"
  // and "&" as entities, "![" as "&#33;[", in a person's message markdown's syntax characters as character
  // references ("_" as "&#95;": display.py _typed; a paragraph line's indent: _kept_indents), code as <pre><code>
  // and <code> elements of ours. Put the text back as it was typed, in one pass (so that a "&lt;" typed inside
  // code stays "&lt;"). Only for those buttons: a code block's own copy button copies its shown text, which is
  // right already.
  const COPIES = '#chat button[aria-label="Copy message"], #chat button[aria-label="Copy conversation"]';
  const ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&#33;": "!"};
  for (const c of "\t #$*-=[\\]_`|~") ENTITIES[`&#${c.charCodeAt(0)};`] = c;  // a tab, a space: an indent
  ENTITIES["<!-- -->"] = "";  // where a bare URL's link ends (display.py LINK_END)
  // A code block's indent is the spaces that begin its line: Copy conversation puts "user: " before a message, whose
  // space was taken for the indent of a code block that begins the message (QA 30 #5)
  const OURS = /((?<=^|\n) *|)<pre>\n *<button[^>]*>[\s\S]*?<\/button><code data-typed(?: class="[^"]*")?(?: data-open="([^"]*)" data-close="([^"]*)")?(?: data-first="([^"]*)")?>([\s\S]*?)<\/code><\/pre>|((?<=^|\n) {0,3}|)<pre>(?:<button[^>]*>[\s\S]*?<\/button>)?<code(?: class="language-([^"]*)")?>([\s\S]*?)(?: {0,3})<\/code><\/pre>(\n?)|<code>([\s\S]*?)<\/code>|<em class="reply-failed">\(failed(: [^<]*)?\)<\/em>|<em class="unrated">\(([^<]*)\)<\/em>|&(?:lt|gt|amp|#(?:9|32|33|35|36|42|45|61|91|92|93|95|96|124|126));|<!-- -->/g;
  const unescape = text => text.replace(/&(?:lt|gt|amp|#33|#36);/g, e => ENTITIES[e]);  // in code: ours
  const ATTRIBUTE = {...ENTITIES, "&quot;": '"', "&#x27;": "'", "&#10;": "\n", "&#13;": "\r"};
  const unattribute = text => text.replace(/&(?:lt|gt|amp|quot|#x27|#10|#13);/g, e => ATTRIBUTE[e]);
  const runs = code => new Set((code.match(/`+/g) || []).map(r => r.length));
  const blockFence = code => "`".repeat(Math.max(3, ...[...runs(code)].map(n => n + 1)));
  const spanFence = code => { let n = 1; const inside = runs(code); while (inside.has(n)) n++; return "`".repeat(n); };
  const fromOurs = text => text.replace(OURS, (entity, item, open, close, first, typed, indent, language, block, end,
                                               span, why, mark) => {
    if (typed !== undefined) {  // its lines as typed, but the list item's indent on the first (display.py _code_html),
      const body = item && typed.endsWith("\n" + item) ? typed.slice(0, -item.length) : typed;  // (that indent
      const code = body && (first === undefined ? item + unescape(body)  // again before </code>, on a line of its
        : unattribute(first) + unescape(body).replace(/^ */, ""));  // own), a first line's indent, a fence's lines
      return open === undefined ? code : unattribute(open) + code + unattribute(close);
    }
    if (block !== undefined) {  // at its indent (in a list item), which as_markdown took off its first line;
      const code = unescape(block), f = blockFence(code);  // `end`: the closing fence's line end, if it had one
      return `${indent}${f}${language || ""}\n${indent}${code}${code && !code.endsWith("\n") ? "\n" : ""}${indent}${f}${end}`;
    }
    if (span !== undefined) {
      const code = unescape(span), f = spanFence(code);  // the shortest run that can close it, as one writes
      return f + code + f;
    }
    if (mark !== undefined) return `*(${mark})*`;  // a reply with no text: its mark, in HTML for its class
    // a failed reply's mark, in HTML for its class, its reason's markdown escaped (display.py)
    return ENTITIES[entity] ?? `*(failed${unescape(why ?? "").replace(/\\([\\`*_[\]~|])/g, "$1")})*`;
  });
  // display.py in_typed_order closed each opening bidi control at once, where it is shown: not in what is copied
  const CLOSED_AT_ONCE = /([\u202a\u202b\u202d\u202e])\u202c|([\u2066-\u2068])\u2069/g;
  const inTypedOrder = text => text.replace(CLOSED_AT_ONCE, "$1$2");  // a code block's own button copies its text
  const asTyped = text => inTypedOrder(fromOurs(text));
  let typed = null;  // what the click that leads to this copy makes of the text: a button of COPIES, a code block's
  document.addEventListener("click", e => {
    typed = e.target.closest(COPIES) ? asTyped : e.target.closest("#chat .copy_code_button") ? inTypedOrder : null;
  }, true);
  if (navigator.clipboard) {
    const write = navigator.clipboard.writeText.bind(navigator.clipboard);
    navigator.clipboard.writeText = text => write(typed ? typed(text) : text);
  }
  // Where the page is not a secure context (plain http but localhost), Gradio copies with execCommand.
  document.addEventListener("copy", e => {
    const box = document.activeElement;
    if (!typed || !box || box.tagName !== "TEXTAREA" || box.closest("#chat, #message")) return;
    e.clipboardData.setData("text/plain", typed(box.value));
    e.preventDefault();
  }, true);
  // Gradio labels each message by its text as the page was given it (aria-label "user's message: &#95;&#95;init…",
  // "&lt;b&gt;", code as our HTML), and a screen reader reads that out: label it as typed. Svelte sets the label
  // again as the message changes (a streaming reply); the label made here is kept to know it from those.
  const LABEL = /^(?:user|bot)'s message: /;
  const relabel = el => {
    const label = el.getAttribute("aria-label") ?? "", head = LABEL.exec(label);
    if (!head || label === el.dataset.typedLabel) return;
    el.dataset.typedLabel = head[0] + asTyped(label.slice(head[0].length));
    el.setAttribute("aria-label", el.dataset.typedLabel);
  };
  new MutationObserver(records => {
    for (const record of records) {
      if (record.type === "attributes") relabel(record.target);
      for (const node of record.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE) continue;
        if (node.hasAttribute("aria-label")) relabel(node);
        node.querySelectorAll("[aria-label]").forEach(relabel);
      }
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ["aria-label"]});
  window.cogumiAsTyped = asTyped;
}
