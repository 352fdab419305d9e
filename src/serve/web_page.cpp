#include "serve/web_page.h"

namespace dsv3::serve {

const char* const kWebPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dsv3 chat</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 0 auto; padding: 1rem; }
  #log { display: flex; flex-direction: column; gap: .6rem; margin-bottom: 1rem; }
  .msg { white-space: pre-wrap; padding: .5rem .7rem; border-radius: .4rem; }
  .user { background: #e8f0fe; align-self: flex-end; }
  .assistant { background: #f3f3f3; }
  .reasoning { color: #666; font-style: italic; border-left: 3px solid #bbb;
               padding-left: .5rem; margin-bottom: .4rem; }
  .reasoning:empty { display: none; }
  form { display: flex; gap: .5rem; }
  textarea { flex: 1; min-height: 3rem; }
  #settings { margin-bottom: .8rem; font-size: .9rem; }
  #settings input { width: 5rem; }
  .error { color: #b00020; }
</style>
</head>
<body>
<h1>dsv3 chat</h1>
<div id="settings">
  temperature <input id="temperature" type="number" step="0.1" min="0" max="2" value="0.6">
  max tokens <input id="max_tokens" type="number" min="1" value="">
  API key <input id="key" type="password" style="width:10rem">
  <button id="reset" type="button">New chat</button>
</div>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Type a message; Enter sends, Shift+Enter breaks the line"></textarea>
  <button id="send" type="submit">Send</button>
</form>
<script>
"use strict";
const log = document.getElementById("log");
const form = document.getElementById("form");
const input = document.getElementById("input");
const send = document.getElementById("send");
let history = [];
let model = null;

function bubble(role) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const reasoning = document.createElement("div");
  reasoning.className = "reasoning";
  const content = document.createElement("div");
  content.className = "content";
  div.append(reasoning, content);
  log.append(div);
  return { div, reasoning, content };
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = document.getElementById("key").value;
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function ask(text) {
  if (!model) {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    model = j.data[0].id;
  }
  history.push({ role: "user", content: text });
  bubble("user").content.textContent = text;
  const out = bubble("assistant");
  const body = { model, messages: history, stream: true,
                 temperature: Number(document.getElementById("temperature").value) };
  const mt = document.getElementById("max_tokens").value;
  if (mt) body.max_tokens = Number(mt);
  const r = await fetch("/v1/chat/completions",
                        { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    history.pop();
    throw new Error(j.error ? j.error.message : r.statusText);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (!ev.startsWith("data: ")) continue;
      const data = ev.slice(6);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      for (const c of chunk.choices || []) {
        const d = c.delta || {};
        if (d.reasoning_content) out.reasoning.textContent += d.reasoning_content;
        if (d.content) { answer += d.content; out.content.textContent += d.content; }
      }
    }
  }
  history.push({ role: "assistant", content: answer });
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  send.disabled = true;
  try {
    await ask(text);
  } catch (err) {
    const b = bubble("assistant error");
    b.content.textContent = "error: " + err.message;
  } finally {
    send.disabled = false;
    input.focus();
  }
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
});
document.getElementById("reset").addEventListener("click", () => {
  history = [];
  log.textContent = "";
});
</script>
</body>
</html>
)HTML";

}  // namespace dsv3::serve
