// Three people use the meeting page in headless Debian Chromium, over HTTPS and WSS with the
// server's self-signed certificate (trusted by its key, as a user who accepted it would):
// they join through the join screen and see each other, one mutes and unmutes (the others'
// lists say so), one turns the camera off (the others' tile says so), one shares a screen (a
// second tile at the others, gone when the sharing stops), the one who speaks is highlighted,
// they chat, one records the room and the finished recording's link answers, and one leaves
// (the others' lists and grids lose them). A screenshot of grace's page while ada shares her screen is saved as meeting.png in
// SCREENSHOT_DIR, and the recording links are printed as `recordings: [...]` for the caller
// to check.
// Usage: node meeting.mjs https://127.0.0.1:PORT cert.pem
import { inbound, joinMeeting, runInBrowser, textOf, waitFor } from './chromium.mjs';

const [base, certificate] = process.argv.slice(2);
if (!base || !certificate) {
  console.error('usage: node meeting.mjs <server url> <certificate PEM>');
  process.exit(2);
}

/** The flags the participant list of `page` shows for the person named `name`. */
function flagsOf(page, name) {
  return page.evaluate((who) => {
    const item = [...document.querySelectorAll('#participants li')].find((li) => li.firstChild.textContent.startsWith(who));
    return item ? item.querySelector('.flags').textContent : null;
  }, name);
}

