"""Headless Chromium driven over the DevTools protocol (--remote-debugging-pipe), offline.

The browser runs inside a new network namespace with only loopback up (`unshare -n`, then
`ip link set lo up`), so nothing a page or the browser itself asks for can leave the machine.
`Page` collects what a test needs to judge a page independently of the page's own code: console
messages, uncaught exceptions, log entries (failed loads, CSP violations) and every network request.
Needs Debian's `chromium` (installed by .ci/run) and root, or unprivileged user namespaces (`unshare -r`).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--remote-debugging-pipe"]


def available() -> str | None:
    """None when the browser can run here, else the reason it cannot."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (apt-get install chromium)"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare or ip missing (util-linux, iproute2)"
    return None


class Browser:
    """One offline Chromium process; use as a context manager."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="l0score-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The protocol pipe must be fd 3 (commands in) and fd 4 (replies out) in the browser (bash, not
        # dash: dash cannot redirect from descriptors above 9).
        script = f'ip link set lo up && exec 3<&{to_child_r} 4>&{from_child_w} && exec "$@"'
        self._log = open(os.path.join(self.profile, "stderr.log"), "w+b")  # a file: a full pipe would stall it
        # as root a plain network namespace; otherwise inside a user namespace (where the kernel allows it)
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
        self.proc = subprocess.Popen([*unshare, "bash", "-c", script, "bash", CHROMIUM, *FLAGS,
                                      f"--user-data-dir={self.profile}", "about:blank"],
                                     pass_fds=(to_child_r, from_child_w), stdout=subprocess.DEVNULL,
                                     stderr=self._log)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("Browser.close", {}, None, wait=False)
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def stderr_tail(self, n: int = 3000) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    # --- protocol ------------------------------------------------------------------------------
    def _send(self, method: str, params: dict, session: str | None, wait: bool = True) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        if not wait:
            return {}
        want = self._next_id
        while True:
            reply = self._read()
            if reply.get("id") == want:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"chromium did not answer within {self.timeout} s: {self.stderr_tail()}")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the protocol pipe: {self.stderr_tail()}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_event(self, method: str, session: str) -> dict:
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == session:
                self.events.remove(e)
                return e
        while True:
            e = self._read()
            if e.get("method") == method and e.get("sessionId") == session:
                return e
            self.events.append(e)

    def open(self, url: str, width: int = 1400, height: int = 1000) -> "Page":
        target = self._send("Target.createTarget", {"url": "about:blank"}, None)["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True}, None)["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", session)
        return page


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, **params) -> dict:
        return self.browser._send(method, params, self.session)

    def eval(self, expression: str):
        """The value of a JavaScript expression (JSON-serialisable results)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r} threw: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path, full_page: bool = True) -> bytes:
        params = {"format": "png"}
        if full_page:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": min(h, 6000),
                                                            "scale": 1})
        png = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        with open(path, "wb") as f:
            f.write(png)
        return png

    def _mine(self):
        self.eval("0")  # a round trip, so events sent before now have arrived
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error-level log entries (failed loads, CSP)."""
        out = []
        for e in self._mine():
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        """URLs of every request the page made (the page itself included)."""
        return [e["params"]["request"]["url"] for e in self._mine() if e.get("method") == "Network.requestWillBeSent"]
