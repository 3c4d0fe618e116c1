// The PouchDB workload of bench/couchdb.py, run the same against DataGate and pouchdb-server.
// Usage: node workload.js <part> <json options>; prints one JSON line with the figures.
//   push     {url, token, docs, batchSize}: a PouchDB (memory) with `docs` documents replicates
//            to the server; docs/s over the replication.
//   catchup  {url, token, docs, batchSize}: the server is seeded with `docs` documents over
//            _bulk_docs (not timed); a fresh PouchDB replicates them all; seconds.
//   live     {url, token, replicas, rate, seconds}: `replicas` PouchDBs replicate live from the
//            server; one writer PUTs `rate` documents a second for `seconds`; latency of each
//            document at each replica = arrival time - the writer's time just before the PUT.
'use strict';

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));

const FILLER = 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor '.repeat(2);

function makeDoc(prefix, i) {
  // About 200 bytes of JSON, like bench/harness.py's documents.
  return { _id: `${prefix}-${String(i).padStart(7, '0')}`, title: `note ${i}`, n: i, done: i % 3 === 0, text: FILLER.slice(0, 90 + (i % 20)) };
}

function headers(token) {
  const h = { 'Content-Type': 'application/json' };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function remote(url, token) {
  return new PouchDB(url, {
    fetch(target, opts) {
      if (token) opts.headers.set('Authorization', `Bearer ${token}`);
      return PouchDB.fetch(target, opts);
    },
  });
}

async function ensureDb(url, token) {
  const res = await fetch(url, { method: 'PUT', headers: headers(token) });
  if (![201, 412].includes(res.status)) throw new Error(`PUT ${url}: ${res.status} ${await res.text()}`);
}

function percentile(sorted, fraction) {
  if (!sorted.length) return null;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1));
  return sorted[index];
}

async function push({ url, token, docs, batchSize }) {
  const local = new PouchDB(`push-${Date.now()}`, { adapter: 'memory' });
  for (let i = 0; i < docs; i += 5000) {
    const chunk = [];
    for (let j = i; j < Math.min(docs, i + 5000); j++) chunk.push(makeDoc('push', j));
    await local.bulkDocs(chunk);
  }
  await ensureDb(url, token);
  const started = process.hrtime.bigint();
  const result = await PouchDB.replicate(local, remote(url, token), { batch_size: batchSize });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { docs: result.docs_written, failures: result.doc_write_failures, seconds, docs_per_s: result.docs_written / seconds };
}

async function catchup({ url, token, docs, batchSize }) {
  await ensureDb(url, token);
  const seedStarted = process.hrtime.bigint();
  for (let i = 0; i < docs; i += 1000) {
    const chunk = [];
    for (let j = i; j < Math.min(docs, i + 1000); j++) chunk.push(makeDoc('cu', j));
    const res = await fetch(`${url}/_bulk_docs`, { method: 'POST', headers: headers(token), body: JSON.stringify({ docs: chunk }) });
    if (res.status !== 201) throw new Error(`seed: ${res.status} ${await res.text()}`);
  }
  const seedSeconds = Number(process.hrtime.bigint() - seedStarted) / 1e9;
  const local = new PouchDB(`catchup-${Date.now()}`, { adapter: 'memory' });
  const started = process.hrtime.bigint();
  const result = await PouchDB.replicate(remote(url, token), local, { batch_size: batchSize });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const info = await local.info();
  return { docs: info.doc_count, docs_written: result.docs_written, seconds, docs_per_s: info.doc_count / seconds, seed_seconds: seedSeconds };
}

async function live({ url, token, replicas, rate, seconds }) {
  await ensureDb(url, token);
  const total = Math.round(rate * seconds);
  const latencies = [];
  const received = new Array(replicas).fill(0);
  const feeds = [];
  let ready = 0;
  for (let r = 0; r < replicas; r++) {
    const local = new PouchDB(`live-${r}-${Date.now()}`, { adapter: 'memory' });
    const feed = PouchDB.replicate(remote(url, token), local, { live: true, retry: true });
    let paused = false;
    feed.on('paused', () => { if (!paused) { paused = true; ready++; } });
    feed.on('change', (info) => {
      const now = Date.now();
      for (const doc of info.docs) {
        if (typeof doc.t === 'number') { latencies.push(now - doc.t); received[r]++; }
      }
    });
    feeds.push(feed);
  }
  const readyDeadline = Date.now() + 60000;
  while (ready < replicas && Date.now() < readyDeadline) await new Promise((ok) => setTimeout(ok, 50));
  const interval = 1000 / rate;
  const started = Date.now();
  let writeErrors = 0;
  const writes = [];
  for (let i = 0; i < total; i++) {
    const due = started + i * interval;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((ok) => setTimeout(ok, wait));
    const doc = { t: Date.now(), n: i, text: FILLER.slice(0, 120) };
    writes.push(fetch(`${url}/w-${String(i).padStart(6, '0')}`, { method: 'PUT', headers: headers(token), body: JSON.stringify(doc) })
      .then((res) => { if (res.status !== 201) writeErrors++; return res.text(); })
      .catch(() => { writeErrors++; }));
  }
  await Promise.all(writes);
  const writeSeconds = (Date.now() - started) / 1000;
  const deadline = Date.now() + 120000;
  while (received.some((n) => n < total) && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 100));
  const lastArrival = (Date.now() - started) / 1000;
  for (const feed of feeds) feed.cancel();
  latencies.sort((a, b) => a - b);
  const delivered = latencies.length;
  return {
    replicas, rate, writes: total, write_errors: writeErrors, ready, write_seconds: writeSeconds,
    delivered, expected: total * replicas, complete: received.every((n) => n >= total),
    p50_ms: percentile(latencies, 0.5), p99_ms: percentile(latencies, 0.99), max_ms: latencies[latencies.length - 1] || null,
    seconds_to_last: lastArrival,
  };
}

const parts = { push, catchup, live };

(async () => {
  const [part, raw] = process.argv.slice(2);
  const result = await parts[part](JSON.parse(raw || '{}'));
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
})().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && (err.stack || err)) }) + '\n');
  process.exit(1);
});
