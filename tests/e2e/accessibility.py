"""The accessibility audit of the browser suite: axe-core (npm, pinned in package.json and
package-lock.json here) injected into each page a journey screenshots.

- `audit(page, name)` runs axe on the page as it is (WCAG 2.0/2.1 A and AA rules) and
  records every violation in the session's report, `tests/e2e/artifacts/axe-report.json`;
  the violations of impact `serious` or `critical` fail the test that met them (at its
  end, so that one run lists them all).
- At a phone's width, a page that scrolls sideways fails too: the content must reflow
  (WCAG 1.4.10), which axe does not check; so does a text field squeezed under 120 px.
- E-mails shown in the page (about:blank) are not the portal's pages: not audited. Nor
  are pages opened with JavaScript disabled: axe is a script (Playwright's evaluate never
  returns there); their templates are audited in the same states with JavaScript on.

axe is evaluated through the DevTools protocol, not added as a <script>: the pages' Content
Security Policy (script-src 'self') stays as strict as it is for a person.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.support import ARTIFACTS, E2E_DIR

AXE_PACKAGE = E2E_DIR / "node_modules" / "axe-core"
AXE_SCRIPT = AXE_PACKAGE / "axe.min.js"
REPORT = ARTIFACTS / "axe-report.json"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = ("serious", "critical")
PHONE_MAX_WIDTH = 600  # below it, the page must not scroll sideways
MIN_FIELD_WIDTH = 120  # nor squeeze a text field into a sliver where what is typed cannot be read

RUN_AXE = """async (tags) => {
  const result = await window.axe.run(document, {
    runOnly: {type: "tag", values: tags},
    resultTypes: ["violations"],
  });
  return {
    url: result.url,
    engine: result.testEngine.version,
    violations: result.violations.map(v => ({
      id: v.id, impact: v.impact, tags: v.tags, help: v.help, helpUrl: v.helpUrl,
      nodes: v.nodes.map(n => ({target: n.target, html: n.html, failureSummary: n.failureSummary})),
    })),
  };
}"""

OVERFLOW = """(MIN_FIELD_WIDTH) => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  if (document.documentElement.scrollWidth > width + 1) {
    for (const el of document.body.querySelectorAll("*")) {
      const box = el.getBoundingClientRect();
      if (box.width > 0 && box.right > width + 1 && getComputedStyle(el).position !== "fixed") {
        const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
          (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "");
        wide.push(name + " (right edge " + Math.round(box.right) + " px)");
        if (wide.length >= 5) break;
      }
    }
  }
  const cramped = [];
  const fields = "input:not([type]), input[type=text], input[type=email], input[type=password], input[type=tel], " +
    "input[type=search], input[type=number], input[type=url], input[type=date], select, textarea";
  for (const el of document.querySelectorAll(fields)) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.height > 0 && box.width < MIN_FIELD_WIDTH) {
      const label = el.labels && el.labels[0] ? el.labels[0].textContent.trim().replace(/\\s+/g, " ") : el.name;
      cramped.push("« " + label + " » (" + Math.round(box.width) + " px)");
    }
  }
  return {viewport: width, scrollWidth: document.documentElement.scrollWidth, wide, cramped};
}"""


def install_axe() -> None:
    """`npm ci` here when node_modules is missing or older than the lock file (as `make e2e`)."""
    installed = E2E_DIR / "node_modules" / ".package-lock.json"
    lock = E2E_DIR / "package-lock.json"
    if AXE_SCRIPT.exists() and installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm est requis pour l'audit d'accessibilité (npm ci dans tests/e2e)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=E2E_DIR, check=True,
                   stdout=subprocess.DEVNULL)
    installed.touch()


@dataclass
class AxeReport:
    """Every audited page of the session, written to REPORT when the session ends."""

    pages: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: dict) -> None:
        with self.lock:
            self.pages.append(entry)

    def write(self, path: Path = REPORT) -> None:
        blocking = [v for page in self.pages for v in page["violations"] if v["impact"] in BLOCKING]
        summary = {
            "tags": WCAG_TAGS,
            "blocking_impacts": list(BLOCKING),
            "pages_audited": sum(1 for page in self.pages if "skipped" not in page),
            "pages_skipped": sum(1 for page in self.pages if "skipped" in page),
            "violations": sum(len(page["violations"]) for page in self.pages),
            "blocking_violations": len(blocking),
            "pages_overflowing": sum(1 for page in self.pages if page.get("overflow")),
            "pages_with_cramped_fields": sum(1 for page in self.pages if page.get("cramped_fields")),
            "by_rule": _by_rule(self.pages),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"summary": summary, "pages": self.pages}, ensure_ascii=False, indent=1))


def _by_rule(pages: list[dict]) -> dict[str, dict]:
    rules: dict[str, dict] = {}
    for page in pages:
        for violation in page["violations"]:
            rule = rules.setdefault(violation["id"], {"impact": violation["impact"], "help": violation["help"],
                                                      "pages": 0, "nodes": 0})
            rule["pages"] += 1
            rule["nodes"] += len(violation["nodes"])
    return dict(sorted(rules.items()))


class Auditor:
    """One test's audits: `auditor(page, name)`; `problems` lists what fails the test."""

    def __init__(self, report: AxeReport, test: str) -> None:
        self.report = report
        self.test = test
        self.problems: list[str] = []
        self._source: str | None = None
        self._without_javascript: list = []

    def without_javascript(self, page) -> None:
        """A page of a context with JavaScript disabled: axe cannot run there."""
        self._without_javascript.append(page)

    def _axe_source(self) -> str:
        if self._source is None:
            self._source = AXE_SCRIPT.read_text(encoding="utf-8")
        return self._source

    def __call__(self, page, name: str) -> list[dict]:
        """Audit the page as shown; the blocking violations found (also kept for the end)."""
        if not page.url.startswith(("http://", "https://")):
            return []  # an e-mail shown in about:blank
        if any(page is other for other in self._without_javascript):
            self.report.add({"test": self.test, "step": name, "url": page.url, "skipped": "JavaScript disabled",
                             "violations": []})
            return []
        page.wait_for_load_state("load")
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate(self._axe_source())
        result = page.evaluate(RUN_AXE, WCAG_TAGS)
        viewport = page.viewport_size or {}
        entry = {"test": self.test, "step": name, "url": result["url"], "title": page.title(),
                 "viewport": f"{viewport.get('width')}x{viewport.get('height')}", "axe": result["engine"],
                 "violations": result["violations"]}
        if viewport.get("width", PHONE_MAX_WIDTH) < PHONE_MAX_WIDTH:
            overflow = page.evaluate(OVERFLOW, MIN_FIELD_WIDTH)
            if overflow["scrollWidth"] > overflow["viewport"] + 1:
                entry["overflow"] = overflow
                self.problems.append(
                    f"{name} ({result['url']}): the page scrolls sideways at {overflow['viewport']} px "
                    f"({overflow['scrollWidth']} px wide): {', '.join(overflow['wide']) or '?'}")
            if overflow["cramped"]:
                entry["cramped_fields"] = overflow["cramped"]
                self.problems.append(f"{name} ({result['url']}): fields narrower than {MIN_FIELD_WIDTH} px at "
                                     f"{overflow['viewport']} px: {', '.join(overflow['cramped'])}")
        self.report.add(entry)
        blocking = [v for v in result["violations"] if v["impact"] in BLOCKING]
        for violation in blocking:
            targets = "; ".join(" ".join(map(str, node["target"])) for node in violation["nodes"][:5])
            self.problems.append(f"{name} ({result['url']}): {violation['impact']} {violation['id']} "
                                 f"({violation['help']}) at {targets}")
        return blocking
