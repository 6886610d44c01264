// Renders the maths of every page with the vendored KaTeX (docs/assets/katex):
// no CDN. pymdownx.arithmatex (generic mode) wraps each formula in an element
// of class "arithmatex", \( ... \) inline and \[ ... \] for a display.
(function () {
  "use strict";
  var delimiters = [
    { left: "\\[", right: "\\]", display: true },
    { left: "\\(", right: "\\)", display: false },
    { left: "$$", right: "$$", display: true },
  ];
  function render(root) {
    if (typeof renderMathInElement !== "function") return;
    var nodes = root.querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      renderMathInElement(nodes[i], { delimiters: delimiters, throwOnError: false });
    }
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  } else {
    render(document.body);
  }
})();
