// @ts-check
/**
 * The policy decision point. A decision is made for one message of one hyperty, in one
 * direction; the rules are, in order: the runtime's policy (`policy.json`, first matching rule
 * decides), then the hyperty's manifest from the catalogue (allow), then default deny.
 *
 * Patterns: `*` matches within one path segment, `**` matches anything.
 */

/** @param {string} pattern */
function toRegex(pattern) {
  const body = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&')
    .replace(/\*\*/g, '\u0000').replace(/\*/g, '[^/]*').replace(/\u0000/g, '.*');
  return new RegExp(`^${body}$`);
}

/** @param {string[] | undefined} patterns @param {string} value */
function matches(patterns, value) {
  return (patterns ?? []).some((p) => toRegex(p).test(value));
}

/**
 * @typedef {{to?: string[], types?: string[]}} Grant
 * @typedef {{send?: Grant, receive?: {from?: string[], types?: string[]}}} Manifest
 * @typedef {{id: string, hyperty: string, direction: 'send' | 'receive', peers?: string[],
 *   types?: string[], decision: 'allow' | 'deny'}} Rule
 */
export class PolicyDecisionPoint {
  constructor() {
    /** @type {Rule[]} */
    this.rules = [];
    this.version = 0;
    /** @type {Map<string, Manifest>} */
    this.manifests = new Map();
  }

  /** @param {{version: number, rules: Rule[]}} policy */
  load(policy) {
    this.rules = Array.isArray(policy.rules) ? policy.rules : [];
    this.version = policy.version ?? 0;
  }

  /**
   * Returns `{allow, rule}` for a message of `hyperty` to or from `peer` with `type`.
   * @param {string} hyperty @param {'send' | 'receive'} direction @param {string} peer
   * @param {string} type
   */
  decide(hyperty, direction, peer, type) {
    for (const rule of this.rules) {
      if (rule.hyperty !== hyperty && rule.hyperty !== '*') continue;
      if (rule.direction !== direction) continue;
      if (!matches(rule.peers, peer) || !matches(rule.types, type)) continue;
      return { allow: rule.decision === 'allow', rule: `policy:${rule.id}` };
    }
    const manifest = this.manifests.get(hyperty);
    const grant = direction === 'send' ? manifest?.send : manifest?.receive;
    const peers = direction === 'send' ? manifest?.send?.to : manifest?.receive?.from;
    if (grant && matches(peers, peer) && matches(grant.types, type)) {
      return { allow: true, rule: `manifest:${hyperty}:${direction}` };
    }
    return { allow: false, rule: 'default-deny' };
  }
}
