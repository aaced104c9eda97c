// The meeting page: a join screen with a camera preview, then the room's videos, controls,
// participants, chat and recordings. Built on the client library (switchboard.js); every
// server exchange goes through it.
import { Switchboard, claimsOf } from '/switchboard.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
/** A token given in the address (`?token=`): a production server's way in. */
const givenToken = params.get('token');

let room = null;
/** The camera and microphone picked on the join screen (null: none available). */
let local = null;
/** The screen being shared, while it is. */
let screen = null;
let micMuted = false;
let cameraOff = false;
let qualityTimer = null;
/** The preview being opened: joining waits for it, so that what it opens is published. */
let previewing = Promise.resolve();

// ---------------------------------------------------------------- join screen

function show(screenId) {
  for (const id of ['join-screen', 'meeting-screen', 'left-screen']) $(id).hidden = id !== screenId;
}

function prefill() {
  const claims = givenToken ? claimsOf(givenToken) : {};
  $('name').value = claims.name || claims.sub || params.get('name') || localStorage.getItem('switchboard.name') || '';
  $('room').value = claims.room || params.get('room') || 'demo';
  if (givenToken) {
    // The token fixes who and where.
    $('name').readOnly = true;
    $('room').readOnly = true;
    $('may-record-field').hidden = true;
  }
}

