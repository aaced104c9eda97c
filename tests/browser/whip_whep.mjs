// A Chromium page publishes its camera and microphone over WHIP (RFC 9725) with nothing but
// fetch and RTCPeerConnection, as WHIP client libraries do; a second tab, on the meeting
// page, lists the WHIP publisher and decodes its video; a third plays the room over WHEP
// (draft-ietf-wish-whep) the same way, decodes the publisher's video and audio, and ends its
// session with DELETE; the publisher's DELETE ends its session, and the tab sees it leave.
// Usage: node whip_whep.mjs http://127.0.0.1:PORT
import { inbound, joinMeeting, runInBrowser, waitFor } from './chromium.mjs';

const base = process.argv[2];
if (!base) {
  console.error('usage: node whip_whep.mjs <server url>');
  process.exit(2);
}

/** Whether the meeting page of `page` lists someone named `name`. */
function lists(page, name) {
  return page.evaluate((who) => [...document.querySelectorAll('#participants li')].some((li) => li.firstChild.textContent === who), name);
}

await runInBrowser({}, async (browser) => {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const room = `whip-${Date.now()}`;
  const publisher = await context.newPage();
  publisher.on('console', (m) => { if (m.type() === 'error') console.error(`[publisher] ${m.text()}`); });
  await publisher.goto(`${base}/healthz`); // any page of the server's origin
  const location = await publisher.evaluate(async (room) => {
    const { token } = await (await fetch(`/dev/token?room=${room}&identity=whip-cam&grants=publish`)).json();
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    // Without trickle: the offer goes once its candidates are gathered.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    });
    const response = await fetch(`/whip/${room}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw new Error(`WHIP POST answered ${response.status}: ${await response.text()}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    window.whip = { pc, token, location: response.headers.get('Location') };
    return window.whip.location;
  }, room);
  console.log(`WHIP session at ${location}`);

  const viewer = await joinMeeting(context, `${base}/?room=${room}`, 'viewer');
  const got = await waitFor('the viewer to decode the WHIP publisher', async () => {
    const s = await inbound(viewer);
    return { ok: !!s && s.videoTracksDecoding === 1 && s.framesDecoded > 20 && s.audioPackets > 0 && (await lists(viewer, 'whip-cam')), s };
  }, 30000);
  console.log(`viewer: ${JSON.stringify(got.s)}`);
  console.log('whip publisher seen');

  const player = await context.newPage();
  player.on('console', (m) => { if (m.type() === 'error') console.error(`[player] ${m.text()}`); });
  await player.goto(`${base}/healthz`);
  const playing = await player.evaluate(async (room) => {
    const { token } = await (await fetch(`/dev/token?room=${room}&identity=whep-player&grants=subscribe`)).json();
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    document.body.append(video);
    const stream = new MediaStream();
    pc.ontrack = (event) => { stream.addTrack(event.track); video.srcObject = stream; };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    });
    const response = await fetch(`/whep/${room}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw new Error(`WHEP POST answered ${response.status}: ${await response.text()}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    window.whep = { pc, token, location: response.headers.get('Location') };
    return window.whep.location;
  }, room);
  console.log(`WHEP session at ${playing}`);
  const played = await waitFor('the WHEP player to decode the publisher', async () => {
    const s = await player.evaluate(async () => {
      const totals = { framesDecoded: 0, frameWidth: 0, audioPackets: 0 };
      (await window.whep.pc.getStats()).forEach((s) => {
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
  const ended = await player.evaluate(async () => {
    const response = await fetch(window.whep.location, { method: 'DELETE', headers: { Authorization: `Bearer ${window.whep.token}` } });
    window.whep.pc.close();
    return response.status;
  });
  if (ended !== 200) throw new Error(`WHEP DELETE answered ${ended}`);
  await waitFor('the WHEP player to leave', async () => ({ ok: !(await lists(viewer, 'whep-player')) }), 10000);
  console.log('whep session ended');

  const status = await publisher.evaluate(async () => {
    const response = await fetch(window.whip.location, { method: 'DELETE', headers: { Authorization: `Bearer ${window.whip.token}` } });
    window.whip.pc.close();
    return response.status;
  });
  if (status !== 200) throw new Error(`WHIP DELETE answered ${status}`);
  await waitFor('the WHIP publisher to leave', async () => ({ ok: !(await lists(viewer, 'whip-cam')) }), 10000);
  console.log('whip session ended');
});
