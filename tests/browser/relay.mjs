// A UDP relay on loopback that stands for a narrow downlink: what the server sends through it
// to the client leaves at most at the rate set (a token bucket), waits in a queue of at most
// `queueMs` worth of bytes at that rate, and is dropped when the queue is full, as a router's
// tail drop does; what the client sends passes at once. It carries one client's connection:
// the page's SDP names the relay instead of the server (`rewriteCandidates`).
import { createSocket } from 'node:dgram';

/** Bytes a burst may send at once: two full datagrams. */
const BURST_BYTES = 2400;
/** How often the queue is drained, in milliseconds. */
const TICK_MS = 2;

export class ShapedRelay {
  /** A relay to the server's media address `host:port`; `start()` binds it. */
  constructor(host, port, { rateBps = Infinity, queueMs = 100 } = {}) {
    Object.assign(this, { host, port, rateBps, queueMs });
    this.client = null;
    this.queue = [];
    this.queued = 0;
    this.tokens = BURST_BYTES;
    this.dropped = 0;
    this.forwarded = 0;
  }

  /** Binds the client's side and the server's side; resolves to the client's side's port. */
  async start() {
    this.front = createSocket('udp4');
    this.back = createSocket('udp4');
    this.front.on('message', (datagram, from) => {
      this.client = from;
      this.back.send(datagram, this.port, this.host);
    });
    this.back.on('message', (datagram) => this.#shape(datagram));
    await new Promise((resolve) => this.front.bind(0, '127.0.0.1', resolve));
    await new Promise((resolve) => this.back.bind(0, '127.0.0.1', resolve));
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

  #shape(datagram) {
    if (this.rateBps === Infinity && this.queue.length === 0) {
      this.#send(datagram);
      return;
    }
    const limit = Math.max(BURST_BYTES, (this.rateBps / 8) * (this.queueMs / 1000));
    if (this.queued + datagram.length > limit) {
      this.dropped += 1;
      return;
    }
    this.queue.push(datagram);
    this.queued += datagram.length;
  }

  #drain(seconds) {
    this.tokens = Math.min(BURST_BYTES, this.tokens + (this.rateBps / 8) * seconds);
    while (this.queue.length > 0 && (this.rateBps === Infinity || this.tokens >= this.queue[0].length)) {
      const datagram = this.queue.shift();
      this.queued -= datagram.length;
      this.tokens -= datagram.length;
      this.#send(datagram);
    }
  }

  #send(datagram) {
    if (!this.client) return;
    this.forwarded += 1;
    this.front.send(datagram, this.client.port, this.client.address);
  }

  close() {
    clearInterval(this.timer);
    this.front.close();
    this.back.close();
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