await runInBrowser({ trustCertificate: certificate, talking: true }, async (browser) => {
  const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const room = `meeting-${Date.now()}`;
  const url = `${base}/?room=${room}`;
  const ada = await joinMeeting(context, url, 'ada', { mayRecord: true });
  const grace = await joinMeeting(context, url, 'grace');
  const linus = await joinMeeting(context, url, 'linus');
  const everyone = { ada, grace, linus };

  for (const [name, page] of Object.entries(everyone)) {
    if (!(await page.evaluate(() => location.protocol === 'https:' && window.room.ws.url.startsWith('wss://')))) {
      throw new Error(`${name} is not on https and wss`);
    }
    const got = await waitFor(`${name} to decode both others' video`, async () => {
      const s = await inbound(page);
      return { ok: !!s && s.videoTracksDecoding >= 2 && s.audioPackets > 0, s };
    }, 40000);
    const tiles = await page.locator('#videos video').count();
    const people = await page.locator('#participants li').count();
    console.log(`${name}: ${JSON.stringify(got.s)}, ${tiles} tiles, ${people} people`);
    if (tiles !== 3 || people !== 3) throw new Error(`${name} shows ${tiles} tiles and ${people} people, expected 3 and 3`);
  }
  await waitFor('the connection badge', async () => {
    const badge = await textOf(ada, '#quality');
    return { ok: /connection: (good|fair|poor)/.test(badge), badge };
  }, 10000);

  // Grace mutes: the others' lists say so; she unmutes: the flag goes.
  await grace.click('#toggle-mic');
  for (const page of [ada, linus]) await waitFor('grace shown muted', async () => ({ ok: (await flagsOf(page, 'grace')) === 'muted' }), 10000);
  await grace.click('#toggle-mic');
  for (const page of [ada, linus]) await waitFor('grace shown unmuted', async () => ({ ok: (await flagsOf(page, 'grace')) === '' }), 10000);
  console.log('mute and unmute seen');

  // Linus stops his camera: the others' tile of his camera shows his initial instead.
  await linus.click('#toggle-camera');
  await waitFor('linus\'s camera shown off', async () => {
    const off = await ada.evaluate(() => document.querySelectorAll('#videos .tile.camera-off').length);
    return { ok: off === 1 && (await flagsOf(ada, 'linus')) === 'camera off', off };
  }, 10000);
  await linus.click('#toggle-camera');
  console.log('camera off seen');

  // Grace and linus mute: ada, whose fake microphone beeps, is the one speaker grace's page
  // highlights (her tile and her name), until she mutes too.
  await grace.click('#toggle-mic');
  await linus.click('#toggle-mic');
  const speakingAt = (page) => page.evaluate(() => ({
    tiles: [...document.querySelectorAll('#videos .tile.speaking figcaption')].map((c) => c.textContent),
    people: [...document.querySelectorAll('#participants li.speaking')].map((li) => li.firstChild.textContent),
  }));
  await waitFor('ada highlighted as the speaker at grace', async () => {
    const s = await speakingAt(grace);
    return { ok: s.tiles.length === 1 && s.tiles[0] === 'ada' && s.people.length === 1 && s.people[0].startsWith('ada'), s };
  }, 15000);
  await ada.click('#toggle-mic');
  await waitFor('nobody highlighted once ada mutes', async () => {
    const s = await speakingAt(grace);
    return { ok: s.tiles.length === 0 && s.people.length === 0, s };
  }, 10000);
  for (const page of [ada, grace, linus]) await page.click('#toggle-mic');
  console.log('active speaker seen');

  // Ada shares her screen: a second tile of hers at the others, decoding, gone when she stops.
  await ada.click('#share-screen');
  await waitFor('ada\'s screen at grace', async () => {
    const shown = await grace.evaluate(() => {
      const video = document.querySelector('#videos .tile.screen video');
      return video ? { width: video.videoWidth, label: video.nextSibling.textContent } : null;
    });
    return { ok: !!shown && shown.width > 0 && shown.label === 'ada (screen)', shown };
  }, 20000);
  if ((await flagsOf(linus, 'ada')) !== 'sharing') throw new Error(`linus's list: ada ${await flagsOf(linus, 'ada')}`);
  await grace.screenshot({ path: `${process.env.SCREENSHOT_DIR || '/tmp'}/meeting.png` });
  await ada.click('#share-screen');
  await waitFor('ada\'s screen tile gone at grace', async () => {
    const tiles = await grace.locator('#videos .tile.screen').count();
    return { ok: tiles === 0, tiles };
  }, 15000);
  console.log('screen share seen and stopped');

  // Chat.
  await grace.fill('#chat-text', 'hello from grace');
  await grace.click('#chat-form button');
  await linus.waitForFunction(() => document.getElementById('log').textContent.includes('grace: hello from grace'), null, { timeout: 10000 });
  console.log('chat delivered');


  // Ada records the room (her token has `record`; the others have no record button).
  if (await grace.isVisible('#record')) throw new Error('grace may not record but sees the button');
  await ada.click('#record');
  await grace.waitForFunction(() => document.getElementById('log').textContent.includes('* recording of'), null, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 6000));
  await ada.click('#record');
  const links = await waitFor('the recordings listed with links', async () => {
    const hrefs = await ada.$$eval('#recordings a', (anchors) => anchors.map((a) => a.href));
    return { ok: hrefs.length === 3, hrefs };
  }, 30000);
  // Ada clicks the first link (it opens in a new tab): the browser gets the file, shown or
  // downloaded. The object store may be another origin (S3), which a click may open.
  const path = new URL(links.hrefs[0]).pathname;
  const opened = Promise.race([
    context.waitForEvent('response', { predicate: (r) => new URL(r.url()).pathname === path, timeout: 15000 })
      .then((r) => ({ status: r.status(), type: r.headers()['content-type'] })),
    context.waitForEvent('download', { timeout: 15000 }).then((d) => ({ status: 200, download: d.suggestedFilename() })),
  ]);
  await ada.click('#recordings a >> nth=0');
  const got = await opened;
  if (got.status !== 200) throw new Error(`the recording link answered ${JSON.stringify(got)}`);
  console.log(`recording link opened: ${JSON.stringify(got)}`);
  console.log(`recordings: ${JSON.stringify(links.hrefs)}`);

  // Linus leaves: he sees the left screen, the others lose his tile and his name.
  await linus.click('#leave');
  await linus.waitForSelector('#left-screen', { state: 'visible', timeout: 5000 });
  if (await linus.isVisible('#meeting-screen')) throw new Error('linus left but still sees the meeting');
  for (const page of [ada, grace]) {
    await waitFor('linus gone', async () => {
      const tiles = await page.locator('#videos video').count();
      const flags = await flagsOf(page, 'linus');
      return { ok: tiles === 2 && flags === null, tiles, flags };
    }, 10000);
  }
  console.log('leave seen');
});
