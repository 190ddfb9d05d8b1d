// @ts-check
// The demo page: wires the form to rethink.js. Each step enables the next.

import { MsgNodeConnection, login } from './runtime/protocol-client.js';

/** @param {string} id */
const $ = (id) => /** @type {any} */ (document.getElementById(id));

/** @type {MsgNodeConnection | null} */
let node = null;
/** @type {string | null} */
let me = null;
let token = '';
let resumeToken = '';
/** The object this page reports or observes, and its last known version. */
let object = { url: '', version: 0 };

/** @param {string} direction @param {any} frame */
function log(direction, frame) {
  const line = `${direction} ${typeof frame === 'string' ? frame : JSON.stringify(frame)}\n`;
  $('log').textContent = line + $('log').textContent;
}

/** @param {string} text @param {'ok' | 'bad' | ''} [kind] */
function status(text, kind = '') {
  $('status').textContent = text;
  $('status').className = `status ${kind}`;
}

/** @param {unknown} e */
function failed(e) {
  status(e instanceof Error ? e.message : String(e), 'bad');
}

/** @param {MsgNodeConnection} connection */
function attach(connection) {
  node = connection;
  const session = connection.session;
  resumeToken = session.resume_token;
  const originalSend = connection.send.bind(connection);
  connection.send = (envelope) => {
    log('→', envelope);
    originalSend(envelope);
  };
  connection.socket.addEventListener('message', (ev) => log('←', ev.data));
  connection.onMessage(onMessage);
  connection.onClose((ev) => {
    status(`disconnected (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`, 'bad');
    $('resume').hidden = !resumeToken;
    for (const b of ['register', 'discover', 'send', 'create-object', 'subscribe', 'update']) $(b).disabled = true;
  });
  const resumed = session.resumed ? `, resumed with ${session.addresses.length} address(es)` : '';
  status(`connected as ${session.identity} on node ${session.node}${resumed}`, 'ok');
  $('resume').hidden = true;
  $('register').disabled = false;
  if (session.resumed && session.addresses.length > 0) hyperty(session.addresses[0]);
}

/** @param {string} address */
function hyperty(address) {
  me = address;
  $('my-address').textContent = address;
  for (const b of ['discover', 'send', 'create-object', 'subscribe', 'update']) $(b).disabled = false;
}

/** @param {import('./runtime/protocol-client.js').Envelope} m */
function onMessage(m) {
  if ((m.type === 'update' || m.type === 'delete') && m.from === object.url) {
    object.version = m.body?.version ?? object.version;
    $('object-version').textContent = String(object.version);
    $('object-current').textContent = m.type === 'delete' ? '(deleted)' : JSON.stringify(m.body?.value);
    return;
  }
  const item = document.createElement('li');
  item.textContent = `${m.type} from ${m.from}: ${JSON.stringify(m.body)}`;
  $('inbox').prepend(item);
  // Answer calls so the sender sees a response, as a hyperty should.
  if (m.type === 'execute' && me && m.to === me && node) {
    node.send({ id: m.id, type: 'response', from: me, to: m.from, body: { code: 200, value: 'received' } });
  }
}

$('login').addEventListener('click', async () => {
  try {
    status('logging in…');
    token = await login($('username').value, $('password').value);
    attach(await MsgNodeConnection.open(token));
  } catch (e) {
    failed(e);
  }
});

$('resume').addEventListener('click', async () => {
  try {
    attach(await MsgNodeConnection.open(token, { resume: resumeToken }));
  } catch (e) {
    failed(e);
  }
});

$('register').addEventListener('click', async () => {
  if (!node) return;
  try {
    hyperty(await node.registerHyperty({ name: 'web client', user: node.session.identity }));
  } catch (e) {
    failed(e);
  }
});

$('discover').addEventListener('click', async () => {
  if (!node || !me) return;
  try {
    const found = await node.discover(me, $('discover-user').value);
    $('found').replaceChildren(
      ...found.map((h) => {
        const li = document.createElement('li');
        li.textContent = h.address;
        li.addEventListener('click', () => ($('send-to').value = h.address));
        return li;
      }),
    );
    if (found.length > 0) $('send-to').value = found[0].address;
    if (found.length === 0) $('found').textContent = 'nobody online';
  } catch (e) {
    failed(e);
  }
});

$('send').addEventListener('click', async () => {
  if (!node || !me) return;
  try {
    const body = JSON.parse($('send-body').value || 'null');
    const type = $('send-type').value;
    if (type === 'forward') {
      node.send({ id: Date.now(), type, from: me, to: $('send-to').value, body });
      return;
    }
    const r = await node.request(type, me, $('send-to').value, body);
    const item = document.createElement('li');
    item.textContent = `response ${r.body.code} from ${r.from}: ${JSON.stringify(r.body.value)}`;
    $('inbox').prepend(item);
  } catch (e) {
    failed(e);
  }
});

$('create-object').addEventListener('click', async () => {
  if (!node || !me) return;
  try {
    const value = JSON.parse($('object-value').value);
    const created = await node.createObject(me, $('object-schema').value, value);
    object = { url: created.url, version: created.version };
    $('object-url').value = created.url;
    $('object-version').textContent = String(created.version);
    $('object-current').textContent = JSON.stringify(value);
  } catch (e) {
    failed(e);
  }
});

$('subscribe').addEventListener('click', async () => {
  if (!node || !me) return;
  try {
    const snapshot = await node.subscribe(me, $('object-url').value);
    object = { url: snapshot.url, version: snapshot.version };
    $('object-version').textContent = String(snapshot.version);
    $('object-current').textContent = JSON.stringify(snapshot.value);
  } catch (e) {
    failed(e);
  }
});

$('update').addEventListener('click', async () => {
  if (!node || !me) return;
  try {
    const value = JSON.parse($('object-value').value);
    const url = $('object-url').value;
    object.version = await node.update(me, url, object.version, value);
    object.url = url;
    $('object-version').textContent = String(object.version);
    $('object-current').textContent = JSON.stringify(value);
  } catch (e) {
    failed(e);
  }
});
