// A Chromium page publishes its camera and microphone over WHIP (RFC 9725) with nothing but
// fetch and RTCPeerConnection, as WHIP client libraries do; a second tab, on the meeting
// page, lists the WHIP publisher and decodes its video; a third plays the room over WHEP
// (draft-ietf-wish-whep) the same way, decodes the publisher's video and audio, and ends its
// session with DELETE; the publisher's DELETE ends its session, and the tab sees it leave.
// With `tcp`, the WHIP and WHEP pages act as if their network blocked UDP: they drop the
// answer's UDP candidates, so ICE-TCP is all they have, and check that their media went
// over TCP.
// Usage: node whip_whep.mjs http://127.0.0.1:PORT [tcp]
import { inbound, joinMeeting, runInBrowser, waitFor } from './chromium.mjs';

const base = process.argv[2];
const tcpOnly = process.argv[3] === 'tcp';
if (!base) {
  console.error('usage: node whip_whep.mjs <server url> [tcp]');
  process.exit(2);
}

/** Whether the meeting page of `page` lists someone named `name`. */
function lists(page, name) {
  return page.evaluate((who) => [...document.querySelectorAll('#participants li')].some((li) => li.firstChild.textContent === who), name);
}

/**
 * Opens a new page of the server's origin and starts a WHIP (publishing its fake camera and
 * microphone) or WHEP (playing into a video element) session as `identity`, with nothing but
 * fetch and RTCPeerConnection; the session is `window.session` in the page.
 */
async function startSession(context, room, endpoint, identity) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[${identity}] ${m.text()}`); });
  await page.goto(`${base}/healthz`); // any page of the server's origin
  const location = await page.evaluate(async ({ room, endpoint, identity, tcpOnly }) => {
    const grants = endpoint === 'whip' ? 'publish' : 'subscribe';
    const { token } = await (await fetch(`/dev/token?room=${room}&identity=${identity}&grants=${grants}`)).json();
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    if (endpoint === 'whip') {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
      for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
      const video = Object.assign(document.createElement('video'), { muted: true, autoplay: true });
      document.body.append(video);
      const stream = new MediaStream();
      pc.ontrack = (event) => { stream.addTrack(event.track); video.srcObject = stream; };
    }
    await pc.setLocalDescription(await pc.createOffer());
    // Without trickle: the offer goes once its candidates are gathered.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    });
    const response = await fetch(`/${endpoint}/${room}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw new Error(`${endpoint} POST answered ${response.status}: ${await response.text()}`);
    let answer = await response.text();
    if (tcpOnly) answer = answer.split('\r\n').filter((line) => !(line.startsWith('a=candidate:') && / udp /i.test(line))).join('\r\n');
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    window.session = { pc, token, location: response.headers.get('Location') };
    return window.session.location;
  }, { room, endpoint, identity, tcpOnly });
  console.log(`${endpoint} session at ${location}`);
  return page;
}

/** The protocol of the candidate pair the page's session sends and receives on. */
function sessionTransport(page) {
  return page.evaluate(async () => {
    const stats = await window.session.pc.getStats();
    let protocol = 'none';
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') protocol = stats.get(s.localCandidateId)?.protocol ?? 'unknown';
    });
    return protocol;
  });
}

/** Ends the page's session with DELETE; throws unless it answered 200. */
async function endSession(page) {
  const status = await page.evaluate(async () => {
    const response = await fetch(window.session.location, { method: 'DELETE', headers: { Authorization: `Bearer ${window.session.token}` } });
    window.session.pc.close();
    return response.status;
  });
  if (status !== 200) throw new Error(`DELETE answered ${status}`);
}

await runInBrowser({}, async (browser) => {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const room = `whip-${Date.now()}`;
  const publisher = await startSession(context, room, 'whip', 'whip-cam');

  const viewer = await joinMeeting(context, `${base}/?room=${room}`, 'viewer');
  const got = await waitFor('the viewer to decode the WHIP publisher', async () => {
    const s = await inbound(viewer);
    return { ok: !!s && s.videoTracksDecoding === 1 && s.framesDecoded > 20 && s.audioPackets > 0 && (await lists(viewer, 'whip-cam')), s };
  }, 30000);
  console.log(`viewer: ${JSON.stringify(got.s)}`);
  console.log('whip publisher seen');
  console.log(`whip transport: ${await sessionTransport(publisher)}`);

  const player = await startSession(context, room, 'whep', 'whep-player');
  const played = await waitFor('the WHEP player to decode the publisher', async () => {
    const s = await player.evaluate(async () => {
      const totals = { framesDecoded: 0, frameWidth: 0, audioPackets: 0 };
      (await window.session.pc.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        if (s.kind === 'video') { totals.framesDecoded += s.framesDecoded || 0; totals.frameWidth = s.frameWidth || 0; }
        if (s.kind === 'audio') totals.audioPackets += s.packetsReceived || 0;
      });
      return totals;
    });
    return { ok: s.framesDecoded > 20 && s.frameWidth === 640 && s.audioPackets > 0 && (await lists(viewer, 'whep-player')), s };
  }, 30000);
  console.log(`player: ${JSON.stringify(played.s)}`);
  console.log('whep player decodes');
  console.log(`whep transport: ${await sessionTransport(player)}`);
  await endSession(player);
  await waitFor('the WHEP player to leave', async () => ({ ok: !(await lists(viewer, 'whep-player')) }), 10000);
  console.log('whep session ended');

  await endSession(publisher);
  await waitFor('the WHIP publisher to leave', async () => ({ ok: !(await lists(viewer, 'whip-cam')) }), 10000);
  console.log('whip session ended');
});
