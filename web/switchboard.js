// Switchboard browser client (signaling protocol v1, see docs/protocol.md).
//
// const room = await Switchboard.connect({ url, token });
// room.on('track', ({ participantId, track, stream }) => ...);
// await room.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
// room.chat('hello'); room.mute(trackId, true); room.leave();

export class Switchboard {
  static async connect({ url, token }, redirects = 0) {
    const room = new Switchboard(url);
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
    room.me = joined.participant;
    room.sessionId = joined.session_id;
    room.resumeGraceMs = joined.resume_grace_secs * 1000;
    room.participants = new Map(joined.participants.map((p) => [p.participant_id, p]));
    room.tracks = new Map(joined.tracks.map((t) => [t.track_id, t]));
    return room;
  }

  constructor(url) {
    this.url = url;
    this.nextId = 1;
    this.pending = new Map();
    this.handlers = new Map();
    this.publisher = null;
    this.leaving = false;
    this.subscriber = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    this.subscriber.ontrack = (event) => {
      const stream = event.streams[0];
      this.#emit('track', { participantId: stream ? stream.id : null, track: event.track, stream });
    };
    this.subscriber.onicecandidate = (event) => this.#trickle('subscriber', event.candidate);
    this.subscriberQueue = Promise.resolve();
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
    const serverClosed = event.code === 1000 || event.code === 1008 || event.code === 4000 || event.code === 4001;
    if (this.leaving || serverClosed || !this.sessionId) {
      this.#emit('close', { code: event.code, reason: event.reason });
      return;
    }
    const deadline = Date.now() + this.resumeGraceMs;
    while (Date.now() < deadline) {
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
      case 'participant_left':
        this.participants.delete(message.participant_id);
        this.#emit('participant_left', message.participant_id);
        break;
      case 'track_published':
        this.tracks.set(message.track.track_id, message.track);
        this.#emit('track_published', message.track);
        break;
      case 'track_unpublished':
        this.tracks.delete(message.track_id);
        this.#emit('track_unpublished', message.track_id);
        break;
      case 'track_muted':
        this.#emit('track_muted', message);
        break;
      case 'chat':
        this.#emit('chat', message);
        break;
      case 'recording':
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

  async #answerSubscriber(sdp) {
    await this.subscriber.setRemoteDescription({ type: 'offer', sdp });
    const answer = await this.subscriber.createAnswer();
    await this.subscriber.setLocalDescription(answer);
    await this.#request({ type: 'subscribe_answer', sdp: answer.sdp });
  }

  async publish(stream) {
    if (!this.publisher) {
      this.publisher = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      this.publisher.onicecandidate = (event) => this.#trickle('publisher', event.candidate);
    }
    for (const track of stream.getTracks()) this.publisher.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    const offer = await this.publisher.createOffer();
    await this.publisher.setLocalDescription(offer);
    const reply = await this.#request({ type: 'publish_offer', sdp: offer.sdp });
    await this.publisher.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
  }

  /** The server-side track ids of this participant's published tracks. */
  ownTracks() {
    return [...this.tracks.values()].filter((t) => t.participant_id === this.me.participant_id);
  }

  mute(trackId, muted) {
    return this.#request({ type: 'mute', track_id: trackId, muted });
  }

  chat(text) {
    return this.#request({ type: 'chat', text });
  }

  async leave() {
    this.leaving = true;
    try { await this.#request({ type: 'leave' }); } catch (_) { /* closing anyway */ }
    this.ws.close();
    if (this.publisher) this.publisher.close();
    this.subscriber.close();
  }
}

window.Switchboard = Switchboard;
