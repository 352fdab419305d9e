// dsv3 serve end to end through the official openai client, run by tests/cli/serve.sh with a
// server already listening. Environment: DSV3_URL (http://127.0.0.1:PORT), DSV3_API_KEY,
// DSV3_MODEL_NAME, DSV3_BIN (the dsv3 binary), DSV3_MODEL_DIR, DSV3_TOKENIZER,
// DSV3_MAX_BODY (the server's --max-body-bytes), DSV3_R1_URL (a second server with the R1
// chat template).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import OpenAI from "openai";

const url = process.env.DSV3_URL;
const key = process.env.DSV3_API_KEY;
const model = process.env.DSV3_MODEL_NAME;
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, timeout: 30000, maxRetries: 0 });

// Greedy ids of `dsv3 generate` for a text prompt: the last stdout line of --print-ids.
function generateIds(prompt, n) {
  const out = execFileSync(
    process.env.DSV3_BIN,
    ["generate", "--model", process.env.DSV3_MODEL_DIR, "--tokenizer", process.env.DSV3_TOKENIZER,
     "--prompt", prompt, "-n", String(n), "-t", "0", "--print-ids"],
    { encoding: "utf8", timeout: 30000, stdio: ["ignore", "pipe", "ignore"] });
  const lines = out.trimEnd().split("\n");
  return lines[lines.length - 1].split(" ").filter((s) => s).map(Number);
}

async function greedyCompletion(prompt, maxTokens) {
  return client.completions.create({
    model, prompt, max_tokens: maxTokens, temperature: 0, return_token_ids: true,
  });
}

