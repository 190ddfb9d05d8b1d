// The skeleton of every hyperty worker (a classic worker script; the hyperty's own file is
// appended after it once its sha256 matched the catalogue). It takes the worker's one channel
// to the core, removes the worker's own network and storage (the protocol stub is the only way
// out, and every message passes the core's policy enforcement point), and turns core messages
// into calls of the hyperty's methods.
'use strict';
(() => {
  const post = self.postMessage.bind(self);
  for (const name of ['fetch', 'XMLHttpRequest', 'WebSocket', 'EventSource', 'importScripts',
    'indexedDB', 'caches', 'WebTransport', 'BroadcastChannel']) {
    for (let o = self; o; o = Object.getPrototypeOf(o)) {
      try { delete o[name]; } catch { /* not configurable: shadowed below */ }
    }
    try { Object.defineProperty(self, name, { value: undefined }); } catch { /* already gone */ }
  }
  let methods = null;
  let nextId = 1;
  const pending = new Map();
  const handlers = [];
  const context = {
    /** This hyperty's address at the Message Node; set before the first call. */
    address: null,
    /** The runtime user, e.g. `alice`. */
    identity: null,
    /**
     * Sends an envelope through the core's bus; resolves with the response envelope (rejects
     * with `{code, message}`).
     */
    request(type, to, body) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        post({ op: 'send', id, envelope: { type, to, body } });
      });
    },
    /** Calls `method` of the hyperty at `to` (an `execute`); resolves with its value. */
    async call(to, method, params) {
      const r = await context.request('execute', to, { method, params });
      return r.body?.value;
    },
    /** Answers an inbound request. */
    respond(envelope, code, value) {
      post({ op: 'respond', envelope: { id: envelope.id, type: 'response', to: envelope.from,
        body: code < 300 ? { code, value } : { code, description: String(value) } } });
    },
    /** Emits an event to the app's listeners of this hyperty. */
    emit(event, data) { post({ op: 'event', event, data }); },
    /** Adds a handler of inbound messages that are not `execute` calls. */
    onMessage(handler) { handlers.push(handler); },
  };
  self.defineHyperty = (factory) => { methods = factory(context); };
  const fail = (e) => ({ code: e?.code ?? 500, message: String(e?.message ?? e) });
  self.onmessage = async (ev) => {
    const m = ev.data;
    if (m.op === 'ping') return post({ op: 'pong', n: m.n });
    if (m.op === 'init') { context.address = m.address; context.identity = m.identity; return; }
    if (m.op === 'reply') {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      return m.error ? p.reject(m.error) : p.resolve(m.envelope);
    }
    if (m.op === 'invoke') {
      const fn = methods && Object.hasOwn(methods, m.method) ? methods[m.method] : null;
      if (typeof fn !== 'function') {
        return post({ op: 'result', id: m.id, error: { code: 404, message: `no method ${m.method}` } });
      }
      try {
        post({ op: 'result', id: m.id, value: await fn(...(m.args ?? [])) });
      } catch (e) {
        post({ op: 'result', id: m.id, error: fail(e) });
      }
      return;
    }
    if (m.op === 'deliver') {
      const e = m.envelope;
      const handler = e.type === 'execute' && methods?.onCall;
      if (handler) {
        try {
          context.respond(e, 200, await handler(e.body?.method, e.body?.params, e.from));
        } catch (err) {
          context.respond(e, err?.code ?? 500, err?.message ?? String(err));
        }
      }
      for (const h of handlers) h(e);
    }
  };
})();
