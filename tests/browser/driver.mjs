// Drives Debian's headless Chromium for tests/it/browser.rs with
// playwright-core (which downloads no browser of its own).
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on
// stdout: {"ok": true, ...} or {"ok": false, "error": "..."}. The Rust test
// makes every decision and assertion; this script only acts and reports what
// the page shows. stderr carries Chromium's and the page's messages.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let browser = null;
let page = null;
const pageLog = [];

function note(line) {
  pageLog.push(line);
  process.stderr.write(`[page] ${line}\n`);
}

// What the page shows: state, count and every listed event, oldest first.
async function snapshot() {
  return page.evaluate(() => {
    const state = document.getElementById("state");
    const events = [...document.querySelectorAll("#events li.event")].reverse().map((li) => ({
      id: li.dataset.id,
      event: li.dataset.event,
      shownName: li.querySelector(".name")?.textContent ?? "",
      shownId: li.querySelector(".id")?.textContent ?? "",
      time: li.querySelector(".time")?.textContent ?? "",
      data: li.querySelector(".data")?.textContent ?? "",
    }));
    return {
      state: state?.dataset.state ?? null,
      stateText: state?.textContent ?? null,
      count: document.getElementById("count")?.textContent ?? null,
      events,
    };
  });
}

const commands = {
  async launch({ executablePath }) {
    // launch() gives every run a fresh, empty profile directory.
    browser = await chromium.launch({ executablePath, headless: true, args: FLAGS });
    return { version: browser.version() };
  },

  async open({ url, width = 1280, height = 800, mobile = false, dark = false }) {
    const context = await browser.newContext({
      colorScheme: dark ? "dark" : "light",
      viewport: { width, height },
      isMobile: mobile,
      hasTouch: mobile,
      deviceScaleFactor: mobile ? 2 : 1,
    });
    page = await context.newPage();
    page.on("console", (m) => note(`console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => note(`error: ${e.message}`));
    page.on("requestfailed", (r) => note(`request failed: ${r.url()} ${r.failure()?.errorText ?? ""}`));
    const response = await page.goto(url, { waitUntil: "load" });
    return { status: response?.status() ?? 0 };
  },

  async snapshot() {
    return snapshot();
  },

  async waitState({ state, timeoutMs }) {
    await page.waitForFunction(
      (s) => document.getElementById("state")?.dataset.state === s,
      state,
      { timeout: timeoutMs, polling: 50 },
    );
    return snapshot();
  },

  // Waits until an event with exactly this data is listed.
  async waitEvent({ data, timeoutMs }) {
    await page.waitForFunction(
      (d) => [...document.querySelectorAll("#events li.event .data")].some((el) => el.textContent === d),
      data,
      { timeout: timeoutMs, polling: 50 },
    );
    return snapshot();
  },

  // Fills the publish form, submits it and waits for its answer.
  async publishForm({ channel, event = "", data, token = "", timeoutMs }) {
    await page.fill("#pub-channel", channel);
    await page.fill("#pub-event", event);
    await page.fill("#pub-data", data);
    await page.fill("#pub-token", token);
    await page.evaluate(() => {
      document.getElementById("pub-result").dataset.status = "";
    });
    await page.click("#pub-submit");
    await page.waitForFunction(
      () => ["ok", "error"].includes(document.getElementById("pub-result")?.dataset.status),
      null,
      { timeout: timeoutMs, polling: 50 },
    );
    return page.evaluate(() => {
      const r = document.getElementById("pub-result");
      return { status: r.dataset.status, text: r.textContent };
    });
  },

  // Where the two panels are, and whether the page scrolls sideways.
  async layout() {
    return page.evaluate(() => {
      const box = (id) => {
        const r = document.getElementById(id).getBoundingClientRect();
        return { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
      };
      const root = document.documentElement;
      return {
        feed: box("feed"),
        publish: box("publish"),
        scrollWidth: root.scrollWidth,
        clientWidth: root.clientWidth,
      };
    });
  },

  async screenshot({ path, fullPage = false }) {
    await page.screenshot({ path, fullPage });
    return { path };
  },

  async pageLog() {
    return { lines: pageLog };
  },

  async quit() {
    if (browser) await browser.close();
    browser = null;
    return {};
  },
};

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of input) {
  if (!line.trim()) continue;
  let answer;
  try {
    const request = JSON.parse(line);
    const run = commands[request.cmd];
    if (!run) throw new Error(`unknown command ${request.cmd}`);
    answer = { ok: true, ...(await run(request)) };
  } catch (e) {
    let extra = {};
    try {
      if (page) extra = { page: await snapshot() };
    } catch {
      // The page itself may be what failed.
    }
    answer = { ok: false, error: String(e?.message ?? e), ...extra };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (answer.ok && line.includes('"quit"')) break;
}
if (browser) await browser.close();
process.exit(0);
