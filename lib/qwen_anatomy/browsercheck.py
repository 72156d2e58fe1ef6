"""Every page of the built book in a real browser, offline (``qwen-anatomy browser-check``).

The book is read as a reader reads it: each HTML page is opened from disk (``file://``) in headless
Chromium (Debian's ``chromium``; ``apt-get install -y chromium``) with the network cut three ways
(a dead proxy, DNS mapped to nowhere, and DevTools blocking every ``http(s)``/``ws(s)`` request and
emulating an offline connection). The browser is driven through the Chrome DevTools Protocol over
its websocket (``websocket-client``); nothing is downloaded, no driver is needed.

A page fails on any of:

* a console error: an uncaught exception, ``console.error``, or an error the browser logs;
* a failed load: a file the page asks for that is missing, or any attempt to reach the network;
* a broken image: an ``<img>`` that did not load (``complete`` and ``naturalWidth > 0``);
* a broken internal link: a link to a file that does not exist, that leaves the book's folder, or
  whose ``#anchor`` is no ``id`` of its target page (checked against the files, not the browser);
* an unrendered formula: after MathJax has finished typesetting, a Sphinx math element (class
  ``math``) without its ``mjx-container``, fewer ``mjx-container`` than math elements, a MathJax
  error (``mjx-merror``), or TeX delimiters (``\\(``, ``\\[``, ``$$``, ``$..\\cmd..$``) left in the
  visible prose (code and preformatted output are not prose);
* missing figures: a chapter page must show, loaded, at least as many images from ``_images/`` as
  its executed notebook has image outputs that Jupyter Book renders (see
  :func:`notebook_figure_count`). The executed notebook is ``_build/jupyter_execute/<page>.ipynb``
  after ``make book``, or the page's own executed source (``_sources/<page>.ipynb``) in a book built
  by ``qwen-anatomy book``; ``notebooks_dir`` names another folder. A chapter page (one with notebook
  cells) whose executed notebook cannot be found fails: the figure check is never skipped silently.
  What it cannot see: a figure the notebook never produced (that is the notebook tests' job).

Each page gets a full-page screenshot (``<out>/screenshots/<page>.png``) for a person to look at, a
one-line summary (:func:`summary_line`), and an entry in ``<out>/report.json``. Redirect pages (the
book's ``index.html``) are checked statically: their target must exist.

Chapter 90_experiments and the README's "Your own book" section show how the book is built; the
``make browser-check`` target runs this after ``make book``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import UserInputError

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_ENV = "QWEN_ANATOMY_CHROMIUM"
INSTALL_HINT = "install Debian's chromium (apt-get install -y chromium) or pass --browser PATH"
WINDOW = (1280, 900)  # CSS pixels: the screenshot width, and the viewport the theme lays out for
MAX_SHOT_HEIGHT = 32000  # CSS pixels: taller pages are cut (Chromium's capture limit is near 32k)
REPORT_FILE = "report.json"
SHOTS_DIR = "screenshots"

# myst-nb's choice of the one mime type it renders per output in HTML (myst_nb.core.render.
# base_render_priority()["html"]), highest first. An output counts as a figure when its choice is an image.
HTML_MIME_PRIORITY = (
    "application/vnd.jupyter.widget-view+json",
    "application/javascript",
    "text/html",
    "image/svg+xml",
    "image/png",
    "image/gif",
    "image/jpeg",
    "text/markdown",
    "text/latex",
    "text/plain",
)
REMOVE_CELL_TAGS = {"remove-cell", "remove_cell"}
REMOVE_OUTPUT_TAGS = {"remove-output", "remove_output"}
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}
SKIPPED_LINK_SCHEMES = {"javascript", "mailto", "tel", "data", "about", "blob"}

# TeX left as text: MathJax delimiters Sphinx writes, display dollars, and $...$ holding TeX markup
# (a backslash command, or a sub/superscript) with no space inside the dollars, TeX's own convention,
# so prices like "$5 and $6" are not taken for formulas.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$"
    r"|\$(?=\S)(?=[^$\n]*?(?:\\[A-Za-z]{2,}|[\^_]\{|[\^_][A-Za-z0-9]))[^$\n]{1,300}?(?<=\S)\$"
)


class BrowserError(RuntimeError):
    """The browser could not be started or stopped answering."""


# -- pure checks (no browser): links, formulas, figures --------------------------------------------------
class _IdParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "refresh":
            content = values.get("content") or ""
            match = re.search(r"url\s*=\s*['\"]?([^'\"]+)", content, re.IGNORECASE)
            self.refresh = match.group(1).strip() if match else None


def _parse_html(path: Path) -> _IdParser:
    parser = _IdParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser


class Anchors:
    """The ``id`` (and ``<a name>``) values of each HTML file, read once per file."""

    def __init__(self):
        self._cache: dict[Path, set[str]] = {}

    def __call__(self, path: Path) -> set[str]:
        path = Path(path)
        if path not in self._cache:
            self._cache[path] = _parse_html(path).ids
        return self._cache[path]


def redirect_target(path: Path) -> str | None:
    """The URL of a ``<meta http-equiv="refresh">`` page (Jupyter Book's ``index.html``), else None."""
    return _parse_html(path).refresh


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def link_problem(
    url: str, page: Path, root: Path, anchors: Anchors, page_ids: set[str] | None = None
) -> str | None:
    """Why the link ``url`` (absolute, as the browser resolved it) on ``page`` is broken, or None.

    Only links inside the book are checked: ``file:`` URLs must name an existing file (a folder means
    its ``index.html``) under ``root``, and their ``#anchor`` an ``id`` of the target page
    (``page_ids``: the live page's ids, for anchors on the page itself). External links are not
    followed (the browser is offline): see :func:`link_kind`.
    """
    parts = urlsplit(url)
    if link_kind(url) != "internal":
        return None
    target = Path(unquote(parts.path))
    fragment = unquote(parts.fragment)
    if not _inside(target, root):
        return f"link leaves the book: {url}"
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"broken link: {_rel(target, root)} does not exist"
    if not fragment or fragment.startswith(":~:") or target.suffix.lower() not in (".html", ".htm"):
        return None
    ids = set(anchors(target))
    if page_ids is not None and target.resolve() == page.resolve():
        ids |= page_ids
    if fragment not in ids:
        return f"broken anchor: {_rel(target, root)}#{fragment} (no such id in that page)"
    return None


def link_kind(url: str) -> str:
    """``internal`` (a file of the book), ``external`` (the network) or ``skipped`` (mailto:, javascript:...)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return "internal"
    if scheme in NETWORK_SCHEMES:
        return "external"
    return "skipped"


def raw_tex(texts: list[str], limit: int = 5) -> list[str]:
    """Snippets of TeX left as plain text in ``texts`` (the visible prose of a page), at most ``limit``."""
    found = []
    for text in texts:
        shown_until = -1
        for match in RAW_TEX.finditer(text):
            if match.start() < shown_until:  # inside the snippet already shown (e.g. the closing "\)")
                continue
            start, end = max(0, match.start() - 25), min(len(text), match.end() + 25)
            shown_until = end
            found.append(" ".join(text[start:end].split()))
            if len(found) >= limit:
                return found
    return found


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []) or [])


def displayed_mime(output: dict) -> str | None:
    """The mime type myst-nb renders for one notebook output in HTML (None for streams and errors)."""
    if output.get("output_type") not in ("display_data", "execute_result"):
        return None
    data = output.get("data", {})
    return next((mime for mime in HTML_MIME_PRIORITY if mime in data), None)


def notebook_figure_count(notebook: dict) -> int:
    """The images a Jupyter Book page shows for this executed notebook (nbformat 4 as a dict).

    One per ``display_data``/``execute_result`` output whose rendered mime type
    (:func:`displayed_mime`) is an image, in code cells whose outputs the page keeps (not tagged
    ``remove-cell``/``remove-output``, no ``mystnb.remove_code_outputs``). Hidden outputs
    (``hide-output``) count: they are on the page behind a toggle.
    """
    count = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = _tags(cell)
        mystnb = cell.get("metadata", {}).get("mystnb", {}) or {}
        if tags & REMOVE_CELL_TAGS or tags & REMOVE_OUTPUT_TAGS or mystnb.get("remove_code_outputs"):
            continue
        for output in cell.get("outputs", []):
            mime = displayed_mime(output)
            if mime is not None and mime.startswith("image/"):
                count += 1
    return count


def _executed(path: Path) -> dict | None:
    """The notebook at ``path`` when it has been executed (a code cell with an execution count)."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cells = notebook.get("cells", []) if isinstance(notebook, dict) else []
    if any(c.get("cell_type") == "code" and c.get("execution_count") is not None for c in cells):
        return notebook
    return None


def find_executed_notebook(root: Path, page: str, notebooks_dir: Path | None = None) -> Path | None:
    """The executed notebook behind the page ``page`` (``notebooks/01_x.html``), or None.

    Looked for in ``notebooks_dir`` (as ``<page>.ipynb``, then ``<stem>.ipynb`` anywhere below it),
    ``_build/jupyter_execute`` beside the HTML root (``make book``), then the page's source copy
    ``_sources/<page>.ipynb`` (a book built by ``qwen-anatomy book`` renders executed notebooks).
    """
    stem_path = Path(page).with_suffix(".ipynb")
    candidates: list[Path] = []
    if notebooks_dir is not None:
        candidates.append(notebooks_dir / stem_path)
        candidates += sorted(notebooks_dir.rglob(stem_path.name))
    candidates.append(root.parent / "jupyter_execute" / stem_path)
    candidates.append(root / "_sources" / stem_path)
    for candidate in candidates:
        if candidate.is_file() and _executed(candidate) is not None:
            return candidate
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


# -- finding the book and the browser --------------------------------------------------------------------
def find_html_root(path: str | os.PathLike) -> Path:
    """The folder holding the book's ``index.html``: ``path`` itself, or ``path/_build/html`` (the
    repository), or ``path/html`` (a ``_build`` folder). UserInputError naming what was looked for."""
    base = Path(path).expanduser()
    if not base.exists():
        raise UserInputError(f"book folder {base} does not exist; build the book first (make book)")
    if not base.is_dir():
        raise UserInputError(f"book folder {base} is a file; give the folder holding index.html")
    for candidate in (base, base / "_build" / "html", base / "html"):
        if (candidate / "index.html").is_file():
            return candidate.resolve()
    raise UserInputError(
        f"no index.html in {base} (nor in {base / '_build' / 'html'}); build the book first (make book) "
        "or give the folder holding index.html"
    )


def list_pages(root: Path, patterns: list[str] | None = None) -> list[str]:
    """Every HTML page of the book (paths relative to ``root``), theme and source folders (``_static``,
    ``_sources``, ``_images``...) left out; with ``patterns`` (globs on the relative path) only those."""
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if any(part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        pages.append(rel.as_posix())
    if patterns:
        pages = [p for p in pages if any(fnmatch.fnmatch(p, pattern) for pattern in patterns)]
    return pages


def find_browser(browser: str | None = None) -> str:
    """The Chromium executable: ``browser``, else $QWEN_ANATOMY_CHROMIUM, else chromium on PATH."""
    wanted = browser or os.environ.get(BROWSER_ENV)
    if wanted:
        found = shutil.which(wanted)
        if not found:
            raise UserInputError(f"--browser {wanted} is not an executable; {INSTALL_HINT}")
        return found
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise UserInputError(f"no Chromium found on PATH; {INSTALL_HINT}")


# -- the browser, driven over the DevTools protocol -------------------------------------------------------
def browser_flags(profile: Path) -> list[str]:
    """Headless, a throw-away profile, and no way out to the network."""
    return [
        "--headless=new",
        "--no-sandbox",  # we may run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--mute-audio",
        "--hide-scrollbars",
        "--proxy-server=127.0.0.1:9",  # the discard port: every proxied request fails
        "--proxy-bypass-list=<-loopback>",  # ... loopback included
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]


class Browser:
    """A headless Chromium process and one page (tab) driven over the DevTools protocol.

    Use as a context manager; ``call`` sends a command and returns its result, events are handed to
    ``on_event``. Only the process started here is ever stopped.
    """

    def __init__(self, executable: str, start_timeout: float = 30.0):
        self.executable = executable
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.profile: Path | None = None
        self.ws = None
        self.session: str | None = None
        self.version = ""
        self.on_event = lambda message: None
        self._next_id = 0

    def __enter__(self) -> Browser:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        import websocket

        self.profile = Path(tempfile.mkdtemp(prefix="qwen-anatomy-chromium-"))
        log = (self.profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [self.executable, *browser_flags(self.profile)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its helpers can be stopped with it
        )
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.profile / "chromium.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise BrowserError(
                    f"{self.executable} exited with code {self.process.returncode}: " + " | ".join(tail)
                )
            if port_file.is_file():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    break
            time.sleep(0.05)
        else:
            raise BrowserError(
                f"{self.executable} did not open its DevTools port in {self.start_timeout:.0f} s"
            )
        url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        # Chromium refuses DevTools websockets that carry an Origin header it was not told to allow.
        # UTF-8 validation in pure Python doubled the run time (screenshots arrive as multi-MB frames).
        self.ws = websocket.create_connection(
            url, timeout=self.start_timeout, suppress_origin=True, skip_utf8_validation=True
        )
        self.version = self.call("Browser.getVersion").get("product", "")
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            session=True,
        )
        blocked = [f"{scheme}://*" for scheme in sorted(NETWORK_SCHEMES)]
        self.call("Network.setBlockedURLs", {"urls": blocked}, session=True)
        self.call("Network.setCacheDisabled", {"cacheDisabled": True}, session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60.0):
        """Send one command and wait for its answer (events meanwhile go to ``on_event``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline - time.monotonic())
            if reply is None:
                raise BrowserError(f"no answer to {method} in {timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._dispatch(reply)

    def pump(self, seconds: float, until=None) -> bool:
        """Hand events to ``on_event`` for up to ``seconds``; stop early (True) once ``until(event)``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self._receive(left)
            if message is None:
                return False
            self._dispatch(message)
            if until is not None and until(message):
                return True
        return False

    def _receive(self, timeout: float) -> dict | None:
        import websocket

        if timeout <= 0:
            return None
        self.ws.settimeout(timeout)
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as err:
            raise BrowserError(f"the browser closed its DevTools connection ({err})") from None

    def _dispatch(self, message: dict) -> None:
        if "method" in message:
            self.on_event(message)

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=True,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {text}")
        return result.get("result", {}).get("value")

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.call("Browser.close", timeout=5)
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Only the browser started here: the group it leads (its renderer and helper processes).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            self.process = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None


# -- one page ---------------------------------------------------------------------------------------------
# Runs in the page once it has loaded: waits for images and for MathJax's first typesetting, then
# reports what the Python side checks. MATH_TIMEOUT_MS is replaced before use.
PROBE = r"""
(async () => {
  const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
  const timeout = MATH_TIMEOUT_MS, t0 = Date.now();
  const left = () => Math.max(0, timeout - (Date.now() - t0));
  const imgs = Array.from(document.images);
  imgs.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  while (imgs.some(img => !img.complete) && left() > 0) await sleep(50);

  const maths = Array.from(document.querySelectorAll('.math'));
  let mathjax = 'absent';
  if (maths.length || window.MathJax) {
    // The probe runs after the load event: MathJax's (deferred) script has run by now if it loaded at
    // all, so a short grace is enough; then its first typesetting gets the whole timeout.
    const grace = Date.now() + Math.min(2000, left());
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() < grace) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      mathjax = await Promise.race([
        MathJax.startup.promise.then(() => 'done', err => 'failed: ' + err),
        sleep(left()).then(() => 'timed out'),
      ]);
    } else {
      mathjax = 'not loaded';
    }
  }
  if (document.fonts && document.fonts.ready) await Promise.race([document.fonts.ready, sleep(left())]);

  const prose = [];
  const skip = 'pre, code, script, style, textarea, kbd, samp, mjx-container, .math, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.nodeValue.trim()) continue;
    const parent = node.parentElement;
    if (parent && parent.closest(skip)) continue;
    prose.push(node.nodeValue);
  }
  const html = document.documentElement;
  return {
    url: location.href,
    title: document.title,
    images: imgs.map(img => ({src: img.getAttribute('src') || '', url: img.currentSrc || img.src,
                              complete: img.complete, width: img.naturalWidth})),
    math: {
      mathjax: mathjax,
      elements: maths.length,
      containers: document.querySelectorAll('mjx-container').length,
      unrendered: maths.filter(m => !m.querySelector('mjx-container'))
                       .map(m => m.textContent.trim().replace(/\s+/g, ' ').slice(0, 80)),
      errors: Array.from(document.querySelectorAll('mjx-merror'))
                   .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)),
    },
    prose: prose,
    links: Array.from(document.querySelectorAll('a[href]'))
                .map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    cells: document.querySelectorAll('div.cell').length,
    size: [html.scrollWidth, html.scrollHeight],
  };
})()
"""


@dataclass
class PageResult:
    """What the browser saw on one page and what is wrong with it (``problems``: one line each)."""

    page: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    title: str = ""
    redirect: str | None = None
    images: int = 0
    images_loaded: int = 0
    figures: int = 0  # loaded images from the book's _images/ folder
    figures_expected: int | None = None  # from the executed notebook; None: not a chapter page
    notebook: str | None = None
    math_elements: int = 0
    math_rendered: int = 0
    mathjax: str = "absent"
    links_internal: int = 0
    links_external: int = 0
    console_errors: int = 0
    network_attempts: int = 0
    failed_loads: int = 0
    screenshot: str | None = None
    height: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class _Events:
    """The events of the page being checked: console errors, network attempts, failed loads."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, str] = {}
        self.console: list[str] = []
        self.network: list[str] = []
        self.failed: list[str] = []
        self.failed_ids: set[str] = set()
        self.loaded = False

    def __call__(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            self.requests[params.get("requestId")] = url
            if urlsplit(url).scheme.lower() not in LOCAL_SCHEMES:
                self.network.append(_short(url))
        elif method == "Network.loadingFailed":
            request = params.get("requestId")
            url = self.requests.get(request, "?")
            self.failed_ids.add(request)
            if urlsplit(url).scheme.lower() in LOCAL_SCHEMES and not params.get("canceled"):
                self.failed.append(
                    f"{_short(url)} ({params.get('errorText') or params.get('blockedReason')})"
                )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append(f"uncaught {_first_line(text)}{_where(details)}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.console.append(f"console.{params['type']}: {_first_line(text)}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error" and entry.get("networkRequestId") not in self.failed_ids:
                url = f" ({_short(entry['url'])})" if entry.get("url") else ""
                self.console.append(
                    f"{entry.get('source', 'browser')}: {_first_line(entry.get('text', ''))}{url}"
                )
        elif method == "Page.loadEventFired":
            self.loaded = True


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


def _where(details: dict) -> str:
    url = details.get("url")
    return f" ({_short(url)}:{details.get('lineNumber', 0) + 1})" if url else ""


def _short(url: str) -> str:
    text = unquote(url) if url.startswith("file:") else url
    return text if len(text) <= 160 else text[:157] + "..."


def _viewport(browser: Browser, height: int) -> None:
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": int(height), "deviceScaleFactor": 1, "mobile": False},
        session=True,
    )


def _screenshot(browser: Browser, path: Path) -> int:
    """A full-page PNG of the open page at ``path``; its height in CSS pixels.

    The viewport is made as tall as the page and the capture is a plain one: ``captureBeyondViewport``
    lays the theme out wrongly (the sidebars vanish and the article slides off the left edge). The
    page is measured again after the resize, since sidebars sized to the viewport change its height.
    """
    height = WINDOW[1]
    for _ in range(3):
        content = browser.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        wanted = max(WINDOW[1], min(int(content["height"]), MAX_SHOT_HEIGHT))
        if wanted == height:
            break
        height = wanted
        _viewport(browser, height)
    try:
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=True, timeout=120)
    finally:
        _viewport(browser, WINDOW[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return height


def check_page(
    browser: Browser,
    events: _Events,
    root: Path,
    page: str,
    anchors: Anchors,
    shots: Path | None,
    notebooks_dir: Path | None = None,
    load_timeout: float = 60.0,
    math_timeout: float = 60.0,
) -> PageResult:
    """Open one page (``page``: relative to ``root``) and check it; see the module docstring."""
    t0 = time.perf_counter()
    path = root / page
    result = PageResult(page=page)
    target = redirect_target(path)
    if target is not None:  # a redirect: check where it leads, statically
        result.redirect = target
        url = path.resolve().as_uri()
        problem = link_problem(_join(url, target), path, root, anchors)
        if problem:
            result.problems.append(f"redirect: {problem}")
        result.links_internal = 1
        result.seconds = round(time.perf_counter() - t0, 2)
        return result

    # Every page as on a first visit (a reader may land on any page): no state from the page before.
    browser.evaluate("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
    events.reset()
    nav = browser.call("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
    if nav.get("errorText"):
        result.problems.append(f"page did not open: {nav['errorText']}")
    if not events.loaded and not browser.pump(
        load_timeout, lambda m: m.get("method") == "Page.loadEventFired"
    ):
        result.problems.append(f"page did not finish loading in {load_timeout:.0f} s")
    probe = browser.evaluate(
        PROBE.replace("MATH_TIMEOUT_MS", str(int(math_timeout * 1000))), timeout=math_timeout + 30
    )
    browser.pump(0.3)  # errors logged while the page settles
    result.title = probe["title"]
    result.height = int(probe["size"][1])

    # console and network
    result.console_errors = len(events.console)
    result.network_attempts = len(events.network)
    result.failed_loads = len(events.failed)
    result.problems += [f"console error: {text}" for text in _dedupe(events.console)]
    result.problems += [f"network access attempted: {url}" for url in _dedupe(events.network)]
    result.problems += [f"failed load: {text}" for text in _dedupe(events.failed)]

    # images
    images_dir = (root / "_images").resolve()
    result.images = len(probe["images"])
    for image in probe["images"]:
        loaded = image["complete"] and image["width"] > 0
        result.images_loaded += loaded
        if not loaded:
            result.problems.append(f"broken image: {image['src'] or image['url']}")
            continue
        parts = urlsplit(image["url"])
        if parts.scheme == "file" and _inside(Path(unquote(parts.path)), images_dir):
            result.figures += 1

    # links
    page_ids = set(probe["ids"])
    seen: set[str] = set()
    for link in probe["links"]:
        kind = link_kind(link["url"])
        if kind == "external":
            result.links_external += 1
        if kind != "internal" or link["url"] in seen:
            continue
        seen.add(link["url"])
        if link["href"] in ("#", ""):
            continue
        result.links_internal += 1
        problem = link_problem(link["url"], path, root, anchors, page_ids)
        if problem:
            result.problems.append(f"{problem} (href {link['href']!r})")

    # formulas
    math = probe["math"]
    result.math_elements, result.math_rendered, result.mathjax = (
        math["elements"],
        math["containers"],
        math["mathjax"],
    )
    if math["elements"] and math["mathjax"] != "done":
        result.problems.append(f"MathJax {math['mathjax']}: {math['elements']} formula(s) not typeset")
    if math["unrendered"]:
        shown = "; ".join(math["unrendered"][:3])
        result.problems.append(f"unrendered formula(s): {len(math['unrendered'])}, e.g. {shown}")
    elif math["containers"] < math["elements"]:
        result.problems.append(
            f"only {math['containers']} rendered formula(s) for {math['elements']} math elements"
        )
    for error in math["errors"][:5]:
        result.problems.append(f"MathJax error: {error}")
    for snippet in raw_tex(probe["prose"]):
        result.problems.append(f"raw TeX in the text: '{snippet}'")

    # figures
    notebook = find_executed_notebook(root, page, notebooks_dir)
    if notebook is not None:
        result.notebook = str(notebook)
        result.figures_expected = notebook_figure_count(_executed(notebook) or {})
        if result.figures < result.figures_expected:
            result.problems.append(
                f"missing figures: the page shows {result.figures} of the {result.figures_expected} "
                f"image output(s) of {notebook.name}"
            )
    elif probe["cells"]:
        result.problems.append(
            f"figures not checked: no executed notebook found for this chapter page ({probe['cells']} "
            "notebook cell(s)); pass --notebooks DIR"
        )

    if shots is not None:
        shot = shots / Path(page).with_suffix(".png")
        _screenshot(browser, shot)
        result.screenshot = str(shot)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _join(base: str, href: str) -> str:
    from urllib.parse import urljoin

    return urljoin(base, href)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the whole book -----------------------------------------------------------------------------------------
def summary_line(result: PageResult) -> str:
    """One line per page: verdict, page, then what was counted (and the first problem, if any)."""
    verdict = "ok  " if result.ok else "FAIL"
    if result.redirect is not None:
        facts = f"redirect to {result.redirect}"
    else:
        figures = (
            f"figures {result.figures}/{result.figures_expected}"
            if result.figures_expected is not None
            else f"images {result.images_loaded}/{result.images}"
        )
        facts = (
            f"math {result.math_rendered}/{result.math_elements}  {figures}  "
            f"links {result.links_internal}  {result.seconds:.1f} s"
        )
    line = f"{verdict} {result.page:<45} {facts}"
    if result.problems:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        line += f"  -- {result.problems[0]}{more}"
    return line


def verdict(results: list[PageResult]) -> str:
    """The closing sentence: how many pages passed, and which failed."""
    failed = [r.page for r in results if not r.ok]
    if not failed:
        return f"all {len(results)} page(s) passed in the offline browser"
    return f"{len(failed)} of {len(results)} page(s) failed: {', '.join(failed)}"


def check_book(
    html: str | os.PathLike,
    out: str | os.PathLike | None,
    pages: list[str] | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    browser: str | None = None,
    screenshots: bool = True,
    load_timeout: float = 60.0,
    math_timeout: float = 60.0,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Check every page of the book under ``html`` (see the module docstring) and return the report,
    also written to ``out/report.json`` beside ``out/screenshots/`` (``out`` new or empty; None
    writes nothing). ``report["status"]`` is ``passed`` only when every page passed."""
    from .iochecks import check_output_dir, make_output_dir
    from .runrecord import atomic_write_json, utc_now

    root = find_html_root(html)
    selected = list_pages(root, pages)
    if not selected:
        raise UserInputError(f"--pages {' '.join(pages or [])} matches no page of {root}")
    nb_dir = Path(notebooks_dir).expanduser() if notebooks_dir is not None else None
    if nb_dir is not None and not nb_dir.is_dir():
        raise UserInputError(
            f"--notebooks {nb_dir} is not a folder; give the folder of executed .ipynb files"
        )
    executable = find_browser(browser)
    out_dir = check_output_dir(out) if out is not None else None
    if out_dir is not None:
        make_output_dir(out_dir)
    shots = out_dir / SHOTS_DIR if (out_dir is not None and screenshots) else None

    report: dict[str, Any] = {
        "html_root": str(root),
        "browser": executable,
        "started": utc_now(),
        "pages": [],
    }
    t0 = time.perf_counter()
    results: list[PageResult] = []
    anchors = Anchors()
    events = _Events()
    with Browser(executable) as chromium:
        chromium.on_event = events
        report["browser_version"] = chromium.version
        log(f"checking {len(selected)} page(s) of {root} offline in {chromium.version}")
        bar = _progress(selected, progress)
        write = bar.write if hasattr(bar, "write") else log
        for page in bar:
            try:
                result = check_page(
                    chromium, events, root, page, anchors, shots, nb_dir, load_timeout, math_timeout
                )
            except BrowserError as err:
                result = PageResult(page=page, problems=[f"browser: {err}"])
            results.append(result)
            write(summary_line(result))
            if result.problems and len(result.problems) > 1:
                for problem in result.problems[1:]:
                    write(f"       {problem}")
        if hasattr(bar, "close"):
            bar.close()
    report["pages"] = [r.to_dict() for r in results]
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["failed"] = [r.page for r in results if not r.ok]
    report["status"] = "failed" if report["failed"] else "passed"
    report["verdict"] = verdict(results)
    if out_dir is not None:
        atomic_write_json(out_dir / REPORT_FILE, report)
    log(f"{report['verdict']} ({report['wall_seconds']:.0f} s)")
    return report


def _progress(pages: list[str], enabled: bool):
    if not enabled:
        return pages
    import sys

    from tqdm import tqdm

    return tqdm(pages, desc="pages", unit="page", file=sys.stderr, dynamic_ncols=True, leave=False)