async function raw(path, body, headers = {}) {
  const r = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}`, ...headers },
    body,
    signal: AbortSignal.timeout(30000),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, json, text };
}

test("models lists the served model", async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [model]);
});

test("greedy completion equals dsv3 generate's ids", async () => {
  const prompt = "Hello, world";
  const want = generateIds(prompt, 8);
  const r = await greedyCompletion(prompt, 8);
  assert.equal(r.object, "text_completion");
  assert.deepEqual(r.choices[0].token_ids, want);
  assert.equal(r.usage.completion_tokens, want.length);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(["length", "stop"].includes(r.choices[0].finish_reason));
});

test("streamed completion equals the non-streamed one", async () => {
  const whole = await greedyCompletion("The quick brown fox", 10);
  const stream = await client.completions.create({
    model, prompt: "The quick brown fox", max_tokens: 10, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", finish = null, usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.deepEqual(usage, whole.usage);
});

test("chat: non-streamed and streamed agree, usage reported", async () => {
  const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi!" }];
  const whole = await client.chat.completions.create({
    model, messages, max_tokens: 8, temperature: 0,
  });
  assert.equal(whole.object, "chat.completion");
  assert.equal(whole.choices[0].message.role, "assistant");
  assert.equal(typeof whole.choices[0].message.content, "string");
  assert.ok(whole.usage.prompt_tokens > 0);
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let content = "", role = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    assert.equal(chunk.object, "chat.completion.chunk");
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) content += c.delta.content;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks >= 2);
  assert.equal(role, "assistant");
  assert.equal(content, whole.choices[0].message.content);
  assert.deepEqual(usage, whole.usage);
});

test("concurrent requests each get what they get alone (greedy)", async () => {
  const prompts = ["one", "two three", "four five six", "seven", "eight nine", "ten"];
  const alone = [];
  for (const p of prompts) alone.push((await greedyCompletion(p, 12)).choices[0].token_ids);
  const together = await Promise.all(prompts.map((p) => greedyCompletion(p, 12)));
  together.forEach((r, i) => assert.deepEqual(r.choices[0].token_ids, alone[i], prompts[i]));
  // Chat streams at the same time too.
  const streams = await Promise.all([1, 2, 3].map(() => client.chat.completions.create({
    model, messages: [{ role: "user", content: "Count" }], max_tokens: 6, temperature: 0,
    stream: true,
  })));
  const texts = await Promise.all(streams.map(async (s) => {
    let t = "";
    for await (const chunk of s) for (const c of chunk.choices) t += c.delta.content ?? "";
    return t;
  }));
  assert.equal(texts[1], texts[0]);
  assert.equal(texts[2], texts[0]);
});

test("n, seed and logprobs", async () => {
  const a = await client.chat.completions.create({
    model, messages: [{ role: "user", content: "Pick" }], n: 2, seed: 7, temperature: 1,
    max_tokens: 5, logprobs: true, top_logprobs: 2,
  });
  const b = await client.chat.completions.create({
    model, messages: [{ role: "user", content: "Pick" }], n: 2, seed: 7, temperature: 1,
    max_tokens: 5, logprobs: true, top_logprobs: 2,
  });
  assert.equal(a.choices.length, 2);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
  const lp = a.choices[0].logprobs.content;
  assert.equal(lp.length, a.usage.completion_tokens / 2);
  for (const e of lp) {
    assert.equal(typeof e.token, "string");
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 2);
    assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob);
  }
  const c = await client.completions.create({
    model, prompt: "abc", max_tokens: 3, temperature: 0, logprobs: 1,
  });
  assert.equal(c.choices[0].logprobs.tokens.length, 3);
  assert.equal(c.choices[0].logprobs.token_logprobs.length, 3);
});

test("a stop string cuts the output before it", async () => {
  const whole = await greedyCompletion("Once upon a time", 16);
  const text = whole.choices[0].text;
  // A stop string from the middle of the greedy output: the answer is what precedes it.
  const chars = [...text];
  assert.ok(chars.length >= 4, `greedy output too short to test stops: ${JSON.stringify(text)}`);
  const stop = chars.slice(2, 4).join("");
  const cut = await client.completions.create({
    model, prompt: "Once upon a time", max_tokens: 16, temperature: 0, stop: [stop],
  });
  assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, "stop");
});

test("a wrong API key is a 401", async () => {
  const bad = new OpenAI({ baseURL: `${url}/v1`, apiKey: "wrong", timeout: 10000, maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e.status === 401 && e.code === "invalid_api_key");
  const r = await raw("/v1/completions", '{"prompt": "x"}', { Authorization: "" });
  assert.equal(r.status, 401);
  assert.equal(r.json.error.type, "authentication_error");
});

test("bad input gets OpenAI-style errors and the server keeps serving", async () => {
  const hi = '"messages": [{"role": "user", "content": "Hi"}]';
  const long = Array(3000).fill("word").join(" ");  // the context is 2048 tokens
  const cases = [
    ["/v1/chat/completions", "{not json", 400, "invalid_json"],
    ["/v1/chat/completions", "[]", 400, "invalid_type"],
    ["/v1/chat/completions", `{${hi}, "temperature": "hot"}`, 400, "invalid_type"],
    ["/v1/chat/completions", `{${hi}, "model": "no-such-model"}`, 404, "model_not_found"],
    ["/v1/chat/completions", `{"messages": [{"role": "user", "content": "${long}"}]}`, 400,
     "context_length_exceeded"],
    ["/v1/chat/completions", `{${hi}, "max_tokens": 1000000000}`, 400,
     "context_length_exceeded"],
    ["/v1/chat/completions", `{${hi}, "n": 0}`, 400, "invalid_value"],
    ["/v1/completions", Buffer.from([0x7b, 0x22, 0x70, 0x72, 0x6f, 0x6d, 0x70, 0x74, 0x22, 0x3a,
                                      0x22, 0xff, 0xfe, 0x22, 0x7d]), 400, "invalid_json"],
    ["/v1/completions", '{"prompt": [1, -5]}', 400, "invalid_value"],
    ["/v1/completions", "{}", 400, "missing_required_parameter"],
    ["/v1/completions", `{"prompt": "${"x".repeat(Number(process.env.DSV3_MAX_BODY) + 10)}"}`,
     413, "body_too_large"],
    ["/v1/nothing", "{}", 404, "not_found"],
  ];
  for (const [path, body, status, code] of cases) {
    const r = await raw(path, body);
    assert.equal(r.status, status, `${path} ${String(body).slice(0, 60)}: ${r.text}`);
    assert.equal(r.json?.error?.code, code, r.text);
    assert.equal(typeof r.json.error.message, "string");
    assert.ok("param" in r.json.error && "type" in r.json.error);
  }
  // Unknown fields are ignored.
  const ok = await raw("/v1/completions", '{"prompt": "x", "max_tokens": 2, "frobnicate": [1]}');
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.usage.completion_tokens <= 2, true);
});

test("health, metrics and the chat page", async () => {
  const h = await fetch(`${url}/health`);
  assert.equal(h.status, 200);
  const m = await (await fetch(`${url}/metrics`)).text();
  for (const name of ["dsv3_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
                      "dsv3_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}",
                      "dsv3_generation_tokens_total", "dsv3_queue_length",
                      "dsv3_running_sequences", "dsv3_cache_tokens",
                      "dsv3_time_to_first_token_seconds_bucket",
                      "dsv3_inter_token_latency_seconds_count"])
    assert.ok(m.includes(name), `metrics lack ${name}`);
  const page = await (await fetch(`${url}/`)).text();
  assert.ok(page.startsWith("<!doctype html>"));
  assert.ok(page.includes("/v1/chat/completions"));
  assert.ok(!/<(script|link|img)[^>]+(src|href)=/.test(page), "the page loads no external assets");
});

test("R1 template: reasoning goes to reasoning_content", { skip: !process.env.DSV3_R1_URL },
  async () => {
    const r1 = new OpenAI({ baseURL: `${process.env.DSV3_R1_URL}/v1`, apiKey: "none",
                            timeout: 30000, maxRetries: 0 });
    const whole = await r1.chat.completions.create({
      model, messages: [{ role: "user", content: "Hi" }], max_tokens: 8, temperature: 0,
    });
    const msg = whole.choices[0].message;
    assert.equal(typeof msg.reasoning_content, "string");
    assert.equal(typeof msg.content, "string");
    const stream = await r1.chat.completions.create({
      model, messages: [{ role: "user", content: "Hi" }], max_tokens: 8, temperature: 0,
      stream: true,
    });
    let reasoning = "", content = "";
    for await (const chunk of stream)
      for (const c of chunk.choices) {
        reasoning += c.delta.reasoning_content ?? "";
        content += c.delta.content ?? "";
      }
    assert.equal(reasoning, msg.reasoning_content);
    assert.equal(content, msg.content);
    // The random tiny model's greedy output rarely closes the block, but some output exists.
    assert.ok(reasoning.length + content.length > 0);
  });

async function metrics() {
  const text = await (await fetch(`${url}/metrics`)).text();
  return (name) => {
    const m = text.match(new RegExp(`^${name} (\\S+)$`, "m"));
    return m ? Number(m[1]) : NaN;
  };
}

test("a non-streaming client that disconnects frees its sequence", async () => {
  // Long, since the server notices the client only at its next keep-alive write or two.
  const body = { model, prompt: "Go on", max_tokens: 1900, temperature: 0 };
  const full = await client.completions.create(body);
  const fullLength = full.usage.completion_tokens;
  assert.ok(fullLength > 200, `the reference run is too short to test with (${fullLength})`);
  const before = await metrics();
  const ac = new AbortController();
  const pending = fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
    signal: ac.signal,
  }).then((r) => r.text());
  // Give up once it is generating, as a client with a short timeout would.
  let m = await metrics();
  for (let i = 0; i < 200 && m("dsv3_running_sequences") === 0; ++i) {
    await new Promise((res) => setTimeout(res, 10));
    m = await metrics();
  }
  assert.equal(m("dsv3_running_sequences"), 1);
  ac.abort();
  await assert.rejects(pending);
  let after = await metrics();
  for (let i = 0; i < 200 && after("dsv3_running_sequences") !== 0; ++i) {
    await new Promise((res) => setTimeout(res, 50));
    after = await metrics();
  }
  assert.equal(after("dsv3_running_sequences"), 0);
  const generated = after("dsv3_generation_tokens_total") - before("dsv3_generation_tokens_total");
  assert.ok(generated < fullLength, `generated ${generated} of ${fullLength}: not cancelled`);
});

test("a slow non-streaming answer is still one JSON document", async () => {
  // Long enough for the server's keep-alive spaces to precede the JSON.
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ model, prompt: "Go on", max_tokens: 600, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /application\/json/);
  const j = JSON.parse(await r.text());
  assert.ok(j.usage.completion_tokens > 0);
});

test("prefix cache: a repeated long prompt reuses blocks and gives the same tokens", async () => {
  const prompt = "The quick brown fox jumps over the lazy dog. ".repeat(30);
  const body = { model, prompt, max_tokens: 8, temperature: 0, return_token_ids: true };
  const before = await metrics();
  const a = await client.completions.create(body);
  const mid = await metrics();
  const b = await client.completions.create(body);
  // The answer goes out when its last token does; the scheduler retires the sequence (and
  // updates the block counts) at the end of that step, so a slow build (ASan) can read the
  // metrics in between: wait for the blocks to come back.
  let after = await metrics();
  for (let i = 0; i < 200 && after("dsv3_cache_blocks_used") !== 0; ++i) {
    await new Promise((res) => setTimeout(res, 50));
    after = await metrics();
  }
  assert.deepEqual(b.choices[0].token_ids, a.choices[0].token_ids);
  assert.equal(mid("dsv3_prefix_cache_hit_tokens_total"), before("dsv3_prefix_cache_hit_tokens_total"));
  const hit = after("dsv3_prefix_cache_hit_tokens_total") - mid("dsv3_prefix_cache_hit_tokens_total");
  assert.ok(hit >= 64 && hit % 64 === 0 && hit < a.usage.prompt_tokens,
            `hit ${hit} of ${a.usage.prompt_tokens} prompt tokens`);
  assert.ok(after("dsv3_cache_blocks_total") > 0);
  assert.equal(after("dsv3_cache_blocks_used"), 0);
});

test("a client that disconnects mid-stream frees its sequence", async () => {
  const body = { model, prompt: "Go on", max_tokens: 600, temperature: 0 };
  // Uncancelled, this greedy request runs long (it is the same tokens every time).
  const full = await client.completions.create(body);
  const fullLength = full.usage.completion_tokens;
  assert.ok(fullLength > 200, `the reference run is too short to test with (${fullLength})`);
  const before = await metrics();
  const ac = new AbortController();
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify({ ...body, stream: true }),
    signal: ac.signal,
  });
  assert.equal(r.status, 200);
  await r.body.getReader().read();  // the first chunk
  ac.abort();
  let after = await metrics();
  for (let i = 0; i < 200 && after("dsv3_running_sequences") !== 0; ++i) {
    await new Promise((res) => setTimeout(res, 50));
    after = await metrics();
  }
  assert.equal(after("dsv3_running_sequences"), 0);
  const generated = after("dsv3_generation_tokens_total") - before("dsv3_generation_tokens_total");
  assert.ok(generated < fullLength, `generated ${generated} of ${fullLength}: not cancelled`);
  // And the server goes on serving.
  const again = await greedyCompletion("one", 4);
  assert.equal(again.choices[0].finish_reason.length > 0, true);
});
