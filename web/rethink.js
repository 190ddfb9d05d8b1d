// @ts-check
/**
 * rethink.js, the one script an application includes (docs/runtime.md). It loads the runtime
 * in a hidden iframe from the runtime's own origin and talks to it only with `postMessage`
 * to that exact origin, dropping every message whose `event.origin` or source is not the
 * runtime frame. The app never sees the password or the token: the login form is the runtime
 * frame's, shown while the user logs in.
 *
 *   const rt = await Runtime.load({ origin: 'http://127.0.0.1:8081' });
 *   const me = await rt.login();             // the user logs in inside the runtime frame
 *   const hello = await rt.hyperty('hello'); // a stub: calls and events over messages
 *   hello.on('greeted', (g) => console.log(g));
 *   await hello.greet('bob', 'hi');
 */

/** An error from the runtime or a hyperty, with its code. */
export class RuntimeError extends Error {
  /** @param {number} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Runtime {
  /** @param {HTMLIFrameElement} frame @param {string} origin */
  constructor(frame, origin) {
    this.frame = frame;
    this.origin = origin;
    this.nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this.pending = new Map();
    /** @type {Map<string, Map<string, Set<Function>>>} instance → event → listeners */
    this.listeners = new Map();
    window.addEventListener('message', (ev) => this.#receive(ev));
  }

  /**
   * Creates the runtime frame and resolves once the core is ready.
   * @param {{origin: string, container?: HTMLElement}} options
   * @returns {Promise<Runtime>}
   */
  static load({ origin, container = document.body }) {
    const frame = document.createElement('iframe');
    frame.src = `${origin}/index.html`;
    frame.title = 'rethink runtime';
    frame.allow = 'camera; microphone; autoplay';
    frame.style.cssText = 'display:none;width:420px;height:90px;border:1px solid #ccc';
    return new Promise((resolve) => {
      const onReady = (/** @type {MessageEvent} */ ev) => {
        if (ev.origin !== origin || ev.source !== frame.contentWindow || ev.data?.rethink !== 'ready') return;
        window.removeEventListener('message', onReady);
        resolve(new Runtime(frame, origin));
      };
      window.addEventListener('message', onReady);
      container.append(frame);
    });
  }

  /** @param {MessageEvent} ev */
  #receive(ev) {
    if (ev.origin !== this.origin || ev.source !== this.frame.contentWindow) return;
    const m = ev.data;
    if (m?.rethink === 'show') this.frame.style.display = m.visible ? 'block' : 'none';
    else if (m?.rethink === 'event') {
      for (const fn of this.listeners.get(m.instance)?.get(m.event) ?? []) fn(m.data);
    } else if (m?.rethink === 'reply') {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error) p.reject(new RuntimeError(m.error.code, m.error.message));
      else p.resolve(m.value);
    }
  }

  /** @param {string} op @param {...any} args */
  call(op, ...args) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.frame.contentWindow?.postMessage({ rethink: 'call', id, op, args }, this.origin);
    });
  }

  /** Shows the runtime's login form; resolves with `{identity, user}` once logged in. */
  login() {
    return this.call('login');
  }

  /** Returns the runtime's policy counters, denial log and restarts. */
  stats() {
    return this.call('stats');
  }

  /**
   * Starts a hyperty of the catalogue; returns its stub: `stub.method(...args)` calls it,
   * `stub.on(event, fn)` listens, `stub.address` is its address at the Message Node.
   * @param {string} name
   */
  async hyperty(name) {
    const { instance, address } = await this.call('hyperty', name);
    const events = new Map();
    this.listeners.set(instance, events);
    const base = {
      address,
      /** @param {string} event @param {Function} fn */
      on: (event, fn) => {
        if (!events.has(event)) events.set(event, new Set());
        events.get(event).add(fn);
      },
      /** @param {string} event @param {Function} fn */
      off: (event, fn) => events.get(event)?.delete(fn),
    };
    return new Proxy(base, {
      get: (target, prop) => {
        if (prop in target) return target[/** @type {keyof typeof base} */ (prop)];
        if (typeof prop !== 'string' || prop === 'then') return undefined;
        return (/** @type {any[]} */ ...args) => this.call('invoke', instance, prop, args);
      },
    });
  }
}
