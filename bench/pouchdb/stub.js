// The client floor of bench/couchdb.py: a CouchDB-protocol stub that does no storage work.
// Usage: node stub.js <port>
//
// It answers the requests of bench/pouchdb/workload.js the way a server would, from answers
// prepared before they are asked: every document that enters with new_edits=true (the
// catch-up's untimed seed, the live writer's PUTs) gets its `_changes` row and its `_bulk_get`
// entry serialised once on arrival; a `_changes` page is those rows joined, a `_bulk_get`
// answer is those entries joined. A push's `_revs_diff` answers "all missing" and its
// `_bulk_docs` (new_edits=false) is read and dropped. Live longpoll `_changes` wait on an
// in-memory list of waiters, woken by the next write. So the time PouchDB takes against this
// stub is the time the client process itself needs on this machine (its own work, its HTTP
// requests and the stub's HTTP handling in Node): no server can be faster than that floor.
'use strict';

const http = require('http');
const crypto = require('crypto');

const port = Number(process.argv[2] || 5999);
const WELCOME = JSON.stringify({ couchdb: 'Welcome', version: '3.3.3', uuid: 'c0ffee00c0ffee00c0ffee00c0ffee00', vendor: { name: 'client floor stub' } });

const dbs = new Map();

function database(name) {
  let db = dbs.get(name);
  if (!db) {
    db = { rows: [], entries: new Map(), locals: new Map(), waiters: new Set(), docCount: 0 };
    dbs.set(name, db);
  }
  return db;
}

function send(res, status, text) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req) {
  return new Promise((ok, fail) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => ok(Buffer.concat(chunks).toString('utf8')));
    req.on('error', fail);
  });
}

// A stored document: its _changes row and its _bulk_get entry, as JSON text.
function store(db, doc) {
  const id = doc._id;
  const hash = crypto.createHash('md5').update(id).digest('hex');
  const rev = `1-${hash}`;
  const seq = db.rows.length + 1;
  const body = { ...doc, _id: id, _rev: rev, _revisions: { start: 1, ids: [hash] } };
  db.rows.push(`{"seq":${seq},"id":${JSON.stringify(id)},"changes":[{"rev":"${rev}"}]}`);
  db.entries.set(id, `{"id":${JSON.stringify(id)},"docs":[{"ok":${JSON.stringify(body)}}]}`);
  db.docCount++;
  return rev;
}

function changesPage(db, since, limit) {
  const rows = db.rows.slice(since, limit ? since + limit : undefined);
  const last = since + rows.length;
  return `{"results":[${rows.join(',')}],"last_seq":${last},"pending":${db.rows.length - last}}`;
}

function wake(db) {
  const waiters = [...db.waiters];
  db.waiters.clear();
  for (const waiter of waiters) waiter();
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://stub');
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const q = url.searchParams;
  if (!parts.length) return send(res, 200, WELCOME);
  const db = database(parts[0]);
  if (parts.length === 1) {
    if (req.method === 'PUT') return send(res, 201, '{"ok":true}');
    return send(res, 200, `{"db_name":"${parts[0]}","doc_count":${db.docCount},"doc_del_count":0,"update_seq":${db.rows.length},"instance_start_time":"0"}`);
  }
  const action = parts[1];
  if (action === '_local') {
    const key = parts.slice(2).join('/');
    if (req.method === 'PUT') {
      const doc = JSON.parse(await readBody(req));
      const rev = `0-${(db.locals.get(key)?.gen || 0) + 1}`;
      db.locals.set(key, { gen: Number(rev.slice(2)), text: JSON.stringify({ ...doc, _id: `_local/${key}`, _rev: rev }) });
      return send(res, 201, `{"ok":true,"id":"_local/${key}","rev":"${rev}"}`);
    }
    const held = db.locals.get(key);
    return held ? send(res, 200, held.text) : send(res, 404, '{"error":"not_found","reason":"missing"}');
  }
  if (action === '_changes') {
    const since = Number(q.get('since') || 0);
    const limit = q.has('limit') ? Number(q.get('limit')) : 0;
    if (q.get('feed') !== 'longpoll' || db.rows.length > since) return send(res, 200, changesPage(db, since, limit));
    const wait = Math.min(Number(q.get('timeout') || 10000), Number(q.get('heartbeat') || 10000), 10000);
    let done = false;
    const answer = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      db.waiters.delete(answer);
      send(res, 200, changesPage(db, since, limit));
    };
    const timer = setTimeout(answer, wait);
    db.waiters.add(answer);
    req.on('close', () => { db.waiters.delete(answer); clearTimeout(timer); done = true; });
    return undefined;
  }
  if (action === '_bulk_get') {
    const asked = JSON.parse(await readBody(req)).docs;
    const entries = asked.map(({ id }) => db.entries.get(id) || `{"id":${JSON.stringify(id)},"docs":[{"error":{"id":${JSON.stringify(id)},"error":"not_found","reason":"missing"}}]}`);
    return send(res, 200, `{"results":[${entries.join(',')}]}`);
  }
  if (action === '_revs_diff') {
    const asked = JSON.parse(await readBody(req));
    const answer = {};
    for (const id of Object.keys(asked)) answer[id] = { missing: asked[id] };
    return send(res, 200, JSON.stringify(answer));
  }
  if (action === '_bulk_docs') {
    const body = JSON.parse(await readBody(req));
    if (body.new_edits === false) return send(res, 201, '[]');
    const results = body.docs.map((doc) => `{"ok":true,"id":${JSON.stringify(doc._id)},"rev":"${store(db, doc)}"}`);
    wake(db);
    return send(res, 201, `[${results.join(',')}]`);
  }
  if (action === '_ensure_full_commit') return send(res, 201, '{"ok":true,"instance_start_time":"0"}');
  if (!action.startsWith('_') && req.method === 'PUT') {
    const doc = JSON.parse(await readBody(req));
    const id = parts.slice(1).join('/');
    const rev = store(db, { ...doc, _id: id });
    wake(db);
    return send(res, 201, `{"ok":true,"id":${JSON.stringify(id)},"rev":"${rev}"}`);
  }
  process.stderr.write(`stub: not served: ${req.method} ${req.url}\n`);
  return send(res, 404, '{"error":"not_found","reason":"not served by the stub"}');
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, JSON.stringify({ error: 'stub', reason: String(err) })));
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1');
