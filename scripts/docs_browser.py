"""Open every page of the built docs site in headless Chromium, offline, and check what a reader sees.

    python scripts/docs_browser.py SITE_DIR [--screenshots DIR] [--chromium /usr/bin/chromium]

Serves SITE_DIR (a ``mkdocs build`` output) on 127.0.0.1, starts Chromium headless with a fresh
profile and every host but the loopback unresolvable, drives it over the Chrome DevTools protocol
(the ``websocket-client`` package) and, for every ``*.html`` page, fails on:

- raw TeX in the rendered text: a formula MathJax did not typeset (an ``arithmatex`` element
  without MathJax output, a MathJax error node), or ``\\(``, ``\\[``, ``$$``, ``$\\`` or a TeX
  command (``\\frac``...) left in the text outside code;
- a JavaScript error or an error logged in the console (a failed load included);
- a request to anything but the loopback;
- an image that did not load;
- a table wider than the text column that does not scroll inside its own box, or a page wider
  than the window (1280 px);
- a signature in the API reference wider than its code box.

It also opens ``backprop.html`` from disk (``file://``): its formulas typeset, and every link of every
page points to a file (a page, not a folder listing). With ``--screenshots DIR`` it saves
backprop, sparse-attention and benchmarks as PNGs. Prints one line per page; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html.parser
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

WIDTH, HEIGHT = 1280, 900
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    # no network beyond the loopback: every other host name fails to resolve
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--proxy-server=direct://", "--proxy-bypass-list=*",
    f"--window-size={WIDTH},{HEIGHT}",
]
DISK_PAGE = "backprop.html"  # the page also opened from disk: the most formulas
# the pages --screenshots saves, each scrolled to a section (None: the top)
SCREENSHOT_PAGES = {"backprop.html": "layernorm", "sparse-attention.html": "backward", "benchmarks.html": None}

# Runs in the page once MathJax is done; returns what the checks need.
INSPECT_JS = r"""
(() => {
  const out = {};
  const content = document.querySelector("article.md-content__inner") || document.body;
  const contentRect = content.getBoundingClientRect();
  // formulas
  const maths = Array.from(document.querySelectorAll(".arithmatex"));
  out.formulas = maths.length;
  out.untypeset = maths.filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.slice(0, 80));
  out.mathErrors = Array.from(document.querySelectorAll('[data-mml-node="merror"], mjx-merror'))
    .map(e => (e.getAttribute("data-mjx-error") || e.textContent || "").slice(0, 120));
  // the text a reader sees, without code, without MathJax's hidden MathML copy
  const clone = content.cloneNode(true);
  clone.querySelectorAll("pre, code, mjx-container, script, style, .headerlink").forEach(e => e.remove());
  const text = clone.textContent;
  const raw = [];
  const pat = /\\\(|\\\)|\\\[|\\\]|\$\$|\$\\[A-Za-z]|\\(?:frac|sum|mathbf|mathrm|operatorname|left|right|cdot|times|partial|top|odot|sqrt|in|le|ge|ell|alpha|beta|sigma|text|hat|tilde|bar|exp|log|max|min|infty|quad|begin|end)\b/g;
  let m;
  while ((m = pat.exec(text)) && raw.length < 5) {
    raw.push(text.slice(Math.max(0, m.index - 40), m.index + 40).replace(/\s+/g, " "));
  }
  // the table of contents and the page title (a formula in a heading shows up there raw)
  const toc = Array.from(document.querySelectorAll(".md-nav__link, title")).map(e => e.textContent).join(" ");
  const tocRaw = toc.match(/\\[A-Za-z]+|\$[^$]+\$/g);
  out.rawTex = raw.concat(tocRaw ? ["in the navigation: " + tocRaw.slice(0, 3).join(" ")] : []);
  // images
  out.images = Array.from(document.images).length;
  out.brokenImages = Array.from(document.images)
    .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  // tables: fitting the column (Material lets them reach 0.8rem into its padding), or scrolling
  // inside a box of their own that fits it
  const fits = r => r.left >= contentRect.left - 24 && r.right <= contentRect.right + 24;
  // the box that clips the table and scrolls (the table itself, whose content may overflow
  // it, or an ancestor narrower than the table)
  const scrollBox = el => {
    const r = el.getBoundingClientRect();
    for (let a = el; a && a !== content; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox !== "auto" && ox !== "scroll") continue;
      const ar = a.getBoundingClientRect();
      if ((a === el && a.scrollWidth > a.clientWidth + 1) || ar.right < r.right - 1 || ar.left > r.left + 1) return a;
    }
    return null;
  };
  // the page's height as a reader first sees it; then every folded block opened, so that the
  // tables inside are checked too
  out.height = document.documentElement.scrollHeight;
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const tables = Array.from(content.querySelectorAll("table"));
  out.tables = tables.length;
  out.scrollingTables = [];
  out.wideTables = [];
  tables.forEach((t, i) => {
    const r = t.getBoundingClientRect();
    const box = scrollBox(t);
    if (box && fits(box.getBoundingClientRect())) {
      out.scrollingTables.push(`table ${i + 1}: ${box.scrollWidth} px in a ${box.clientWidth} px box`);
    } else if (!fits(r) || box) {
      out.wideTables.push(`table ${i + 1}: ${Math.round(r.width)} px in a ${Math.round(contentRect.width)} px column`);
    }
  });
  out.pageWidth = document.documentElement.scrollWidth;
  // API signatures wider than their code box
  out.wideSignatures = Array.from(document.querySelectorAll(".doc-signature code, .doc-signature pre"))
    .filter(c => c.scrollWidth > c.clientWidth + 1)
    .map(c => c.textContent.slice(0, 60).replace(/\s+/g, " "));
  out.sphinxRoles = (content.textContent.match(/:(?:func|class|meth|mod|data|attr|exc):`?[\w.]+/g) || []).slice(0, 5);
  return JSON.stringify(out);
})()
"""

WAIT_MATHJAX_JS = r"""
(async () => {
  for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) {
    await new Promise(r => setTimeout(r, 50));
  }
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return "MathJax did not start";
  await MathJax.startup.promise;
  return "ok";
})()
"""


class CDP:
    """A minimal Chrome DevTools protocol client: commands on one page session, events buffered."""

    def __init__(self, ws_url):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, session=True, timeout=60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
        raise TimeoutError(method)

    def wait_event(self, name, timeout=30):
        deadline = time.time() + timeout
        for i, ev in enumerate(self.events):
            if ev["method"] == name:
                del self.events[i]
                return ev
        while time.time() < deadline:
            ev = json.loads(self.ws.recv())
            if "method" in ev:
                if ev["method"] == name:
                    return ev
                self.events.append(ev)
        raise TimeoutError(name)

    def drain(self, seconds=0.2):
        self.ws.settimeout(seconds)
        try:
            while True:
                ev = json.loads(self.ws.recv())
                if "method" in ev:
                    self.events.append(ev)
        except Exception:  # noqa: BLE001, S110 - the timeout that ends the drain
            pass
        finally:
            self.ws.settimeout(60)

    def evaluate(self, expr, await_promise=False):
        res = self.send("Runtime.evaluate", {"expression": expr, "awaitPromise": await_promise,
                                             "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"].get("text"))
        return res["result"].get("value")


def serve(site_dir):
    handler = functools.partial(_QuietHandler, directory=site_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def start_chromium(chromium, profile):
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(profile, "DevToolsActivePort")
    for _ in range(300):
        if os.path.exists(port_file):
            with open(port_file) as f:
                lines = f.read().split("\n")
            if len(lines) >= 2 and lines[1]:
                return proc, f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        if proc.poll() is not None:
            raise RuntimeError(f"{chromium} exited with {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{chromium} did not open its DevTools port")


def is_loopback(url):
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("data", "blob", "about", "file", "chrome", "devtools", ""):
        return True
    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost")


def open_page(cdp, url):
    """Load url, wait for MathJax; return (inspection dict, problems found in the events)."""
    cdp.events.clear()
    cdp.send("Page.navigate", {"url": url})
    cdp.wait_event("Page.loadEventFired", timeout=60)
    status = cdp.evaluate(WAIT_MATHJAX_JS, await_promise=True)
    cdp.drain(0.3)
    info = json.loads(cdp.evaluate(INSPECT_JS))
    problems = [] if status == "ok" else [status]
    for ev in cdp.events:
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            problems.append("JavaScript error: " + (d.get("exception", {}).get("description") or d.get("text", ""))[:200])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            problems.append("console error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in p.get("args", []))[:200])
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            problems.append(f"console error: {p['entry'].get('text', '')[:160]} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent" and not is_loopback(p["request"]["url"]):
            problems.append(f"request beyond the loopback: {p['request']['url'][:120]}")
        elif m == "Network.responseReceived" and p["response"].get("status", 200) >= 400:
            problems.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
    return info, problems


def check_info(info):
    problems = []
    if info["untypeset"]:
        problems.append(f"{len(info['untypeset'])} formulas not typeset, e.g. {info['untypeset'][0]!r}")
    if info["mathErrors"]:
        problems.append(f"{len(info['mathErrors'])} MathJax errors, e.g. {info['mathErrors'][0]!r}")
    problems += [f"raw TeX in the text: ...{t}..." for t in info["rawTex"]]
    problems += [f"image did not load: {s}" for s in info["brokenImages"]]
    problems += [f"table wider than the column: {t}" for t in info["wideTables"]]
    if info["pageWidth"] > WIDTH + 1:
        problems.append(f"page {info['pageWidth']} px wide in a {WIDTH} px window")
    problems += [f"signature wider than its box: {s}" for s in info["wideSignatures"]]
    problems += [f"Sphinx role left in the text: {s}" for s in info["sphinxRoles"]]
    return problems


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if tag in ("a", "img", "script", "link") and a.get(key):
                self.links.append(a[key])


def disk_links(site_dir, pages):
    """Links of each page that, opened from disk, do not land on a file."""
    bad = []
    for page in pages:
        parser = _Links()
        with open(os.path.join(site_dir, page), encoding="utf-8") as f:
            parser.feed(f.read())
        for link in parser.links:
            parts = urllib.parse.urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path:
                continue
            target = os.path.normpath(os.path.join(site_dir, os.path.dirname(page),
                                                   urllib.parse.unquote(parts.path)))
            if not os.path.isfile(target):
                bad.append(f"{page}: {link}")
    return bad


def site_pages(site):
    """Every page of the site (``*.html`` but 404.html, outside the theme's and MathJax's folders)."""
    pages = []
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames[:] = sorted(d for d in dirnames if d not in ("assets", "javascripts", "search", "bench-results"))
        rel = os.path.relpath(dirpath, site)
        pages += [os.path.normpath(os.path.join(rel, f)) for f in sorted(filenames)
                  if f.endswith(".html") and f != "404.html"]
    return sorted(pages)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site_dir")
    ap.add_argument("--screenshots", help="save backprop, sparse-attention and benchmarks PNGs here")
    ap.add_argument("--full-page", action="store_true", help="screenshots of whole pages, not the first screen")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    site = os.path.abspath(args.site_dir)
    pages = site_pages(site)
    if "index.html" not in pages:
        print(f"docs-browser: no index.html in {site}", file=sys.stderr)
        return 1

    failures = {}
    bad_links = disk_links(site, pages)
    if bad_links:
        failures["links from disk"] = [f"link to no file: {b}" for b in bad_links[:20]]

    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profile = tempfile.mkdtemp(prefix="docs-browser-profile-")
    proc, ws_url = start_chromium(args.chromium, profile)
    total_formulas = 0
    try:
        browser = CDP(ws_url)
        target = browser.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        browser.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                       session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable")
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        for page in pages:
            t0 = time.time()
            info, problems = open_page(browser, base + page)
            problems += check_info(info)
            total_formulas += info["formulas"]
            if problems:
                failures[page] = problems
            print(f"{'FAIL' if problems else 'ok  '} {page:26s} {info['formulas']:4d} formulas, "
                  f"{info['tables']:3d} tables ({len(info['scrollingTables'])} scroll), {info['images']} images, "
                  f"{info['height']:6d} px tall ({info['height'] / HEIGHT:.1f} screens), {time.time() - t0:.1f} s")
            if args.screenshots and page in SCREENSHOT_PAGES:
                os.makedirs(args.screenshots, exist_ok=True)
                anchor = SCREENSHOT_PAGES[page]
                if anchor and not args.full_page:
                    browser.evaluate(f"document.getElementById({json.dumps(anchor)})?.scrollIntoView()")
                    time.sleep(0.8)  # the header's title fades in on scroll
                params = {"format": "png"}
                if args.full_page:  # the whole page, not the first screen
                    params.update(captureBeyondViewport=True,
                                  clip={"x": 0, "y": 0, "width": WIDTH, "height": info["height"], "scale": 1})
                shot = browser.send("Page.captureScreenshot", params)
                path = os.path.join(args.screenshots, page.replace(".html", ".png"))
                with open(path, "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
        # the same site opened from disk: MathJax and its extensions load from file://
        disk_page = DISK_PAGE if DISK_PAGE in pages else "index.html"
        info, problems = open_page(browser, "file://" + os.path.join(site, disk_page))
        problems += check_info(info)
        if problems:
            failures[f"{disk_page} from disk"] = problems
        print(f"{'FAIL' if problems else 'ok  '} {disk_page + ' from disk':26s} {info['formulas']:4d} formulas")
        browser.send("Browser.close", session=False)
    finally:
        server.shutdown()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)

    for page, problems in failures.items():
        print(f"\n{page}:", file=sys.stderr)
        for p in problems[:15]:
            print(f"  - {p}", file=sys.stderr)
        if len(problems) > 15:
            print(f"  ... and {len(problems) - 15} more", file=sys.stderr)
    checked = len(pages) + 2  # every page, the site's links from disk, one page opened from disk
    print(f"{len(pages)} pages, {total_formulas} formulas typeset" + (f"; failed: {', '.join(failures)}" if failures else ""))
    print(f"docs-browser: {checked - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
