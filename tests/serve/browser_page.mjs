// The chat page at / in headless Chromium, driven over the DevTools protocol (Node's own
// WebSocket, so no npm package): type a message, send it, wait for the streamed reply to show
// in the page, check it is the reply the API gives the same conversation (greedy), and save a
// screenshot. With --expect-reasoning (the R1-template server) the reply must show in the
// page's reasoning element, apart from the answer.
//
// node --experimental-websocket browser_page.mjs --url URL --screenshot FILE
//      [--api-key KEY] [--expect-reasoning]
// Exits 2 when chromium is not installed, 1 on any failure.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const url = opt("--url");
const shot = opt("--screenshot");
const key = opt("--api-key") || "";
const expectReasoning = args.includes("--expect-reasoning");
const message = "Hello there";
const maxTokens = 12;

function findChromium() {
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`]).toString().trim();
    } catch {}
  }
  return null;
}

const fail = (msg) => {
  console.error(`browser test: FAIL: ${msg}`);
  process.exitCode = 1;
};

const chromium = findChromium();
if (!chromium) {
  console.error("browser test: chromium is not installed (scripts/setup.sh installs it)");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "dsv3-chromium-"));
const browser = spawn(chromium, [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
  `--user-data-dir=${profile}`, "--window-size=900,700", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"], detached: true });  // its own group: helpers too

let ws;
try {
  // Chromium prints its DevTools endpoint on stderr once it listens.
  const endpoint = await new Promise((resolve, reject) => {
    let err = "";
    const timer = setTimeout(() => reject(new Error(`no DevTools endpoint in 30 s:\n${err}`)), 30000);
    browser.stderr.on("data", (d) => {
      err += d;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    browser.on("exit", (code) => reject(new Error(`chromium exited ${code}:\n${err}`)));
  });

  ws = new WebSocket(endpoint);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let nextId = 1;
  const pending = new Map();
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    const p = m.id !== undefined && pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error) p.reject(new Error(`${p.method}: ${m.error.message}`));
    else p.resolve(m.result);
  };
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject, method });
    ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
  });

  const { targetId } = await send("Target.createTarget", { url: `${url}/` });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  const evaluate = async (expression) => {
    const r = await send("Runtime.evaluate",
                         { expression, returnByValue: true, awaitPromise: true }, sessionId);
    if (r.exceptionDetails) throw new Error(`page: ${r.exceptionDetails.text} in ${expression}`);
    return r.result.value;
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  let ready = false;
  for (let i = 0; i < 300 && !ready; ++i) {
    ready = await evaluate(`document.readyState === "complete" && !!document.getElementById("form")`)
      .catch(() => false);
    if (!ready) await sleep(100);
  }
  if (!ready) throw new Error("the page did not load in 30 s");

  await evaluate(`(() => {
    document.getElementById("key").value = ${JSON.stringify(key)};
    document.getElementById("temperature").value = "0";
    document.getElementById("max_tokens").value = "${maxTokens}";
    document.getElementById("input").value = ${JSON.stringify(message)};
    document.getElementById("form").requestSubmit();
  })()`);

  // The reply streams into the last assistant bubble; it is complete when Send is enabled
  // again. Seeing text while Send is still disabled shows it arrived in pieces.
  const state = `(() => {
    const b = [...document.querySelectorAll(".msg.assistant")].pop();
    return { content: b ? b.querySelector(".content").textContent : null,
             reasoning: b ? b.querySelector(".reasoning").textContent : null,
             error: b && b.classList.contains("error"),
             busy: document.getElementById("send").disabled };
  })()`;
  let s, sawPartial = false;
  const deadline = Date.now() + 60000;
  for (;;) {
    s = await evaluate(state);
    const text = (s.content || "") + (s.reasoning || "");
    if (s.busy && text.length > 0) sawPartial = true;
    if (s.error || (!s.busy && s.content !== null)) break;
    if (Date.now() > deadline) throw new Error(`no complete reply within 60 s: ${JSON.stringify(s)}`);
    await sleep(s.content === null ? 50 : 10);
  }
  const png = await send("Page.captureScreenshot", { format: "png" }, sessionId);
  writeFileSync(shot, Buffer.from(png.data, "base64"));
  console.log(`browser test: screenshot ${shot}; streamed pieces seen: ${sawPartial}`);
  if (s.error) throw new Error(`the page shows an error: ${s.content}`);

  // The same conversation through the API, greedy: the page must show exactly its reply.
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ messages: [{ role: "user", content: message }], temperature: 0,
                           max_tokens: maxTokens }),
  });
  const want = (await r.json()).choices[0].message;
  if (expectReasoning) {
    if (!want.reasoning_content) throw new Error("the API gave no reasoning_content to compare");
    if (s.reasoning !== want.reasoning_content)
      throw new Error(`reasoning shown ${JSON.stringify(s.reasoning)}, API ${JSON.stringify(want.reasoning_content)}`);
    if (s.content !== (want.content || ""))
      throw new Error(`answer shown ${JSON.stringify(s.content)}, API ${JSON.stringify(want.content)}`);
  } else {
    if (!s.content.trim()) throw new Error("the reply is empty");
    if (s.reasoning) throw new Error(`unexpected reasoning ${JSON.stringify(s.reasoning)}`);
    if (s.content !== want.content)
      throw new Error(`reply shown ${JSON.stringify(s.content)}, API ${JSON.stringify(want.content)}`);
  }
  console.log(`browser test: ok (${expectReasoning ? "reasoning" : "reply"} ` +
              `${JSON.stringify(expectReasoning ? s.reasoning : s.content)})`);
} catch (e) {
  fail(e.message);
} finally {
  try { ws && ws.close(); } catch {}
  // The profile can only go once Chromium has stopped writing to it.
  const exited = browser.exitCode !== null ||
                 new Promise((resolve) => browser.once("exit", resolve));
  try { process.kill(-browser.pid, "SIGKILL"); } catch { browser.kill("SIGKILL"); }
  await exited;
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 });
  } catch (e) {
    console.error(`browser test: could not remove ${profile}: ${e.message}`);
  }
}
