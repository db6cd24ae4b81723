// A small Markdown renderer for the assistant's answers: fenced code blocks, inline code,
// headings, lists, quotes, rules, emphasis and http(s) links. Everything is HTML-escaped first,
// so what a model writes can never become markup or script. An unclosed fence (an answer still
// streaming) renders as a code block so far.
"use strict";

(function () {
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  function emphasis(escaped) {
    return escaped
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>")
      .replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?!\*)/g, "$1<em>$2</em>")
      .replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
      .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g,
        '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
  }

  // Inline code first: nothing inside backticks is formatted.
  function inline(text) {
    return text
      .split(/(`[^`\n]+`)/)
      .map((part, i) =>
        i % 2 === 1 ? "<code>" + escapeHtml(part.slice(1, -1)) + "</code>" : emphasis(escapeHtml(part))
      )
      .join("");
  }

  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

  function render(markdown) {
    const lines = String(markdown).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(FENCE);
      if (fence) {
        const body = [];
        i += 1;
        while (i < lines.length && !(lines[i].trim().startsWith(fence[1]) && lines[i].trim().replace(/[`~]/g, "") === "")) {
          body.push(lines[i]);
          i += 1;
        }
        i += 1; // the closing fence
        const lang = fence[2] ? ' class="language-' + escapeHtml(fence[2]) + '"' : "";
        out.push("<pre><code" + lang + ">" + escapeHtml(body.join("\n")) + "</code></pre>");
        continue;
      }
      if (!line.trim()) {
        i += 1;
        continue;
      }
      const heading = line.match(HEADING);
      if (heading) {
        const level = heading[1].length;
        out.push("<h" + level + ">" + inline(heading[2]) + "</h" + level + ">");
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        out.push("<hr>");
        i += 1;
        continue;
      }
      const list = BULLET.test(line) ? [BULLET, "ul"] : NUMBERED.test(line) ? [NUMBERED, "ol"] : null;
      if (list) {
        const items = [];
        while (i < lines.length && list[0].test(lines[i])) {
          items.push("<li>" + inline(lines[i].match(list[0])[1]) + "</li>");
          i += 1;
        }
        out.push("<" + list[1] + ">" + items.join("") + "</" + list[1] + ">");
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) {
          quoted.push(inline(lines[i].match(QUOTE)[1]));
          i += 1;
        }
        out.push("<blockquote>" + quoted.join("<br>") + "</blockquote>");
        continue;
      }
      const paragraph = [];
      while (
        i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) &&
        !BULLET.test(lines[i]) && !NUMBERED.test(lines[i]) && !QUOTE.test(lines[i]) && !RULE.test(lines[i])
      ) {
        paragraph.push(inline(lines[i]));
        i += 1;
      }
      out.push("<p>" + paragraph.join("<br>") + "</p>");
    }
    return out.join("\n");
  }

  window.ParleyMarkdown = { render, escapeHtml };
})();