function stopTracks(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

async function startPreview() {
  const note = $('preview-note');
  note.hidden = true;
  if (!navigator.mediaDevices) {
    note.textContent = 'This page is not a secure context (https or localhost): you can watch and chat, not send.';
    note.hidden = false;
    return;
  }
  const camera = $('camera').value;
  const microphone = $('microphone').value;
  stopTracks(local);
  local = null;
  const video = { width: 640, height: 480, ...(camera ? { deviceId: { exact: camera } } : {}) };
  const audio = microphone ? { deviceId: { exact: microphone } } : true;
  for (const constraints of [{ audio, video }, { audio }, { video }]) {
    try {
      local = await navigator.mediaDevices.getUserMedia(constraints);
      break;
    } catch (_) { /* try with less */ }
  }
  if (!local) {
    note.textContent = 'No camera or microphone could be opened: you can watch and chat.';
    note.hidden = false;
  }
  $('preview').srcObject = local;
  await listDevices();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [['videoinput', $('camera')], ['audioinput', $('microphone')]]) {
    const current = local && local.getTracks().find((t) => (kind === 'videoinput' ? t.kind === 'video' : t.kind === 'audio'));
    const chosen = current ? current.getSettings().deviceId : select.value;
    select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
      const option = new Option(d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i + 1}`, d.deviceId);
      option.selected = d.deviceId === chosen;
      return option;
    }));
  }
}

async function tokenFor(name, roomName) {
  if (givenToken) return givenToken;
  const grants = ['publish', 'subscribe', 'publish_data'];
  if ($('may-record').checked) grants.push('record');
  const query = new URLSearchParams({ room: roomName, identity: name, name, grants: grants.join(',') });
  const response = await fetch(`/dev/token?${query}`);
  if (response.status === 404) throw new Error('This server is in production mode: open the page with ?token=<an access token>.');
  if (!response.ok) throw new Error(await response.text());
  return (await response.json()).token;
}

async function join(event) {
  event.preventDefault();
  const button = $('join-button');
  button.disabled = true;
  $('join-error').textContent = '';
  const name = $('name').value.trim();
  const roomName = $('room').value.trim();
  try {
    await previewing;
    const token = await tokenFor(name, roomName);
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    room = await Switchboard.connect({ url, token });
    window.room = room;
    localStorage.setItem('switchboard.name', name);
    if (!givenToken) history.replaceState(null, '', `?room=${encodeURIComponent(roomName)}&name=${encodeURIComponent(name)}`);
    enterMeeting();
    if (local && room.grants.publish) await room.publish(local);
  } catch (err) {
    $('join-error').textContent = err.message;
    if (room) room.leave();
    room = null;
    show('join-screen');
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- the meeting

function displayName(participantId) {
  if (room.me && participantId === room.me.participant_id) return room.me.name || room.me.identity;
  const who = room.participants.get(participantId);
  return who ? who.name || who.identity : participantId;
}

function note(text) {
  const line = document.createElement('div');
  line.className = 'notice';
  line.textContent = text;
  addLine(line);
}

function addLine(line) {
  const log = $('log');
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
}

function setStatus(text, reconnecting = false) {
  $('status').textContent = text;
  $('status').classList.toggle('reconnecting', reconnecting);
}

/** Whether a track is a screen share, as its publisher said. */
function isScreen(trackId) {
  return room.tracks.get(trackId)?.source === 'screen_share';
}

/** The tile (a figure with a video and its caption) showing `key`, made on first use. */
function tile(key, label, participantId, { screenShare = false } = {}) {
  let figure = document.getElementById('tile-' + key);
  if (!figure) {
    figure = document.createElement('figure');
    figure.id = 'tile-' + key;
    figure.className = 'tile' + (screenShare ? ' screen' : '');
    figure.dataset.participant = participantId;
    figure.dataset.initial = (label[0] || '?').toUpperCase();
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true; // sound plays through the audio elements
    const caption = document.createElement('figcaption');
    caption.textContent = label;
    figure.append(video, caption);
    $('videos').appendChild(figure);
  }
  return figure;
}

function removeTile(key) {
  const figure = document.getElementById('tile-' + key);
  if (figure) figure.remove();
}

function onTrack({ participantId, trackId, track }) {
  if (track.kind === 'audio') {
    let audio = document.getElementById('audio-' + trackId);
    if (!audio) {
      audio = document.createElement('audio');
      audio.id = 'audio-' + trackId;
      audio.autoplay = true;
      audio.dataset.participant = participantId;
      document.body.appendChild(audio);
    }
    audio.srcObject = new MediaStream([track]);
    return;
  }
  const screenShare = isScreen(trackId);
  const label = displayName(participantId) + (screenShare ? ' (screen)' : '');
  const figure = tile(trackId, label, participantId, { screenShare });
  const described = room.tracks.get(trackId);
  figure.classList.toggle('camera-off', !!(described && described.muted));
  const video = figure.querySelector('video');
  video.srcObject = new MediaStream([track]);
  // The server sends no more of the video than the tile shows, and none while it is hidden.
  room.adaptTo(trackId, video);
}

function renderParticipants() {
  const list = $('participants');
  const people = [room.me, ...room.participants.values()];
  list.replaceChildren(...people.map((p) => {
    const item = document.createElement('li');
    item.dataset.participant = p.participant_id;
    const name = document.createElement('span');
    name.textContent = displayName(p.participant_id) + (p === room.me ? ' (you)' : '');
    const flags = document.createElement('span');
    flags.className = 'flags';
    const tracks = [...room.tracks.values()].filter((t) => t.participant_id === p.participant_id);
    const off = [];
    if (tracks.some((t) => t.kind === 'audio' && t.muted)) off.push('muted');
    if (tracks.some((t) => t.kind === 'video' && t.muted && !isScreen(t.track_id))) off.push('camera off');
    if (tracks.some((t) => t.kind === 'video' && isScreen(t.track_id))) off.push('sharing');
    flags.textContent = off.join(', ');
    item.append(name, flags);
    return item;
  }));
}

/** This participant's published track of `kind` that is not a screen share. */
function ownTrack(kind) {
  return room.ownTracks().find((t) => t.kind === kind && !(kind === 'video' && isScreen(t.track_id)));
}

/** Tells the server the microphone's and camera's state (once their tracks are published). */
async function syncMutes() {
  for (const [kind, muted] of [['audio', micMuted], ['video', cameraOff]]) {
    const track = ownTrack(kind);
    if (track && track.muted !== muted) {
      track.muted = muted;
      await room.mute(track.track_id, muted);
    }
  }
  renderParticipants();
}

async function toggleMic() {
  micMuted = !micMuted;
  if (local) for (const t of local.getAudioTracks()) t.enabled = !micMuted;
  $('toggle-mic').textContent = micMuted ? 'Unmute' : 'Mute';
  $('toggle-mic').setAttribute('aria-pressed', String(micMuted));
  await syncMutes();
}

async function toggleCamera() {
  cameraOff = !cameraOff;
  if (local) for (const t of local.getVideoTracks()) t.enabled = !cameraOff;
  $('toggle-camera').textContent = cameraOff ? 'Start camera' : 'Stop camera';
  $('toggle-camera').setAttribute('aria-pressed', String(cameraOff));
  tile('self', '', '').classList.toggle('camera-off', cameraOff);
  await syncMutes();
}

async function toggleScreen() {
  const button = $('share-screen');
  button.disabled = true;
  try {
    if (screen) {
      const sharing = screen;
      screen = null;
      removeTile('self-screen');
      await room.unpublish(sharing);
      stopTracks(sharing);
    } else {
      screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      const figure = tile('self-screen', 'Your screen', room.me.participant_id, { screenShare: true });
      figure.querySelector('video').srcObject = screen;
      screen.getVideoTracks()[0].addEventListener('ended', () => { if (screen) toggleScreen(); });
      await room.publish(screen, { screen: true });
    }
  } catch (err) {
    note(`! screen share: ${err.message}`);
    if (screen) { stopTracks(screen); screen = null; removeTile('self-screen'); }
  } finally {
    button.disabled = false;
    button.textContent = screen ? 'Stop sharing' : 'Share screen';
    button.setAttribute('aria-pressed', String(!!screen));
  }
}

function renderRecordButton() {
  const recording = room.recording.size > 0;
  $('record').textContent = recording ? 'Stop recording' : 'Start recording';
  $('record').setAttribute('aria-pressed', String(recording));
}

async function toggleRecording() {
  const button = $('record');
  button.disabled = true;
  try {
    if (room.recording.size > 0) {
      await room.stopRecording();
    } else {
      const started = await room.startRecording('mp4');
      for (const r of started.recordings) room.recording.set(r.recording_id, r);
    }
  } catch (err) {
    note(`! recording: ${err.message}`);
  } finally {
    button.disabled = false;
    renderRecordButton();
  }
}

/** Lists the room's recordings; while one is still being stored, looks again shortly. */
async function renderRecordings() {
  const current = room;
  let recordings;
  try {
    recordings = await current.recordings();
  } catch (err) {
    note(`! recordings: ${err.message}`);
    return;
  }
  if (room !== current) return;
  if (recordings.some((r) => r.status === 'recording') && current.recording.size === 0) {
    setTimeout(() => { if (room === current) renderRecordings(); }, 2000);
  }
  $('recordings').replaceChildren(...recordings.map((r) => {
    const item = document.createElement('li');
    item.dataset.recording = r.recording_id;
    const what = document.createElement('span');
    const started = new Date(r.started_at_ms).toLocaleTimeString();
    what.textContent = r.status === 'done' ? `${started}, ${r.duration_secs} s` : `${started}, ${r.status}`;
    const links = document.createElement('span');
    for (const [label, url] of [['MP4', r.mp4_url], ['HLS', r.hls_url]]) {
      if (!url) continue;
      const link = document.createElement('a');
      link.href = url;
      link.textContent = label;
      link.target = '_blank';
      link.rel = 'noopener';
      links.append(' ', link);
    }
    item.append(what, links);
    return item;
  }));
}

async function showQuality() {
  if (!room) return;
  const { rttMs, lossPercent } = await room.quality();
  const badge = $('quality');
  const level = lossPercent > 8 || (rttMs !== null && rttMs > 400) ? 'poor' : lossPercent > 2 || (rttMs !== null && rttMs > 150) ? 'fair' : 'good';
  badge.className = 'badge ' + level;
  badge.textContent = `connection: ${level}`;
  badge.title = `round trip ${rttMs === null ? 'not measured yet' : Math.round(rttMs) + ' ms'}, loss ${lossPercent.toFixed(1)} %`;
  badge.hidden = false;
}

function leftRoom(reason) {
  clearInterval(qualityTimer);
  $('quality').hidden = true;
  stopTracks(screen);
  stopTracks(local);
  screen = null;
  local = null;
  for (const element of document.querySelectorAll('audio')) element.remove();
  $('videos').replaceChildren();
  $('left-reason').textContent = reason;
  setStatus('');
  show('left-screen');
  room = null;
}

function enterMeeting() {
  show('meeting-screen');
  setStatus(`${room.name} as ${room.me.name || room.me.identity}`);
  $('log').replaceChildren();
  const self = tile('self', `${room.me.name || room.me.identity} (you)`, room.me.participant_id);
  self.querySelector('video').srcObject = local;
  $('toggle-mic').disabled = !local || local.getAudioTracks().length === 0 || !room.grants.publish;
  $('toggle-camera').disabled = !local || local.getVideoTracks().length === 0 || !room.grants.publish;
  $('share-screen').disabled = !room.grants.publish || !navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia;
  $('record').hidden = !room.grants.record;
  $('recordings-panel').hidden = !room.grants.record;
  $('chat-form').querySelector('button').disabled = !room.grants.publish_data;
  renderRecordButton();
  renderParticipants();
  if (room.grants.record) renderRecordings();

  room.on('track', onTrack);
  room.on('participant_joined', (p) => { note(`* ${displayName(p.participant_id)} joined`); renderParticipants(); });
  room.on('participant_left', (who) => {
    for (const element of document.querySelectorAll(`[data-participant="${CSS.escape(who.participant_id)}"]`)) {
      if (element.tagName !== 'LI') element.remove();
    }
    note(`* ${who.name || who.identity || who.participant_id} left`);
    renderParticipants();
  });
  room.on('track_published', (track) => {
    if (track.participant_id === room.me.participant_id) syncMutes();
    renderParticipants();
  });
  room.on('track_unpublished', (trackId) => { removeTile(trackId); const a = $('audio-' + trackId); if (a) a.remove(); renderParticipants(); });
  room.on('track_muted', ({ track_id: trackId, muted }) => {
    const figure = document.getElementById('tile-' + trackId);
    if (figure) figure.classList.toggle('camera-off', muted);
    renderParticipants();
  });
  room.on('active_speakers', (speakers) => {
    const speaking = new Set(speakers.map((s) => s.participant_id));
    for (const element of document.querySelectorAll('#videos .tile:not(.screen), #participants li')) {
      element.classList.toggle('speaking', speaking.has(element.dataset.participant));
    }
  });
  room.on('chat', (m) => {
    const line = document.createElement('div');
    line.textContent = `${displayName(m.participant_id)}: ${m.text}`;
    addLine(line);
  });
  room.on('recording', (r) => {
    note(`* recording of ${displayName(r.participant_id)} ${r.state} (${r.format})`);
    renderRecordButton();
    if (room.grants.record && r.state !== 'started') renderRecordings();
  });
  room.on('error', (e) => note(`! ${e.code || ''} ${e.message || e}`));
  room.on('reconnecting', () => setStatus('reconnecting…', true));
  room.on('resumed', () => { setStatus(`${room.name} as ${room.me.name || room.me.identity}`); note('* reconnected'); });
  room.on('room_closed', (reason) => leftRoom(`The room was closed${reason ? ': ' + reason : ''}.`));
  room.on('removed', (reason) => leftRoom(`You were removed from the room${reason ? ': ' + reason : ''}.`));
  room.on('close', (e) => { if (room) leftRoom(`Disconnected (${e.reason || e.code}).`); });
  qualityTimer = setInterval(() => showQuality().catch(() => {}), 2000);
}

// ---------------------------------------------------------------- wiring

$('join-form').addEventListener('submit', join);
function preview() {
  previewing = startPreview().catch((err) => { $('preview-note').textContent = err.message; $('preview-note').hidden = false; });
}

$('camera').addEventListener('change', preview);
$('microphone').addEventListener('change', preview);
$('toggle-mic').addEventListener('click', toggleMic);
$('toggle-camera').addEventListener('click', toggleCamera);
$('share-screen').addEventListener('click', toggleScreen);
$('record').addEventListener('click', toggleRecording);
$('leave').addEventListener('click', async () => {
  const leaving = room;
  leftRoom('You left the room.');
  await leaving.leave();
});
$('rejoin').addEventListener('click', () => location.reload());
$('chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('chat-text');
  if (room && input.value.trim()) room.chat(input.value).catch((e) => note('! ' + e.message));
  input.value = '';
});

prefill();
show('join-screen');
preview();
