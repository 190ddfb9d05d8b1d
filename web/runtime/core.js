// @ts-check
/**
 * The runtime core, the main script of the runtime frame (docs/runtime.md):
 * - the app channel: `postMessage` only with the embedding app (`location.ancestorOrigins[0]`),
 *   every message checked for that origin and for coming from the parent window;
 * - the runtime user agent: the login form of this frame, the token kept on this origin only;
 * - the message bus with its policy enforcement point: every envelope a hyperty sends or
 *   receives is decided by the PDP (policy.js), counted, and logged with its rule when denied;
 * - the local registry of instances and their Message Node addresses;
 * - the protocol stub worker, the one WebSocket to `/msg`.
 */
import { PolicyDecisionPoint } from './policy.js';
import { Instance, verified } from './hyperties.js';

const POLICY_POLL_MS = 1000;
const MAX_DENIALS = 100;

const appOrigin = location.ancestorOrigins?.[0] ?? '';
const pdp = new PolicyDecisionPoint();
const counters = { allowed: 0, denied: 0, dropped: 0 };
/** @type {Array<{hyperty: string, direction: string, peer: string, type: string, rule: string}>} */
const denials = [];
/** @type {Map<string, Instance>} by instance id */
const instances = new Map();
/** @type {Map<string, Instance>} by Message Node address */
const byAddress = new Map();
/** Calls from the core itself to the node (registrations), by envelope id. */
const nodeCalls = new Map();
/** Hyperty requests waiting for a response: envelope id → {instance, reply id}. */
const hypertyCalls = new Map();
let nextEnvelope = 1;
let identity = '';
/** @type {any} */
let session = null;
const config = await (await fetch('config.json')).json();
const catalogue = await (await fetch('catalogue.json')).json();
for (const [name, entry] of Object.entries(catalogue.hyperties)) pdp.manifests.set(name, entry.manifest);
const stub = new Worker('protocol-stub.js', { type: 'module', name: 'protocol-stub' });
/** @type {(s: any) => void} */
let connected = () => {};

/** @param {any} message */
function toApp(message) {
  window.parent.postMessage(message, appOrigin);
}

/** @param {string} hyperty @param {'send' | 'receive'} direction @param {string} peer @param {string} type */
function enforce(hyperty, direction, peer, type) {
  const decision = pdp.decide(hyperty, direction, peer, type);
  if (decision.allow) counters.allowed += 1;
  else {
    counters.denied += 1;
    denials.push({ hyperty, direction, peer, type, rule: decision.rule });
    if (denials.length > MAX_DENIALS) denials.shift();
  }
  return decision;
}

async function reloadPolicy() {
  try {
    const policy = await (await fetch('policy.json', { cache: 'no-store' })).json();
    if (policy.version !== pdp.version) pdp.load(policy);
  } catch { /* keep the last policy */ }
}
await reloadPolicy();
setInterval(reloadPolicy, POLICY_POLL_MS);

/** Sends an envelope of the core to the node and resolves with the response. */
function nodeRequest(type, to, body) {
  const id = `core-${nextEnvelope++}`;
  return new Promise((resolve, reject) => {
    nodeCalls.set(id, { resolve, reject });
    stub.postMessage({ op: 'send', envelope: { id, type, from: session.runtime, to, body } });
  });
}

stub.onmessage = (ev) => {
  const m = ev.data;
  if (m.op === 'welcome') { session = m.session; connected(session); return; }
  if (m.op !== 'message') return;
  const e = m.envelope;
  const core = e.type === 'response' && nodeCalls.get(e.id);
  if (core) {
    nodeCalls.delete(e.id);
    (e.body?.code === 200 ? core.resolve : core.reject)(e);
    return;
  }
  const waiting = e.type === 'response' && hypertyCalls.get(JSON.stringify(e.id));
  if (waiting) {
    hypertyCalls.delete(JSON.stringify(e.id));
    waiting.instance.post({ op: 'reply', id: waiting.reply, envelope: e });
    return;
  }
  const instance = byAddress.get(e.to);
  if (!instance) return;
  const decision = enforce(instance.name, 'receive', e.from, e.type);
  if (decision.allow) instance.post({ op: 'deliver', envelope: e });
  else if (e.type !== 'response') {
    stub.postMessage({ op: 'send', envelope: { id: e.id, type: 'response', from: e.to, to: e.from,
      body: { code: 403, description: `refused by ${decision.rule}` } } });
  }
};

