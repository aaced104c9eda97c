// Switchboard browser client (signaling protocol v1, see docs/protocol.md; API in
// docs/client.md).
//
// const room = await Switchboard.connect({ url, token });
// room.on('track', ({ participantId, trackId, track }) => ...);
// await room.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
// room.chat('hello'); room.mute(trackId, true); room.leave();

/**
 * The claims of an access token (`room`, `sub`, `name`, `grants`, ...), read without
 * verifying it: the server verifies; a page only uses them to decide what to offer.
 */
export function claimsOf(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload));
  } catch (_) {
    return {};
  }
}

/**
 * The simulcast layers of camera video, lowest first (the order the server ranks them in):
 * RIDs, size and most bits per second.
 */
const SIMULCAST_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/** `mid` → track id of each media section of an SDP that names its track (`a=msid`). */
function tracksByMid(sdp) {
  const found = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section);
    const msid = /^a=msid:\S+ (\S+)/m.exec(section);
    if (mid && msid) found.set(mid[1], msid[1]);
  }
  return found;
}

/** Close codes after which the server does not take the session back (docs/protocol.md). */
const FINAL_CLOSES = new Set([1000, 1008, 4000, 4001, 4003]);

export class Switchboard {
  static async connect({ url, token }, redirects = 0) {
    const room = new Switchboard(url, token);
    await room.#open();
    const joined = await room.#request({ type: 'join', token });
    if (joined.type === 'redirect') {
      // Another node hosts the room: join there (nodes sharing one Redis).
      room.leaving = true;
      room.ws.close();
      room.subscriber.close();
      if (redirects >= 3) throw new Error('too many redirects');
      const next = joined.url.replace(/^http/, 'ws').replace(/\/$/, '') + '/ws';
      return Switchboard.connect({ url: next, token }, redirects + 1);
    }
    room.name = joined.room;
    room.me = joined.participant;
    room.sessionId = joined.session_id;
    room.resumeGraceMs = joined.resume_grace_secs * 1000;
    room.participants = new Map(joined.participants.map((p) => [p.participant_id, p]));
    room.tracks = new Map(joined.tracks.map((t) => [t.track_id, t]));
    room.recording = new Map((joined.recordings || []).map((r) => [r.recording_id, r]));
    // STUN/TURN servers the node hands out, if any (none is needed to reach it).
    room.iceServers = joined.ice_servers || [];
    if (room.iceServers.length) room.subscriber.setConfiguration({ ...room.subscriber.getConfiguration(), iceServers: room.iceServers });
    return room;
  }

