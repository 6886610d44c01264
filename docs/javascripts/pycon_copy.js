// Copy buttons on Python console blocks (```pycon, and the >>> examples of the
// API reference) copy the code only: the ">>> " and "... " prompts are removed
// and the output lines are left out, so the copied text runs as a script.
// mkdocs-material's copy button copies the `data-copy` attribute of the code
// element when it has one (else the element's text); this sets it.
(function () {
  "use strict";

  // The code of a console session: the prompted lines without their prompts,
  // as doctest reads them: a ">>> " line starts a statement, the "... " lines
  // right after it continue it, and every other line is output (a "..." in an
  // expected traceback included). Text without a ">>>" line is returned as is.
  function pyconSource(text) {
    var lines = text.replace(/\r\n?/g, "\n").split("\n");
    var code = [];
    var prompted = false;
    var inStatement = false;
    for (var i = 0; i < lines.length; i++) {
      var first = /^>>>(?: (.*))?$/.exec(lines[i]);
      var more = inStatement ? /^\.\.\.(?: (.*))?$/.exec(lines[i]) : null;
      var match = first || more;
      if (match) {
        prompted = true;
        code.push(match[1] === undefined ? "" : match[1]);
      }
      inStatement = Boolean(match);
    }
    return prompted ? code.join("\n").replace(/\s+$/, "") : text;
  }

  function isConsole(code) {
    var block = code.closest(".highlight");
    if (block && block.classList.contains("language-pycon")) return true;
    return /^\s*>>>( |$)/.test(code.textContent);   // e.g. ```python with prompts
  }

  function mark(root) {
    var codes = root.querySelectorAll(".highlight pre > code");
    for (var i = 0; i < codes.length; i++) {
      if (isConsole(codes[i])) {
        codes[i].setAttribute("data-copy", pyconSource(codes[i].textContent));
      }
    }
  }

  if (typeof module === "object" && module.exports) {
    module.exports = { pyconSource: pyconSource };   // for tests/test_docs.py
  }
  if (typeof document === "undefined") return;
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { mark(document.body); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { mark(document.body); });
  } else {
    mark(document.body);
  }
})();
