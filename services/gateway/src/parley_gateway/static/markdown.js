// Answers as Markdown: markdown-it (tables, fenced code; raw HTML is shown as text, never
// parsed), code highlighted by highlight.js, `$…$` and `$$…$$` found by markdown-it-texmath, and
// everything sanitized by DOMPurify before it reaches the page. Math is typeset afterwards by
// KaTeX straight into the DOM (its inline sizes are set through the DOM, which the page's strict
// Content-Security-Policy allows, where style attributes in HTML would be refused). Code blocks
// get a copy button. The libraries come from static/vendor/ (scripts/build-web.sh); without them
// answers are plain text.
"use strict";

(function () {
  const { markdownit, texmath, DOMPurify, hljs, katex } = window;
  const built = Boolean(markdownit && texmath && DOMPurify && hljs && katex);

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
  }

  let md = null;
  if (built) {
    md = markdownit({
      html: false,
      linkify: true,
      highlight(code, lang) {
        if (lang && hljs.getLanguage(lang)) {
          return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
        }
        return ""; // markdown-it escapes it
      },
    });
    // texmath hands the TeX to this "engine": a placeholder that KaTeX fills after sanitizing.
    const placeholder = {
      renderToString(tex, options) {
        const display = options && options.displayMode ? "1" : "0";
        return '<span class="math" data-display="' + display + '" data-tex="' + escapeHtml(tex) + '"></span>';
      },
    };
    md.use(texmath, { engine: placeholder, delimiters: "dollars" });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
  }

  // Sanitized HTML of a Markdown text.
  function render(text) {
    if (!built) return '<p class="plain">' + escapeHtml(text) + "</p>";
    return DOMPurify.sanitize(md.render(text), { ADD_ATTR: ["target"] });
  }

  function copyButton(pre) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.title = "Copy the code";
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(pre.querySelector("code").textContent.replace(/\n$/, ""));
        button.textContent = "Copied";
      } catch (_) {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy"), 2000);
    });
    return button;
  }

  // Put the rendered HTML into `element`, typeset its math and give its code a copy button.
  function show(element, text) {
    element.innerHTML = render(text);
    if (!built) return;
    for (const span of element.querySelectorAll("span.math")) {
      katex.render(span.dataset.tex, span, {
        displayMode: span.dataset.display === "1",
        throwOnError: false,
        trust: false,
      });
    }
    for (const pre of element.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      if (!code) continue;
      code.classList.add("hljs");
      const block = document.createElement("div");
      block.className = "code-block";
      pre.replaceWith(block);
      block.append(copyButton(pre), pre);
    }
  }

  window.ParleyMarkdown = { built, render, show };
})();