  constructor(url, token) {
    this.url = url;
    this.token = token;
    this.grants = claimsOf(token).grants || {};
    this.nextId = 1;
    this.pending = new Map();
    this.handlers = new Map();
    this.publisher = null;
    this.leaving = false;
    this.midTracks = new Map();
    this.iceServers = [];
    this.subscriber = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    this.subscriber.ontrack = (event) => {
      const stream = event.streams[0];
      const trackId = this.midTracks.get(event.transceiver.mid) || event.track.id;
      this.#emit('track', { participantId: stream ? stream.id : null, trackId, track: event.track, stream });
    };
    this.subscriber.onicecandidate = (event) => this.#trickle('subscriber', event.candidate);
    this.subscriberQueue = Promise.resolve();
    this.publisherQueue = Promise.resolve();
    /** The room's active speakers, loudest first: `{participant_id, level}`. */
    this.speakers = [];
    /** What each published MediaStreamTrack captures, as `publish` was told. */
    this.sources = new Map();
    /** Track id → stops watching the element that shows it (`adaptTo`). */
    this.adapting = new Map();
  }

  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, []);
    this.handlers.get(event).push(handler);
    return this;
  }

  #emit(event, payload) {
    for (const handler of this.handlers.get(event) || []) handler(payload);
  }

  #open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url);
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error('signaling connection failed'));
      this.ws.onclose = (event) => this.#onClose(event);
      this.ws.onmessage = (event) => this.#onMessage(JSON.parse(event.data));
    });
  }

  // A dropped connection (not a leave, not a server close) is resumed within the grace
  // period: media keeps flowing meanwhile, and messages sent to us are replayed.
  async #onClose(event) {
    for (const { reject } of this.pending.values()) reject(new Error('connection lost'));
    this.pending.clear();
    if (this.leaving || FINAL_CLOSES.has(event.code) || !this.sessionId) {
      this.#emit('close', { code: event.code, reason: event.reason });
      return;
    }
    this.#emit('reconnecting', {});
    const deadline = Date.now() + this.resumeGraceMs;
    while (Date.now() < deadline && !this.leaving) {
      await new Promise((r) => setTimeout(r, 1000));
      try {
        await this.#open();
        await this.#request({ type: 'resume', session_id: this.sessionId });
        this.#emit('resumed', {});
        return;
      } catch (_) {
        if (this.ws.readyState === WebSocket.OPEN) this.ws.close();
      }
    }
    this.#emit('close', { code: event.code, reason: 'could not resume' });
  }

  #send(message) {
    this.ws.send(JSON.stringify(message));
  }

  #request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.#send({ ...message, id });
    });
  }

  #trickle(target, candidate) {
    if (!candidate || !candidate.candidate) return;
    this.#send({ type: 'trickle', target, candidate: candidate.candidate, sdp_mid: candidate.sdpMid, sdp_mline_index: candidate.sdpMLineIndex });
  }

  #onMessage(message) {
    if (message.id !== undefined && message.id !== null && this.pending.has(message.id)) {
      const { resolve, reject } = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.type === 'error') reject(Object.assign(new Error(message.message), { code: message.code }));
      else resolve(message);
      return;
    }
    switch (message.type) {
      case 'subscribe_offer':
        this.subscriberQueue = this.subscriberQueue.then(() => this.#answerSubscriber(message.sdp)).catch((e) => this.#emit('error', e));
        break;
      case 'participant_joined':
        this.participants.set(message.participant.participant_id, message.participant);
        this.#emit('participant_joined', message.participant);
        break;
      case 'participant_left': {
        const who = this.participants.get(message.participant_id) || { participant_id: message.participant_id };
        this.participants.delete(message.participant_id);
        for (const [id, track] of this.tracks) if (track.participant_id === message.participant_id) this.tracks.delete(id);
        this.#emit('participant_left', who);
        break;
      }
      case 'track_published':
        this.tracks.set(message.track.track_id, message.track);
        this.#emit('track_published', message.track);
        break;
      case 'track_unpublished':
        this.#stopAdapting(message.track_id);
        this.tracks.delete(message.track_id);
        this.#emit('track_unpublished', message.track_id);
        break;
      case 'track_muted': {
        const track = this.tracks.get(message.track_id);
        if (track) track.muted = message.muted;
        this.#emit('track_muted', message);
        break;
      }
      case 'chat':
        this.#emit('chat', message);
        break;
      case 'publish_layers':
        // Dynacast: send only the simulcast layers someone needs.
        this.publisherQueue = this.publisherQueue.then(() => this.#sendLayers(message.mid, message.active)).catch((e) => this.#emit('error', e));
        break;
      case 'active_speakers':
        this.speakers = message.speakers;
        this.#emit('active_speakers', message.speakers);
        break;
      case 'recording':
        if (message.state === 'started') this.recording.set(message.recording_id, message);
        else this.recording.delete(message.recording_id);
        this.#emit('recording', message);
        break;
      case 'room_closed':
        this.#emit('room_closed', message.reason);
        break;
      case 'removed':
        this.#emit('removed', message.reason);
        break;
      case 'ping':
        this.#send({ type: 'pong' });
        break;
      case 'error':
        this.#emit('error', message);
        break;
    }
  }

  /** Turns the simulcast layers (by RID) of the publisher's section `mid` on or off. */
  async #sendLayers(mid, active) {
    const transceiver = this.publisher && this.publisher.getTransceivers().find((t) => t.mid === mid);
    if (!transceiver) return;
    const parameters = transceiver.sender.getParameters();
    const changes = (parameters.encodings || []).filter((e) => e.rid in active && e.active !== active[e.rid]);
    if (changes.length === 0) return;
    for (const encoding of changes) encoding.active = active[encoding.rid];
    await transceiver.sender.setParameters(parameters);
  }

  async #answerSubscriber(sdp) {
    for (const [mid, trackId] of tracksByMid(sdp)) this.midTracks.set(mid, trackId);
    await this.subscriber.setRemoteDescription({ type: 'offer', sdp });
    const answer = await this.subscriber.createAnswer();
    await this.subscriber.setLocalDescription(answer);
    await this.#request({ type: 'subscribe_answer', sdp: answer.sdp });
  }

  /** Offers the publisher connection as it now is and applies the server's answer. */
  #negotiatePublisher() {
    const run = async () => {
      const offer = await this.publisher.createOffer();
      await this.publisher.setLocalDescription(offer);
      const sources = {};
      for (const transceiver of this.publisher.getTransceivers()) {
        const source = transceiver.sender.track && this.sources.get(transceiver.sender.track);
        if (source && transceiver.mid !== null) sources[transceiver.mid] = source;
      }
      const reply = await this.#request({ type: 'publish_offer', sdp: offer.sdp, sources });
      await this.publisher.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
    };
    const done = this.publisherQueue.then(run);
    this.publisherQueue = done.catch(() => {});
    return done;
  }

  /**
   * Sends every track of `stream`; resolves once the server has answered. `screen`: the
   * stream is a screen share (its tracks' `source` is `screen_share` and
   * `screen_share_audio`, else `camera` and `microphone`). `simulcast`: camera video of
   * 360 lines or more is sent as three layers (quarter, half and full size), of which each
   * subscriber gets the one that suits it.
   */
  async publish(stream, { screen = false, simulcast = true } = {}) {
    if (!this.publisher) {
      this.publisher = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: this.iceServers });
      this.publisher.onicecandidate = (event) => this.#trickle('publisher', event.candidate);
    }
    for (const track of stream.getTracks()) {
      const video = track.kind === 'video';
      this.sources.set(track, screen ? (video ? 'screen_share' : 'screen_share_audio') : (video ? 'camera' : 'microphone'));
      const layered = simulcast && video && !screen && (track.getSettings().height || 0) >= 360;
      const sendEncodings = layered ? SIMULCAST_LAYERS.map((layer) => ({ ...layer })) : undefined;
      this.publisher.addTransceiver(track, { direction: 'sendonly', streams: [stream], sendEncodings });
    }
    await this.#negotiatePublisher();
  }

  /** Stops sending the tracks of `stream`; the server unpublishes them. */
  async unpublish(stream) {
    if (!this.publisher) return;
    const tracks = new Set(stream.getTracks());
    for (const transceiver of this.publisher.getTransceivers()) {
      if (transceiver.sender.track && tracks.has(transceiver.sender.track)) transceiver.stop();
    }
    for (const track of tracks) this.sources.delete(track);
    await this.#negotiatePublisher();
  }

  /** The server-side descriptions of this participant's published tracks, oldest first. */
  ownTracks() {
    return [...this.tracks.values()].filter((t) => t.participant_id === this.me.participant_id);
  }

  mute(trackId, muted) {
    return this.#request({ type: 'mute', track_id: trackId, muted });
  }

  /**
   * Tells the server how this client shows a track it receives (adaptive stream): the
   * `width` and `height` of the box it is rendered in, in device pixels, or `paused` when it
   * is not shown. The server sends no simulcast layer larger than the box needs, and nothing
   * of a paused track.
   */
  updateSubscription(trackId, { width, height, paused = false } = {}) {
    const message = { type: 'update_subscription', track_id: trackId, paused };
    // The server takes sides of at most 16384 pixels.
    const side = (pixels) => Math.min(16384, Math.ceil(pixels));
    if (width !== undefined && height !== undefined) Object.assign(message, { width: side(width), height: side(height) });
    return this.#request(message);
  }

  /**
   * Keeps the server told how `element`, the video element showing `trackId`, is shown: its
   * size while it is on screen, paused while it is not (scrolled away, hidden, or the page in
   * the background). Until the track is unpublished, the room left, or the returned function
   * called; a later call for the same track replaces this one.
   */
  adaptTo(trackId, element) {
    this.#stopAdapting(trackId);
    let intersecting = true;
    let sent = null;
    let timer = null;
    const send = () => {
      timer = null;
      const box = element.getBoundingClientRect();
      const scale = window.devicePixelRatio || 1;
      const shown = intersecting && document.visibilityState === 'visible' && box.width > 0 && box.height > 0;
      const view = shown ? { width: box.width * scale, height: box.height * scale } : { paused: true };
      const key = JSON.stringify(shown ? [Math.ceil(view.width), Math.ceil(view.height)] : 'paused');
      if (key === sent) return;
      sent = key;
      this.updateSubscription(trackId, view).catch(() => { sent = null; });
    };
    // A resize is told once it settles, not at every frame of it.
    const schedule = () => { if (timer === null) timer = setTimeout(send, 150); };
    const resized = new ResizeObserver(schedule);
    const seen = new IntersectionObserver((entries) => {
      intersecting = entries[entries.length - 1].isIntersecting;
      schedule();
    });
    resized.observe(element);
    seen.observe(element);
    document.addEventListener('visibilitychange', schedule);
    const stop = () => {
      resized.disconnect();
      seen.disconnect();
      document.removeEventListener('visibilitychange', schedule);
      clearTimeout(timer);
      if (this.adapting.get(trackId) === stop) this.adapting.delete(trackId);
    };
    this.adapting.set(trackId, stop);
    return stop;
  }

  #stopAdapting(trackId) {
    const stop = this.adapting.get(trackId);
    if (stop) stop();
  }

  chat(text) {
    return this.#request({ type: 'chat', text });
  }

  /** Records every publisher of the room (needs the `record` grant). */
  startRecording(format = 'mp4') {
    return this.#request({ type: 'start_recording', format });
  }

  /** Stops the room's recording. */
  stopRecording() {
    return this.#request({ type: 'stop_recording' });
  }

  /** The room's recordings with their download links, from the HTTP API (`record` grant). */
  async recordings() {
    const base = this.url.replace(/^ws/, 'http').replace(/\/ws$/, '');
    const response = await fetch(`${base}/api/recordings?meeting=${encodeURIComponent(this.name)}`, {
      headers: { authorization: `Bearer ${this.token}` },
    });
    const body = await response.json();
    if (!response.ok) throw Object.assign(new Error(body.message || response.statusText), { code: body.error });
    return body.recordings;
  }

  /**
   * Connection figures from both peer connections' statistics: `rttMs` (the selected
   * candidate pair's round trip, null before one is measured) and, since the previous
   * call, `lossPercent` of the packets meant for this client.
   */
  async quality() {
    let rtt = null;
    let received = 0;
    let lost = 0;
    for (const pc of [this.subscriber, this.publisher]) {
      if (!pc) continue;
      const stats = await pc.getStats();
      stats.forEach((s) => {
        const pair = s.type === 'transport' && stats.get(s.selectedCandidatePairId);
        if (pair && pair.currentRoundTripTime !== undefined) rtt = Math.max(rtt || 0, pair.currentRoundTripTime * 1000);
        if (s.type === 'inbound-rtp') { received += s.packetsReceived || 0; lost += Math.max(0, s.packetsLost || 0); }
      });
    }
    const previous = this.lastQuality || { received: 0, lost: 0 };
    this.lastQuality = { received, lost };
    const newReceived = received - previous.received;
    const newLost = lost - previous.lost;
    const lossPercent = newReceived + newLost > 0 ? (100 * newLost) / (newReceived + newLost) : 0;
    return { rttMs: rtt, lossPercent };
  }

  async leave() {
    this.leaving = true;
    for (const stop of [...this.adapting.values()]) stop();
    try { await this.#request({ type: 'leave' }); } catch (_) { /* closing anyway */ }
    this.ws.close();
    if (this.publisher) this.publisher.close();
    this.subscriber.close();
  }
}

window.Switchboard = Switchboard;
