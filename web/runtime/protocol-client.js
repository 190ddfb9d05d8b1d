// @ts-check
/**
 * The browser side of the Message Node protocol (docs/protocol.md): one WebSocket to `/msg`,
 * requests matched to responses by id, everything else handed to listeners.
 *
 * Usage:
 *   const token = await login('alice', 'rethink-demo');
 *   const node = await MsgNodeConnection.open(token);
 *   const me = await node.registerHyperty({ name: 'demo' });
 *   node.onMessage((m) => console.log(m));
 *   await node.request('read', me, node.registry, { resource: 'user://localhost/bob' });
 */

/**
 * @typedef {{ id: number | string | null, type: string, from: string, to: string, body?: any }} Envelope
 * @typedef {{ runtime: string, identity: string, user: string | null, resume_token: string,
 *   resumed: boolean, addresses: string[], node: string, domain: string,
 *   max_message_bytes: number, grace_secs: number,
 *   previous_close: { code: number, reason: string } | null }} Session
 */

/** How long a request waits for its response, in milliseconds. */
export const REQUEST_TIMEOUT_MS = 10000;

/**
 * Logs in at the auth service and returns the access token.
 * @param {string} username
 * @param {string} password
 * @param {string} [authBase] base URL of the auth service; default: this page's origin
 * @returns {Promise<string>}
 */
export async function login(username, password, authBase = '') {
  const response = await fetch(`${authBase}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body?.error?.message ?? `login failed with HTTP ${response.status}`);
  }
  return body.token;
}

/** An error response from the node or a hyperty. */
export class ResponseError extends Error {
  /**
   * @param {number} code
   * @param {string} description
   * @param {Envelope} response
   */
  constructor(code, description, response) {
    super(`${code}: ${description}`);
    this.code = code;
    this.response = response;
  }
}

/** One connection to the Message Node. */
export class MsgNodeConnection {
  /**
   * @param {WebSocket} socket an open socket whose welcome has been read
   * @param {Session} session
   */
  constructor(socket, session) {
    this.socket = socket;
    this.session = session;
    this.registry = `domain://registry.${session.domain}`;
    this.sync = `domain://sync.${session.domain}`;
    /** @type {Map<string, {resolve: (e: Envelope) => void, reject: (e: Error) => void, timer: number}>} */
    this.pending = new Map();
    /** @type {Array<(e: Envelope) => void>} */
    this.listeners = [];
    /** @type {Array<(ev: CloseEvent) => void>} */
    this.closeListeners = [];
    this.nextId = 1;
    socket.addEventListener('message', (ev) => this.#onFrame(ev.data));
    socket.addEventListener('close', (ev) => {
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`connection closed (${ev.code} ${ev.reason})`));
      }
      this.pending.clear();
      for (const l of this.closeListeners) l(ev);
    });
  }

  /**
   * Opens `/msg` with a token (optionally resuming a session) and waits for the welcome.
   * @param {string} token
   * @param {{ resume?: string, base?: string }} [options] base: ws(s)://host; default this page's
   * @returns {Promise<MsgNodeConnection>}
   */
  static open(token, options = {}) {
    const base = options.base ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
    let url = `${base}/msg?access_token=${encodeURIComponent(token)}`;
    if (options.resume) url += `&resume=${encodeURIComponent(options.resume)}`;
    const socket = new WebSocket(url);
    return new Promise((resolve, reject) => {
      const onFirst = (/** @type {MessageEvent} */ ev) => {
        socket.removeEventListener('message', onFirst);
        const welcome = JSON.parse(ev.data);
        resolve(new MsgNodeConnection(socket, welcome.body.value));
      };
      socket.addEventListener('message', onFirst);
      socket.addEventListener('close', (ev) =>
        reject(new Error(`refused or closed before the welcome (${ev.code} ${ev.reason})`)),
      );
    });
  }

  /** @param {string} data */
  #onFrame(data) {
    /** @type {Envelope} */
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === 'response') {
      const key = JSON.stringify(message.id);
      const waiting = this.pending.get(key);
      if (waiting) {
        this.pending.delete(key);
        clearTimeout(waiting.timer);
        const code = message.body?.code ?? 0;
        if (code >= 200 && code < 300) waiting.resolve(message);
        else waiting.reject(new ResponseError(code, message.body?.description ?? '', message));
        return;
      }
    }
    for (const l of this.listeners) l(message);
  }

  /** @param {(e: Envelope) => void} listener called for every message that is not an awaited response */
  onMessage(listener) {
    this.listeners.push(listener);
  }

  /** @param {(ev: CloseEvent) => void} listener */
  onClose(listener) {
    this.closeListeners.push(listener);
  }

  /**
   * Sends an envelope without waiting.
   * @param {Envelope} envelope
   */
  send(envelope) {
    this.socket.send(JSON.stringify(envelope));
  }

  /**
   * Sends a request and resolves with its response (rejects with ResponseError on an error code).
   * Errors may come from the node itself (any `from`), so the response is matched by id.
   * @param {string} type
   * @param {string} from
   * @param {string} to
   * @param {any} [body]
   * @returns {Promise<Envelope>}
   */
  request(type, from, to, body) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(JSON.stringify(id));
        reject(new Error(`no response to ${type} ${to} within ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(JSON.stringify(id), { resolve, reject, timer });
      this.send({ id, type, from, to, body });
    });
  }

  /**
   * Registers a hyperty and returns its address.
   * @param {object} [descriptor]
   * @returns {Promise<string>}
   */
  async registerHyperty(descriptor = {}) {
    const r = await this.request('create', this.session.runtime, this.registry, {
      resource: 'hyperty',
      descriptor,
    });
    return r.body.value.address;
  }

  /**
   * Lists a user's live hyperties.
   * @param {string} from a hyperty of ours
   * @param {string} username
   * @returns {Promise<Array<{address: string, descriptor: any}>>}
   */
  async discover(from, username) {
    const r = await this.request('read', from, this.registry, {
      resource: `user://${this.session.domain}/${username}`,
    });
    return r.body.value.hyperties;
  }

  /**
   * Creates a data object reported by `reporter`; returns `{url, version}`.
   * @param {string} reporter
   * @param {string} schema
   * @param {any} value
   */
  async createObject(reporter, schema, value) {
    const r = await this.request('create', reporter, this.sync, { resource: 'object', schema, value });
    return r.body.value;
  }

  /**
   * Subscribes `observer` to an object; returns the snapshot `{url, version, value, ...}`.
   * Changes arrive as `update` / `delete` messages from the object URL.
   * @param {string} observer
   * @param {string} url
   */
  async subscribe(observer, url) {
    const r = await this.request('subscribe', observer, url);
    return r.body.value;
  }

  /**
   * Updates an object (reporter only) from `version`; returns the new version.
   * @param {string} reporter
   * @param {string} url
   * @param {number} version
   * @param {any} value
   * @returns {Promise<number>}
   */
  async update(reporter, url, version, value) {
    const r = await this.request('update', reporter, url, { version, value });
    return r.body.value.version;
  }

  close() {
    this.socket.close(1000);
  }
}
