// Opens the meeting page in two tabs of one room in headless Debian Chromium and checks that
// each tab decodes the other's video and receives its audio (RTCPeerConnection.getStats),
// chat, a resumed signaling connection, and a recording of both tabs made through the HTTP
// API (its download links are printed as `recordings: [...]` for the caller to check).
// Usage: node two_tabs.mjs http://127.0.0.1:PORT
import { inbound, joinMeeting, runInBrowser, waitFor } from './chromium.mjs';

const base = process.argv[2];
if (!base) {
  console.error('usage: node two_tabs.mjs <server url>');
  process.exit(2);
}

await runInBrowser({}, async (browser) => {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const room = `browser-${Date.now()}`;
  const pages = [];
  for (const name of ['ada', 'grace']) {
    pages.push({ name, page: await joinMeeting(context, `${base}/?room=${room}`, name) });
  }
  for (const { name, page } of pages) {
    const first = await waitFor(`${name} to receive media`, async () => {
      const s = await inbound(page);
      return { ok: !!s && s.framesDecoded > 0 && s.audioPackets > 0, s };
    }, 30000);
    // Decoding keeps going: frames and audio samples grow.
    const later = await waitFor(`${name}'s decoding to progress`, async () => {
      const s = await inbound(page);
      return { ok: s.framesDecoded >= first.s.framesDecoded + 10 && s.audioSamples > first.s.audioSamples && s.senderReports > 0 && !!s.publisherCipher, s };
    }, 15000);
    const tiles = await page.locator('#videos video').count();
    console.log(`${name}: ${JSON.stringify(later.s)}, ${tiles} video tiles`);
    if (tiles < 2) throw new Error(`${name} shows ${tiles} video tiles, expected its own and the other's`);
    for (const cipher of [later.s.srtpCipher, later.s.publisherCipher]) {
      if (!/GCM/.test(cipher || '')) throw new Error(`${name}: SRTP cipher ${cipher}, expected AEAD AES-GCM`);
    }
    await page.screenshot({ path: `${process.env.SCREENSHOT_DIR || '/tmp'}/switchboard-${name}.png` });
  }
  // Chat reaches the other tab.
  await pages[0].page.fill('#chat-text', 'hello from ada');
  await pages[0].page.click('#chat-form button');
  await pages[1].page.waitForFunction(() => document.getElementById('log').textContent.includes('ada: hello from ada'), null, { timeout: 10000 });
  console.log('chat delivered');

  // Ada's signaling connection drops: the page resumes the session and keeps its media.
  const before = await inbound(pages[0].page);
  await pages[0].page.evaluate(() => window.room.ws.close());
  // The page says so while it resumes.
  await pages[0].page.waitForFunction(() => document.getElementById('status').textContent.includes('reconnecting'), null, { timeout: 5000 });
  await pages[0].page.waitForFunction(() => document.getElementById('log').textContent.includes('* reconnected'), null, { timeout: 15000 });
  await pages[1].page.fill('#chat-text', 'welcome back');
  await pages[1].page.click('#chat-form button');
  await pages[0].page.waitForFunction(() => document.getElementById('log').textContent.includes('grace: welcome back'), null, { timeout: 10000 });
  await waitFor('ada\'s video to keep decoding after the resume', async () => {
    const s = await inbound(pages[0].page);
    return { ok: s.framesDecoded > before.framesDecoded + 10, s };
  }, 10000);
  const graceLog = await pages[1].page.locator('#log').textContent();
  if (graceLog.includes('left')) throw new Error(`grace saw ada leave: ${graceLog}`);
  console.log('session resumed');

  // Both tabs recorded for a few seconds through the recordings API.
  const { token } = await (await fetch(`${base}/dev/token?room=${room}&identity=operator&grants=record`)).json();
  const api = async (method, path) => {
    const response = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}` } });
    const body = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(body)}`);
    return body;
  };
  const started = await api('POST', `/api/rooms/${room}/recordings`);
  if (started.recordings.length !== 2) throw new Error(`expected both tabs recorded: ${JSON.stringify(started)}`);
  await pages[1].page.waitForFunction(() => document.getElementById('log').textContent.includes('* recording of'), null, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 8000));
  await api('POST', `/api/rooms/${room}/recordings/stop`);
  const done = await waitFor('the recordings to be stored', async () => {
    const list = await api('GET', `/api/recordings?meeting=${room}`);
    return { ok: list.recordings.length === 2 && list.recordings.every((r) => r.status === 'done'), list };
  }, 30000);
  console.log(`recordings: ${JSON.stringify(done.list.recordings)}`);
});
