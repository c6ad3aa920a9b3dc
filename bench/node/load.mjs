// The token benchmark's load driver, the same for both servers: POSTs to a token endpoint
// with a fixed number of requests in flight (undici, keep-alive where the server allows it)
// and reports throughput, latency percentiles and errors as one JSON object on stdout.
//
//   node load.mjs <job.json>
//
// job: {"url", "authorization" (header value), "concurrency", "seconds", "mode", ...}
//   mode "code":    "codes": [{"code", "code_verifier"}], "redirect_uri"; each code is sent once.
//                   Stops when the time is up or the codes run out ("exhausted": true).
//   mode "refresh": "refresh_tokens": [...]; `concurrency` chains, each sending the refresh
//                   token the previous response of its chain returned (rotation).
//   "collect": true  -> the refresh tokens of the successful responses, in "refresh_tokens".
// A response counts as ok when it is 200 with an access token, a refresh token and an ID token.
import { readFileSync } from 'node:fs';

import { Pool } from 'undici';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const url = new URL(job.url);
const pool = new Pool(url.origin, { connections: job.concurrency, pipelining: 1, keepAliveTimeout: 30_000 });
const headers = {
  authorization: job.authorization,
  'content-type': 'application/x-www-form-urlencoded',
  accept: 'application/json',
};

const latencies = [];
const statuses = {};
const errorSamples = [];
const collected = [];
let ok = 0;
let errors = 0;
let exhausted = false;
let next = 0;

function nextCodeBody() {
  if (next >= job.codes.length) {
    exhausted = true;
    return undefined;
  }
  const { code, code_verifier: verifier } = job.codes[next];
  next += 1;
  return new URLSearchParams({
    grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: job.redirect_uri,
  }).toString();
}

async function post(body) {
  const started = process.hrtime.bigint();
  try {
    const { statusCode, body: stream } = await pool.request({ path: url.pathname, method: 'POST', headers, body });
    const text = await stream.text();
    const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
    statuses[statusCode] = (statuses[statusCode] || 0) + 1;
    let payload;
    try {
      payload = JSON.parse(text);
    } catch {
      payload = {};
    }
    if (statusCode === 200 && payload.access_token && payload.refresh_token && payload.id_token) {
      ok += 1;
      latencies.push(elapsed);
      return payload;
    }
    errors += 1;
    if (errorSamples.length < 5) errorSamples.push(`${statusCode} ${text.slice(0, 200)}`);
  } catch (error) {
    errors += 1;
    statuses.transport = (statuses.transport || 0) + 1;
    if (errorSamples.length < 5) errorSamples.push(String(error));
  }
  return undefined;
}

const deadline = performance.now() + job.seconds * 1000;
const started = performance.now();

async function codeWorker() {
  while (performance.now() < deadline) {
    const body = nextCodeBody();
    if (body === undefined) return;
    const payload = await post(body);
    if (payload && job.collect) collected.push(payload.refresh_token);
  }
}

async function refreshChain(token) {
  let current = token;
  while (performance.now() < deadline && current) {
    const payload = await post(new URLSearchParams({ grant_type: 'refresh_token', refresh_token: current }).toString());
    current = payload?.refresh_token;
  }
  if (current && job.collect) collected.push(current);
}

const workers = job.mode === 'code'
  ? Array.from({ length: job.concurrency }, () => codeWorker())
  : job.refresh_tokens.slice(0, job.concurrency).map((token) => refreshChain(token));
await Promise.all(workers);
const elapsed = (performance.now() - started) / 1000;
await pool.close();

latencies.sort((a, b) => a - b);
const percentile = (p) => (latencies.length
  ? Math.round(latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] * 100) / 100
  : null);
const result = {
  requests: ok + errors,
  ok,
  errors,
  statuses,
  seconds: Math.round(elapsed * 1000) / 1000,
  ops_per_second: Math.round((ok / elapsed) * 10) / 10,
  latency_ms: {
    p50: percentile(0.5), p95: percentile(0.95), p99: percentile(0.99), max: percentile(1),
  },
  concurrency: workers.length,
  exhausted,
};
if (errorSamples.length) result.error_samples = errorSamples;
if (job.collect) result.refresh_tokens = collected;
process.stdout.write(`${JSON.stringify(result)}\n`);
