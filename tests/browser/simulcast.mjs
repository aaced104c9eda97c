// A Chromium page publishes its 1280x720 fake camera through the client library, which
// sends it as three simulcast layers (320x180, 640x360, 1280x720); a second page subscribes.
// The subscriber must decode the full layer; when the publisher stops sending the full
// layer (its encoding deactivated, as a browser does when its uplink shrinks) it must go
// on decoding the 640-wide layer, and get the full one back once the publisher resumes it,
// without its decoding standing still for long. Prints each phase's statistics.
// Usage: node simulcast.mjs http://127.0.0.1:PORT
import { runInBrowser, waitFor } from './chromium.mjs';

const base = process.argv[2];
if (!base) {
  console.error('usage: node simulcast.mjs <server url>');
  process.exit(2);
}

/**
 * Opens a page of the server's origin that joins `room` as `identity` through the client
 * library (`window.room`); the publisher publishes its camera at 1280x720.
 */
async function join(context, room, identity, publish) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[${identity}] ${m.text()}`); });
  await page.goto(`${base}/healthz`); // any page of the server's origin
  await page.evaluate(async ({ room, identity, publish }) => {
    const { Switchboard } = await import('/switchboard.js');
    const grants = publish ? 'publish' : 'subscribe';
    const { token } = await (await fetch(`/dev/token?room=${room}&identity=${identity}&grants=${grants}`)).json();
    window.room = await Switchboard.connect({ url: `ws://${location.host}/ws`, token });
    if (publish) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 } });
      await window.room.publish(stream);
    }
  }, { room, identity, publish });
  return page;
}

/** The subscriber's decoded video: frames, their width, and the longest gap between frames seen so far. */
function decoding(page) {
  return page.evaluate(async () => {
    const stats = await window.room.subscriber.getStats();
    let video = null;
    stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') video = s; });
    return video ? { framesDecoded: video.framesDecoded || 0, frameWidth: video.frameWidth || 0, freezes: video.freezeCount || 0 } : { framesDecoded: 0 };
  });
}

/** What the publisher sends on each layer (by RID): the frames' width, and what limits it. */
function layers(page) {
  return page.evaluate(async () => {
    const stats = await window.room.publisher.getStats();
    const sent = {};
    stats.forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') sent[s.rid] = { width: s.frameWidth || 0, limitation: s.qualityLimitationReason }; });
    return sent;
  });
}

/** Turns the publisher's full layer (its third encoding) on or off. */
function setFullLayer(page, active) {
  return page.evaluate(async (active) => {
    const sender = window.room.publisher.getSenders().find((s) => s.track && s.track.kind === 'video');
    const parameters = sender.getParameters();
    parameters.encodings[2].active = active;
    await sender.setParameters(parameters);
  }, active);
}

/**
 * Watches the subscriber (every 100 ms) until it decodes `width`-wide frames and has gone on
 * decoding them for a second; returns its statistics then, with the longest time its
 * decoded frames stood still meanwhile (`stallMs`).
 */
async function decodesAt(page, width, what) {
  const deadline = Date.now() + 20000;
  let last = await decoding(page);
  let changed = Date.now();
  let stallMs = 0;
  let reachedAt = null;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    const s = await decoding(page);
    if (s.framesDecoded !== last.framesDecoded) changed = Date.now();
    stallMs = Math.max(stallMs, Date.now() - changed);
    last = s;
    if (s.frameWidth !== width) reachedAt = null;
    else if (reachedAt === null) reachedAt = { at: Date.now(), frames: s.framesDecoded };
    else if (Date.now() - reachedAt.at >= 1000 && s.framesDecoded >= reachedAt.frames + 10) return { ...s, stallMs };
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify({ ...last, stallMs })}`);
}

await runInBrowser({}, async (browser) => {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const room = `simulcast-${Date.now()}`;
  const viewer = await join(context, room, 'viewer', false);
  const camera = await join(context, room, 'camera', true);
  const sent = await waitFor('the publisher to send three layers', async () => {
    const l = await layers(camera);
    return { ok: l.q?.width === 320 && l.h?.width === 640 && l.f?.width === 1280, l };
  }, 20000);
  console.log(`layers sent: ${JSON.stringify(sent.l)}`);
  const full = await decodesAt(viewer, 1280, 'the viewer to decode the full layer');
  console.log(`full: ${JSON.stringify(full)}`);
  await setFullLayer(camera, false);
  const half = await decodesAt(viewer, 640, 'the viewer to decode the half layer once the full one stopped');
  console.log(`half: ${JSON.stringify(half)}`);
  // The full layer's last frame stays on screen while the server notices it stopped and
  // the half layer's keyframe comes: well under the time a person calls a freeze.
  if (half.stallMs > 1500) throw new Error(`the viewer's video stood still ${half.stallMs} ms at the switch down`);
  await setFullLayer(camera, true);
  const back = await decodesAt(viewer, 1280, 'the viewer to decode the full layer again once it resumed');
  console.log(`back to full: ${JSON.stringify(back)}`);
  if (back.stallMs > 500) throw new Error(`the viewer's video stood still ${back.stallMs} ms at the switch up`);
});