/** What a hyperty worker sends: requests through the PEP, events to the app. */
function fromHyperty(/** @type {Instance} */ instance, /** @type {any} */ m) {
  if (m.op === 'event') {
    toApp({ rethink: 'event', instance: instance.id, event: m.event, data: m.data });
    return;
  }
  if (m.op !== 'send' && m.op !== 'respond') return;
  const e = m.envelope;
  const decision = enforce(instance.name, 'send', String(e.to), String(e.type));
  if (!decision.allow) {
    if (m.op === 'send') {
      instance.post({ op: 'reply', id: m.id, error: { code: 403, message: `refused by ${decision.rule}: ${e.type} to ${e.to}` } });
    }
    return;
  }
  const id = m.op === 'send' ? `h-${nextEnvelope++}` : e.id;
  if (m.op === 'send') hypertyCalls.set(JSON.stringify(id), { instance, reply: m.id });
  // `from` is always the instance's own address: a hyperty cannot speak for another.
  stub.postMessage({ op: 'send', envelope: { id, type: e.type, from: instance.address, to: e.to, body: e.body } });
}

/** Starts hyperty `name` from the catalogue and registers it at the node. @param {string} name */
async function startHyperty(name) {
  const entry = catalogue.hyperties[name];
  if (!entry) throw { code: 404, message: `no hyperty ${name} in the catalogue` };
  if (!session) throw { code: 401, message: 'log in first' };
  const skeleton = await verified(catalogue.skeleton.file, catalogue.skeleton.sha256);
  const source = await verified(entry.file, entry.sha256);
  const instance = new Instance(crypto.randomUUID(), name, `${skeleton}\n${source}`, fromHyperty);
  const registered = await nodeRequest('create', `domain://registry.${session.domain}`, {
    resource: 'hyperty', descriptor: entry.descriptor ?? { name },
  });
  instance.init(registered.body.value.address, identity);
  instances.set(instance.id, instance);
  byAddress.set(instance.address, instance);
  return { instance: instance.id, address: instance.address };
}

/** Shows the login form, logs in at auth when it is submitted, connects the stub. */
function login() {
  const form = /** @type {HTMLFormElement} */ (document.getElementById('login'));
  form.hidden = false;
  toApp({ rethink: 'show', visible: true });
  return new Promise((resolve) => {
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const username = /** @type {HTMLInputElement} */ (document.getElementById('username')).value;
      const password = /** @type {HTMLInputElement} */ (document.getElementById('password'));
      const response = await fetch(`${config.services}/auth/login`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username, password: password.value }),
      });
      password.value = '';
      const body = await response.json().catch(() => ({}));
      const status = /** @type {HTMLElement} */ (document.getElementById('status'));
      if (!response.ok) { status.textContent = body?.error?.message ?? 'login failed'; return; }
      sessionStorage.setItem('rethink.token', body.token);
      identity = username;
      connected = (s) => {
        form.hidden = true;
        toApp({ rethink: 'show', visible: false });
        resolve({ identity, user: s.user });
      };
      stub.postMessage({ op: 'connect', url: config.services.replace(/^http/, 'ws'), token: body.token });
    };
  });
}

const operations = {
  login,
  hyperty: startHyperty,
  /** @param {string} id @param {string} method @param {any[]} args */
  invoke(id, method, args) {
    const instance = instances.get(id);
    if (!instance) throw { code: 404, message: `no instance ${id}` };
    return instance.invoke(method, args);
  },
  stats() {
    const restarts = Object.fromEntries([...instances.values()].map((i) => [i.name, i.restarts]));
    return { ...counters, denials: [...denials], policyVersion: pdp.version, restarts };
  },
};

window.addEventListener('message', async (ev) => {
  if (ev.origin !== appOrigin || ev.source !== window.parent || ev.data?.rethink !== 'call') {
    counters.dropped += 1;
    return;
  }
  const { id, op, args } = ev.data;
  try {
    const fn = Object.hasOwn(operations, op) ? operations[op] : null;
    if (!fn) throw { code: 400, message: `no operation ${op}` };
    toApp({ rethink: 'reply', id, value: await fn(...(args ?? [])) });
  } catch (e) {
    toApp({ rethink: 'reply', id, error: { code: e?.code ?? 500, message: String(e?.message ?? e) } });
  }
});
toApp({ rethink: 'ready' });
