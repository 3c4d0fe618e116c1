// The real PouchDB 9 client, driven one JSON command a line on stdin (tests/support/pouchdb_driver.py).
// Answers one JSON line per command on stdout: {"id": n, "ok": result} or {"id": n, "error": {...}}.
'use strict';

const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));
const readline = require('readline');

const dbs = new Map();
const tokens = new Map();
const syncs = new Map();

function remote(name, url, token) {
  tokens.set(name, token);
  return new PouchDB(url, {
    fetch(target, opts) {
      opts.headers.set('Authorization', `Bearer ${tokens.get(name)}`);
      return PouchDB.fetch(target, opts);
    },
  });
}

function summary(result) {
  if (!result) return result;
  return {
    ok: result.ok,
    status: result.status,
    docs_read: result.docs_read,
    docs_written: result.docs_written,
    doc_write_failures: result.doc_write_failures,
    errors: (result.errors || []).map((e) => ({ name: e.name, reason: e.reason || e.message })),
    last_seq: result.last_seq,
  };
}

function errorOf(err) {
  return { name: err && err.name, status: err && err.status, reason: err && (err.reason || err.message) };
}

function track(id, emitter) {
  const record = { events: {}, changes: 0, errors: [], denied: [], done: null };
  const bump = (name) => { record.events[name] = (record.events[name] || 0) + 1; };
  for (const name of ['active', 'paused', 'complete']) emitter.on(name, () => bump(name));
  emitter.on('change', (info) => {
    bump('change');
    const change = info.change || info;
    record.changes += (change.docs || []).length;
  });
  emitter.on('denied', (err) => { bump('denied'); record.denied.push(errorOf(err)); });
  emitter.on('error', (err) => { bump('error'); record.errors.push(errorOf(err)); });
  emitter.then((result) => { record.done = summary(result.push ? result.push : result) || true; },
    (err) => { record.done = { error: errorOf(err) }; });
  syncs.set(id, { emitter, record });
  return record;
}

const ops = {
  async local({ name }) { dbs.set(name, new PouchDB(name, { adapter: 'memory' })); return true; },
  async remote({ name, url, token }) { dbs.set(name, remote(name, url, token)); return true; },
  async token({ name, token }) { tokens.set(name, token); return true; },
  async put({ db, doc }) { return dbs.get(db).put(doc); },
  async bulk({ db, docs }) { return dbs.get(db).bulkDocs(docs); },
  async get({ db, id, opts }) { return dbs.get(db).get(id, opts || {}); },
  async remove({ db, id }) { const doc = await dbs.get(db).get(id); return dbs.get(db).remove(doc); },
  async all({ db }) {
    const res = await dbs.get(db).allDocs({ include_docs: true, conflicts: true });
    return res.rows.map((r) => ({ id: r.id, rev: r.value.rev, doc: r.doc, conflicts: r.doc._conflicts || [] }));
  },
  async info({ db }) { return dbs.get(db).info(); },
  async replicate({ from, to, opts }) {
    return summary(await PouchDB.replicate(dbs.get(from), dbs.get(to), opts || {}));
  },
  async replicate_cancel_after({ from, to, opts, changes }) {
    // A pull interrupted after `changes` documents arrived: cancel it there.
    const rep = PouchDB.replicate(dbs.get(from), dbs.get(to), opts || {});
    let seen = 0;
    rep.on('change', (info) => {
      seen += info.docs.length;
      if (seen >= changes) rep.cancel();
    });
    const result = await rep;
    return { seen, result: summary(result) };
  },
  async sync_start({ id, a, b, opts }) {
    track(id, dbs.get(a).sync(dbs.get(b), Object.assign({ live: true, retry: false }, opts || {})));
    return true;
  },
  async live_start({ id, from, to, opts }) {
    track(id, PouchDB.replicate(dbs.get(from), dbs.get(to), Object.assign({ live: true }, opts || {})));
    return true;
  },
  async record({ id }) { return syncs.get(id).record; },
  async stop({ id }) { syncs.get(id).emitter.cancel(); return true; },
};

const input = readline.createInterface({ input: process.stdin });
input.on('line', async (line) => {
  const command = JSON.parse(line);
  let answer;
  try {
    answer = { id: command.id, ok: await ops[command.op](command) };
  } catch (err) {
    answer = { id: command.id, error: errorOf(err) };
  }
  process.stdout.write(JSON.stringify(answer === undefined ? null : answer) + '\n');
});
input.on('close', () => process.exit(0));
