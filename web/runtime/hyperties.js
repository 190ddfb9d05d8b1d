// @ts-check
/**
 * Hyperty instances: each runs in its own worker, started from a Blob of the skeleton and the
 * hyperty's file after both matched the catalogue's sha256. A watchdog pings every worker; one
 * that misses its pongs or throws outside a call is terminated and started again on the same
 * address, and its pending calls fail with 503, without touching the other instances.
 */

export const PING_MS = 500;
export const MISSED_PINGS = 4;
export const CALL_TIMEOUT_MS = 5000;
export const MAX_PENDING = 64;

/** @param {string} text */
async function sha256(text) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Fetches `file` and checks it against `expected`; throws `{code: 412}` on a mismatch.
 * @param {string} file @param {string} expected
 */
export async function verified(file, expected) {
  const text = await (await fetch(file)).text();
  const actual = await sha256(text);
  if (actual !== expected) {
    throw { code: 412, message: `${file}: sha256 ${actual} is not the catalogue's ${expected}` };
  }
  return text;
}

export class Instance {
  /**
   * @param {string} id @param {string} name @param {string} source skeleton + hyperty
   * @param {(instance: Instance, message: any) => void} onMessage
   */
  constructor(id, name, source, onMessage) {
    this.id = id;
    this.name = name;
    this.url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
    this.onMessage = onMessage;
    /** @type {string | null} */
    this.address = null;
    this.identity = '';
    this.restarts = 0;
    /** @type {Map<number, {resolve: Function, reject: Function, timer: number}>} */
    this.calls = new Map();
    this.nextCall = 1;
    this.start();
    this.watchdog = setInterval(() => this.#tick(), PING_MS);
  }

  start() {
    this.worker = new Worker(this.url, { name: this.name });
    this.ping = 0;
    this.pong = 0;
    this.worker.onmessage = (ev) => {
      if (ev.data?.op === 'pong') this.pong = ev.data.n;
      else if (ev.data?.op === 'result') this.#settle(ev.data);
      else this.onMessage(this, ev.data);
    };
    this.worker.onerror = () => this.restart('threw');
    if (this.address) this.init(this.address, this.identity);
  }

  /** @param {string} address @param {string} identity */
  init(address, identity) {
    this.address = address;
    this.identity = identity;
    this.worker.postMessage({ op: 'init', address, identity });
  }

  #tick() {
    if (this.ping - this.pong >= MISSED_PINGS) return this.restart('stopped answering');
    this.worker.postMessage({ op: 'ping', n: ++this.ping });
  }

  /** @param {string} why */
  restart(why) {
    this.worker.terminate();
    this.restarts += 1;
    console.warn(`hyperty ${this.name} ${why}: restarted`);
    for (const call of this.calls.values()) {
      clearTimeout(call.timer);
      call.reject({ code: 503, message: `hyperty ${this.name} ${why} and was restarted` });
    }
    this.calls.clear();
    this.start();
  }

  /** @param {{id: number, value?: any, error?: any}} m */
  #settle(m) {
    const call = this.calls.get(m.id);
    if (!call) return;
    this.calls.delete(m.id);
    clearTimeout(call.timer);
    if (m.error) call.reject(m.error);
    else call.resolve(m.value);
  }

  /** Calls a method of the hyperty. @param {string} method @param {any[]} args */
  invoke(method, args) {
    if (this.calls.size >= MAX_PENDING) {
      return Promise.reject({ code: 429, message: `hyperty ${this.name} has ${MAX_PENDING} calls pending` });
    }
    const id = this.nextCall++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id);
        reject({ code: 408, message: `${this.name}.${method} did not answer within ${CALL_TIMEOUT_MS} ms` });
      }, CALL_TIMEOUT_MS);
      this.calls.set(id, { resolve, reject, timer });
      this.worker.postMessage({ op: 'invoke', id, method, args });
    });
  }

  /** @param {any} message */
  post(message) {
    this.worker.postMessage(message);
  }
}
