// A UDP relay on loopback that stands for a narrow downlink: what the server sends through it
// to the client leaves at most at the rate set (a token bucket), waits in a queue of at most
// `queueMs` worth of bytes at that rate, and is dropped when the queue is full, as a router's
// tail drop does; what the client sends passes at once. It carries one page's connection
// (each address the page sends from as a flow of its own): the page's SDP names the relay
// instead of the server (`rewriteCandidates`).
import { createSocket } from 'node:dgram';

/** Bytes a burst may send at once: two full datagrams. */
const BURST_BYTES = 2400;
/** How often the queue is drained, in milliseconds. */
const TICK_MS = 2;

export class ShapedRelay {
  /** A relay to the server's media address `host:port`; `start()` binds it. */
  constructor(host, port, { rateBps = Infinity, queueMs = 100 } = {}) {
    Object.assign(this, { host, port, rateBps, queueMs });
    /** Each client address the page sends from, with the socket its datagrams go on to the server. */
    this.flows = new Map();
    this.queue = [];
    this.queued = 0;
    this.tokens = BURST_BYTES;
    this.dropped = 0;
    this.forwarded = 0;
  }

  /**
   * Binds the client's side; resolves to its port. Each address the page sends from (a
   * browser checks from every local candidate) gets a socket of its own towards the server,
   * as a NAT gives each flow a port, so what the server answers goes back to that address.
   */
  async start() {
    this.front = createSocket('udp4');
    this.front.on('message', (datagram, from) => this.#flow(from).back.send(datagram, this.port, this.host));
    await new Promise((resolve) => this.front.bind(0, '127.0.0.1', resolve));
    let last = Date.now();
    this.timer = setInterval(() => {
      const now = Date.now();
      this.#drain((now - last) / 1000);
      last = now;
    }, TICK_MS);
    return this.front.address().port;
  }

  /** Sets the downlink's rate in bits per second (`Infinity`: unlimited). */
  setRate(rateBps) {
    this.rateBps = rateBps;
  }

  #flow(client) {
    const key = `${client.address}:${client.port}`;
    if (!this.flows.has(key)) {
      const back = createSocket('udp4');
      back.on('message', (datagram) => this.#shape(datagram, client));
      back.bind(0, '127.0.0.1');
      this.flows.set(key, { back });
    }
    return this.flows.get(key);
  }

  #shape(datagram, client) {
    if (this.rateBps === Infinity && this.queue.length === 0) {
      this.#send(datagram, client);
      return;
    }
    const limit = Math.max(BURST_BYTES, (this.rateBps / 8) * (this.queueMs / 1000));
    if (this.queued + datagram.length > limit) {
      this.dropped += 1;
      return;
    }
    this.queue.push({ datagram, client });
    this.queued += datagram.length;
  }

  #drain(seconds) {
    this.tokens = Math.min(BURST_BYTES, this.tokens + (this.rateBps / 8) * seconds);
    while (this.queue.length > 0 && (this.rateBps === Infinity || this.tokens >= this.queue[0].datagram.length)) {
      const { datagram, client } = this.queue.shift();
      this.queued -= datagram.length;
      this.tokens -= datagram.length;
      this.#send(datagram, client);
    }
  }

  #send(datagram, client) {
    this.forwarded += 1;
    this.front.send(datagram, client.port, client.address);
  }

  close() {
    clearInterval(this.timer);
    this.front.close();
    this.flows.forEach(({ back }) => back.close());
  }
}

/**
 * Makes the page send the media of its connections through relays: before a remote
 * description is applied, each UDP candidate in it names a relay (made by the Node side's
 * `relayFor(host, port)`) instead of the server, and TCP candidates are removed.
 */
export async function rewriteCandidates(page, relayFor) {
  await page.exposeFunction('relayFor', relayFor);
  await page.addInitScript(() => {
    const apply = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = async function (description) {
      const lines = [];
      for (const line of description.sdp.split('\r\n')) {
        const candidate = /^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) (.*)$/i.exec(line);
        if (!candidate) { lines.push(line); continue; }
        const [, foundation, component, protocol, priority, host, port, rest] = candidate;
        if (protocol.toLowerCase() !== 'udp') continue;
        const relayed = await window.relayFor(host, Number(port));
        lines.push(`a=candidate:${foundation} ${component} ${protocol} ${priority} 127.0.0.1 ${relayed} ${rest}`);
      }
      return apply.call(this, { type: description.type, sdp: lines.join('\r\n') });
    };
  });
}
