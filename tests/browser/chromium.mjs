// What the browser tests share: Debian's headless Chromium with fake camera, microphone and
// screen, the meeting page's join screen, and the page's receive statistics.
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/**
 * A WAV file that sounds, level-wise, like someone talking: a 300 Hz tone at -10 dBFS for
 * 400 ms of every 600 ms (Chromium's own fake microphone only beeps briefly, too little for
 * an active speaker). Made with ffmpeg once.
 */
function voice() {
  const file = join(tmpdir(), 'switchboard-voice.wav');
  if (!existsSync(file)) {
    const level = "volume='if(lt(mod(t,0.6),0.4),0.3,0)':eval=frame";
    const made = `${file}.${process.pid}.wav`;
    execFileSync('ffmpeg', ['-y', '-loglevel', 'error', '-f', 'lavfi', '-i', 'sine=frequency=300:sample_rate=48000:duration=300',
      '-af', level, '-ac', '1', '-c:a', 'pcm_s16le', made]);
    execFileSync('mv', [made, file]);
  }
  return file;
}

/**
 * Starts Chromium. With `trustCertificate` (a PEM file), it trusts that one certificate's key
 * (`--ignore-certificate-errors-spki-list`), as a user who accepted it would. With `talking`,
 * every fake microphone plays `voice()` instead of Chromium's beep.
 */
export async function launch({ trustCertificate, talking = false } = {}) {
  const args = [
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--auto-select-desktop-capture-source=Entire screen',
    '--allow-loopback-in-peer-connection',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ];
  if (talking) args.push(`--use-file-for-fake-audio-capture=${voice()}`);
  if (trustCertificate) {
    const spki = new X509Certificate(readFileSync(trustCertificate)).publicKey.export({ type: 'spki', format: 'der' });
    args.push(`--ignore-certificate-errors-spki-list=${createHash('sha256').update(spki).digest('base64')}`);
  }
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args });
}

/**
 * Runs `body(browser)` in a Chromium started with `options` (as `launch`), then closes it
 * and ends the process: 0 when `body` succeeded, 1 (with its error printed) when it threw.
 */
export async function runInBrowser(options, body) {
  const browser = await launch(options);
  let failed = false;
  try {
    await body(browser);
  } catch (err) {
    console.error(String(err && err.stack || err));
    failed = true;
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}

/** Polls `check` until it returns `{ ok: true, ... }`; throws with the last result after `timeoutMs`. */
export async function waitFor(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last.ok) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last)}`);
}

/**
 * Opens the meeting page at `url` in a new tab of `context` and joins as a person would:
 * types the name, ticks "may record" when asked, clicks Join, and waits for the meeting.
 */
export async function joinMeeting(context, url, name, { mayRecord = false } = {}) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`[${name}] ${m.text()}`); });
  await page.goto(url);
  await page.fill('#name', name);
  if (mayRecord) await page.check('#may-record');
  await page.click('#join-button');
  await page.waitForSelector('#meeting-screen', { state: 'visible', timeout: 15000 });
  if (await page.isVisible('#join-screen')) throw new Error(`${name}: the join screen is still shown in the meeting`);
  return page;
}

/** Receive totals of a tab's subscriber connection, and its SRTP ciphers. */
export async function inbound(page) {
  return page.evaluate(async () => {
    if (!window.room) return null;
    const pub = window.room.publisher ? await window.room.publisher.getStats() : new Map();
    let publisherCipher = null;
    pub.forEach((s) => { if (s.type === 'transport') publisherCipher = s.srtpCipher || null; });
    const stats = await window.room.subscriber.getStats();
    const totals = { framesDecoded: 0, videoTracksDecoding: 0, audioPackets: 0, audioSamples: 0, srtpCipher: null, publisherCipher };
    stats.forEach((s) => {
      if (s.type === 'transport') totals.srtpCipher = s.srtpCipher || null;
      if (s.type === 'remote-outbound-rtp') totals.senderReports = (totals.senderReports || 0) + (s.reportsSent || 0);
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') { totals.framesDecoded += s.framesDecoded || 0; if (s.framesDecoded > 0) totals.videoTracksDecoding += 1; }
      if (s.kind === 'audio') { totals.audioPackets += s.packetsReceived || 0; totals.audioSamples += s.totalSamplesReceived || 0; }
    });
    return totals;
  });
}

/** The text of an element of the page. */
export function textOf(page, selector) {
  return page.locator(selector).textContent();
}
