// @ts-check
/**
 * The protocol stub: a module worker of the runtime origin holding the runtime's one WebSocket
 * to the Message Node (docs/protocol.md). The core sends `{op:'connect', url, token}` and
 * `{op:'send', envelope}`; the stub answers `{op:'welcome', session}`, `{op:'message',
 * envelope}` and `{op:'closed', code, reason}`. A dropped connection is resumed with the
 * welcome's resume token within the node's grace period; a revoked token (4001) is final.
 */
import { MsgNodeConnection } from './protocol-client.js';

/** @type {MsgNodeConnection | null} */
let connection = null;
/** @type {{url: string, token: string} | null} */
let target = null;
/** Sends queued while reconnecting: bounded, oldest first. */
const backlog = [];
const MAX_BACKLOG = 256;

/** @param {string | undefined} resume */
async function connect(resume) {
  if (!target) return;
  try {
    connection = await MsgNodeConnection.open(target.token, { base: target.url, resume });
  } catch (e) {
    if (resume) return connect(undefined);
    self.postMessage({ op: 'closed', code: 0, reason: String(e) });
    return;
  }
  const session = connection.session;
  self.postMessage({ op: 'welcome', session: { ...session, resume_token: undefined } });
  connection.onMessage((envelope) => self.postMessage({ op: 'message', envelope }));
  connection.onClose((ev) => {
    connection = null;
    if (ev.code === 4001 || ev.code === 1000) {
      self.postMessage({ op: 'closed', code: ev.code, reason: ev.reason });
      return;
    }
    setTimeout(() => connect(session.resume_token), 250);
  });
  while (backlog.length && connection) connection.send(backlog.shift());
}

self.onmessage = (/** @type {MessageEvent} */ ev) => {
  const m = ev.data;
  if (m.op === 'connect') {
    target = { url: m.url, token: m.token };
    connect(undefined);
  } else if (m.op === 'send') {
    if (connection) connection.send(m.envelope);
    else if (backlog.length < MAX_BACKLOG) backlog.push(m.envelope);
  }
};
