// MathJax 3 settings for pymdownx.arithmatex (generic mode), read by javascripts/mathjax/tex-svg.js,
// which the site ships (scripts/mkdocs_hooks.py copies it from the pinned django-static-mathjax
// package at build time): no formula needs the network, served or opened from disk.
//
// arithmatex writes $...$ / \(...\) as \( \) inside <span class="arithmatex"> and $$...$$ / \[...\]
// as \[ \] inside <div class="arithmatex">; MathJax looks only inside those elements, so dollar
// signs and backslashes in code and prose are left alone.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  },
  svg: {
    // one set of glyph paths per page, shared by every formula: smaller pages, no font files
    fontCache: "global"
  }
};

// Material's document$ emits once per page shown. MathJax typesets the first page itself when it
// has loaded (startup.typeset), so the first emission is skipped; a later one (a page swapped in by
// instant navigation) is typeset again once MathJax is up. The old handler read
// MathJax.startup.output before MathJax had loaded (the TypeError every page threw) and called
// clearCache, which only the CHTML output has.
let firstPage = true;
document$.subscribe(() => {
  if (firstPage) {
    firstPage = false;
    return;
  }
  const mj = window.MathJax;
  if (!mj || !mj.startup || !mj.startup.promise || typeof mj.typesetPromise !== "function") {
    return;
  }
  mj.startup.promise.then(() => {
    mj.typesetClear();
    mj.texReset();
    return mj.typesetPromise();
  });
});
