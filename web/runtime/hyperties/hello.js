// The example hyperty: greets another user through the Message Node. It registers with the
// descriptor {name: 'hello'}; `greet(user, text)` finds that user's hello hyperty in the
// registry and calls it; an inbound greeting becomes a `greeted` event for the app.
defineHyperty((rt) => ({
  /** Greets `user`; resolves with their answer. */
  async greet(user, text) {
    const domain = rt.address.split('/')[2];
    const found = await rt.request('read', `domain://registry.${domain}`, {
      resource: `user://${domain}/${user}`,
    });
    const peer = found.body.value.hyperties.find((h) => h.descriptor?.name === 'hello');
    if (!peer) throw Object.assign(new Error(`${user} has no hello hyperty`), { code: 404 });
    return rt.call(peer.address, 'hello', { text, from: rt.identity });
  },
  /** Sends one message of `type` to `to` as it is (to try the policy). */
  async send(type, to, body) {
    const r = await rt.request(type, to, body);
    return r.body ?? null;
  },
  /** Answers inbound calls. */
  onCall(method, params) {
    if (method !== 'hello') throw Object.assign(new Error(`no method ${method}`), { code: 404 });
    rt.emit('greeted', { from: params.from, text: params.text });
    return `hi ${params.from}, ${rt.identity} here`;
  },
  /** Who I am. */
  whoami() { return { address: rt.address, identity: rt.identity }; },
}));
