//! The media driver: the one task that owns the UDP socket, the core's timer and the core.
//!
//! gRPC handlers never touch the core. They send a command through a bounded channel and
//! await a oneshot reply ([`DriverHandle`]); the driver runs each command between datagrams, so
//! the core needs no lock. After every input (command, datagram, timeout) the driver drains
//! `poll_output` until the core returns its next deadline: datagrams are queued and leave in
//! batches of `sendmmsg` ([`batch`]), core events go to the participants' event streams and to
//! the event bus.
//!
//! Identities: the service speaks of (room, participant); the core of node-unique participant
//! ids. The driver keeps the mapping and gives each participant the short core id `p<n>`,
//! unique for the life of the node; track ids (`p<n>-<mid>`) derive from it.
//!
//! The core's events are the single source of truth for departures: `leave`, `close_room` and
//! the core's own timeouts all end in `CoreEvent::TrackUnpublished` / `ParticipantLeft`, which
//! the driver turns into stream and bus events. Outputs are drained after every input, so the
//! driver's maps agree with the core whenever the next command runs.
//!
//! Tokens: each participant's slot holds its [`Opener`], the `Credential` of the token that
//! opened it; a small task per participant waits for that token to lapse and reports it on a
//! channel the driver selects on, and the driver then removes the participant like a `leave`
//! (its stream gets the UNAUTHENTICATED status first). The task ends with the slot.
//! [`DriverHandle::claim`] tells callers whether a token is the opener's and renews the
//! credential with it.
//!
//! Rooms: each room remembers since when it is empty; a periodic sweep (a quarter of
//! `empty_room_timeout`, 10 ms to 1 s) closes those empty for longer. A join that creates its
//! room (WHIP) removes it again in the same step when the join fails.
//!
//! Layout: `handle` holds the commands and [`DriverHandle`], [`batch`] the batched sends; this
//! module the task itself.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rethink_common::token::TokenError;
use rethink_proto::v1::{
    SfuConnected, SfuMediaKind, SfuNodeLoad, SfuParticipantEvent, SfuParticipantJoined,
    SfuParticipantLeft, SfuParticipantStats, SfuRenegotiation, SfuRoomStats, SfuTrackEvent,
    sfu_participant_event::Event as ParticipantEvent,
};
use rethink_sfu_core::{CoreError, CoreEvent, LeaveReason, Output, SfuCore, TrackId, TrackKind};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::SfuError;
use crate::events::BusEvent;

pub mod batch;
mod handle;

use self::batch::SendBatch;
use self::handle::Command;
pub use self::handle::{DriverHandle, EventItem, JoinSpec, Opener, Ownership};

/// Capacity of the command channel; handlers wait when the driver is this far behind.
const COMMAND_QUEUE: usize = 1024;
/// Events kept for a participant whose `Events` stream is not open (yet).
const EVENT_BACKLOG: usize = 256;
/// Capacity of one participant's open event stream; a stream this far behind is closed (its
/// reader must reopen it and fetch state again) rather than stalling the media loop.
const EVENT_STREAM_QUEUE: usize = 256;
/// Datagrams read in one go before outputs are drained, to amortize the wake-up.
const RECV_BATCH: usize = 64;
/// Largest datagram read; anything longer is truncated and dropped by the core.
const MAX_DATAGRAM: usize = 2048;

/// Limits the driver enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Most participants per room.
    pub max_participants_per_room: usize,
    /// How long a room may stay empty before it is closed.
    pub empty_room_timeout: Duration,
}

/// A room as the driver knows it.
struct RoomEntry {
    /// participant -> core id
    members: HashMap<String, String>,
    /// Since when the room has had nobody (created and not joined yet, or the last one left).
    empty_since: Option<Instant>,
}

impl RoomEntry {
    fn new(now: Instant) -> Self {
        Self {
            members: HashMap::new(),
            empty_since: Some(now),
        }
    }
}

/// One participant as the driver knows it.
struct Slot {
    room: String,
    participant: String,
    opener: Opener,
    /// Dropped with the slot, which ends the task watching the opener's token.
    _watch: oneshot::Sender<()>,
    stream: Option<mpsc::Sender<EventItem>>,
    backlog: VecDeque<SfuParticipantEvent>,
}

/// A published track, as announced to clients.
struct Track {
    room: String,
    /// The publisher's name in the room.
    participant: String,
    kind: SfuMediaKind,
}

/// Counters exported on `/metrics`, held as handles so the hot path does no registry lookup.
struct Counters {
    datagrams_in: metrics::Counter,
    datagrams_out: metrics::Counter,
    bytes_in: metrics::Counter,
    bytes_out: metrics::Counter,
    send_errors: metrics::Counter,
    stream_lagged: metrics::Counter,
    /// Dropped by the core: from no known address, naming no known ICE ufrag.
    unknown_source: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        Self {
            datagrams_in: metrics::counter!("sfu_udp_datagrams_received_total"),
            datagrams_out: metrics::counter!("sfu_udp_datagrams_sent_total"),
            bytes_in: metrics::counter!("sfu_udp_bytes_received_total"),
            bytes_out: metrics::counter!("sfu_udp_bytes_sent_total"),
            send_errors: metrics::counter!("sfu_udp_send_errors_total"),
            stream_lagged: metrics::counter!("sfu_event_streams_lagged_total"),
            unknown_source: metrics::counter!("sfu_udp_datagrams_unknown_source_total"),
        }
    }
}

/// What the driver needs to start.
pub struct DriverSetup {
    /// The core, already configured with the advertised candidates.
    pub core: SfuCore,
    /// The one UDP socket.
    pub socket: UdpSocket,
    /// Kernel send and receive buffer size to ask for, in bytes.
    pub buffer_bytes: usize,
    /// The advertised candidates. A socket bound to 0.0.0.0 does not learn which address a
    /// datagram was sent to, so the core is told the first candidate of the sender's address
    /// family as the destination.
    pub candidates: Vec<SocketAddr>,
    /// This node's id, put in bus events.
    pub node_id: String,
    /// Limits.
    pub limits: Limits,
    /// Where bus events go (a task publishes them, so the media loop never waits on Redis).
    pub bus: mpsc::Sender<BusEvent>,
}

/// Starts the driver task; it ends when every [`DriverHandle`] is dropped.
pub fn spawn(setup: DriverSetup) -> (DriverHandle, tokio::task::JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let (count_tx, participants) = watch::channel(0);
    let (lapses, lapsed_rx) = mpsc::unbounded_channel();
    size_buffers(&setup.socket, setup.buffer_bytes);
    let driver = Driver {
        core: setup.core,
        socket: Arc::new(setup.socket),
        batch: SendBatch::new(),
        local_v4: setup.candidates.iter().copied().find(SocketAddr::is_ipv4),
        local_v6: setup.candidates.iter().copied().find(SocketAddr::is_ipv6),
        node_id: setup.node_id,
        limits: setup.limits,
        bus: setup.bus,
        draining: false,
        rooms: HashMap::new(),
        slots: HashMap::new(),
        tracks: HashMap::new(),
        closing: Vec::new(),
        next_id: 0,
        lapses,
        lapsed: HashMap::new(),
        counters: Counters::new(),
        count_tx,
    };
    let task = tokio::spawn(driver.run(receiver, lapsed_rx));
    (DriverHandle::new(commands, participants), task)
}

/// Asks for `bytes` of kernel buffer in each direction and logs what the kernel granted
/// (Linux caps the request at `net.core.rmem_max` / `wmem_max`, then doubles it for its own
/// bookkeeping). Fan-out sends bursts of a whole frame to every subscriber at once; a small
/// buffer turns those bursts into `EAGAIN` waits, and a small receive buffer into drops.
fn size_buffers(socket: &UdpSocket, bytes: usize) {
    let socket = socket2::SockRef::from(socket);
    if let Err(error) = socket.set_recv_buffer_size(bytes) {
        tracing::warn!(%error, bytes, "cannot size the udp receive buffer");
    }
    if let Err(error) = socket.set_send_buffer_size(bytes) {
        tracing::warn!(%error, bytes, "cannot size the udp send buffer");
    }
    match (socket.recv_buffer_size(), socket.send_buffer_size()) {
        (Ok(receive), Ok(send)) => {
            tracing::info!(requested = bytes, receive, send, "udp socket buffers");
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cannot read the udp socket buffer sizes");
        }
    }
}

struct Driver {
    core: SfuCore,
    socket: Arc<UdpSocket>,
    /// Datagrams of the current drain, not yet sent.
    batch: SendBatch,
    local_v4: Option<SocketAddr>,
    local_v6: Option<SocketAddr>,
    node_id: String,
    limits: Limits,
    bus: mpsc::Sender<BusEvent>,
    draining: bool,
    rooms: HashMap<String, RoomEntry>,
    /// core id -> slot
    slots: HashMap<String, Slot>,
    tracks: HashMap<TrackId, Track>,
    /// Rooms closed by the current command; removed after their departures are reported.
    closing: Vec<String>,
    next_id: u64,
    /// Where the token watchers report a participant whose token lapsed.
    lapses: mpsc::UnboundedSender<(String, TokenError)>,
    /// Participants removed because their token lapsed, until their departure is reported.
    lapsed: HashMap<String, TokenError>,
    counters: Counters,
    count_tx: watch::Sender<usize>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut lapses: mpsc::UnboundedReceiver<(String, TokenError)>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let socket = self.socket.clone();
        let mut deadline = self.drain_outputs().await;
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut sweep = tokio::time::interval(sweep_period(self.limits.empty_room_timeout));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    match command {
                        None | Some(Command::Stop) => break,
                        Some(command) => self.handle_command(command),
                    }
                }
                received = socket.recv_from(&mut buf) => {
                    match received {
                        Ok((len, source)) => {
                            self.receive(source, &buf[..len]);
                            // More may be queued: take them before paying for a drain.
                            for _ in 1..RECV_BATCH {
                                match socket.try_recv_from(&mut buf) {
                                    Ok((len, source)) => self.receive(source, &buf[..len]),
                                    Err(_) => break,
                                }
                            }
                            self.counters
                                .unknown_source
                                .absolute(self.core.datagrams_from_unknown_sources());
                        }
                        // ICMP errors (port unreachable of a gone peer) surface here; the
                        // socket itself stays usable.
                        Err(error) => tracing::debug!(%error, "udp receive failed"),
                    }
                }
                () = &mut sleep => {
                    self.core.handle_timeout(Instant::now());
                }
                _ = sweep.tick() => self.close_idle_rooms(Instant::now()),
                Some((id, reason)) = lapses.recv() => self.token_lapsed(id, reason),
            }
            let next = self.drain_outputs().await;
            self.finish_closing();
            if next != deadline {
                deadline = next;
                sleep.as_mut().reset(deadline.into());
            }
        }
        tracing::debug!("media driver stopped");
    }

    fn receive(&mut self, source: SocketAddr, data: &[u8]) {
        self.counters.datagrams_in.increment(1);
        self.counters.bytes_in.increment(data.len() as u64);
        let local = if source.is_ipv4() {
            self.local_v4.or(self.local_v6)
        } else {
            self.local_v6.or(self.local_v4)
        };
        let Some(local) = local else {
            return;
        };
        self.core
            .handle_datagram(Instant::now(), source, local, data);
    }

    /// Polls the core until it names its next deadline, sending its datagrams in batches;
    /// returns that deadline once every datagram is sent.
    async fn drain_outputs(&mut self) -> Instant {
        loop {
            match self.core.poll_output() {
                Output::Transmit(transmit) => {
                    self.batch.push(transmit.destination, transmit.contents);
                    if self.batch.is_full() {
                        self.send_batch().await;
                    }
                }
                Output::Event(event) => self.handle_core_event(event),
                Output::Timeout(deadline) => {
                    self.send_batch().await;
                    return deadline;
                }
            }
        }
    }

    async fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let sent = self.batch.send(&self.socket).await;
        self.counters.datagrams_out.increment(sent.datagrams);
        self.counters.bytes_out.increment(sent.bytes);
        self.counters.send_errors.increment(sent.errors);
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::CreateRoom { room, reply } => {
                let _ = reply.send(self.create_room(room, now));
            }
            Command::CloseRoom { room, reply } => {
                let _ = reply.send(self.close_room(&room, now));
            }
            Command::Join { spec, reply } => {
                let _ = reply.send(self.join(spec, now));
            }
            Command::Claim {
                room,
                participant,
                claims,
                renew,
                reply,
            } => {
                let _ = reply.send(self.claim(&room, &participant, &claims, renew));
            }
            Command::PatchIce {
                room,
                participant,
                fragment,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .patch_ice(&id, &fragment, now)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::AddCandidate {
                room,
                participant,
                candidate,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .add_remote_candidate(&id, &candidate)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::Leave {
                room,
                participant,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .leave(&id, now)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::SetSubscribed {
                room,
                participant,
                track,
                on,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .set_subscribed(&id, &TrackId::from(track), on, now)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::AcceptAnswer {
                room,
                participant,
                answer,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .accept_answer(&id, &answer, now)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::AcceptOffer {
                room,
                participant,
                offer,
                reply,
            } => {
                let result = self.core_id(&room, &participant).and_then(|id| {
                    self.core
                        .accept_offer(&id, &offer, now)
                        .map_err(|e| map_core_error(e, &room, &participant))
                });
                let _ = reply.send(result);
            }
            Command::Events {
                room,
                participant,
                reply,
            } => {
                let _ = reply.send(self.open_events(&room, &participant));
            }
            Command::RoomStats { room, reply } => {
                let _ = reply.send(self.room_stats(&room));
            }
            Command::ParticipantStats {
                room,
                participant,
                reply,
            } => {
                let result = self
                    .core_id(&room, &participant)
                    .map(|id| self.participant_stats(&id));
                let _ = reply.send(result);
            }
            Command::Load { reply } => {
                let _ = reply.send(Ok(self.load()));
            }
            Command::Drain => self.draining = true,
            Command::Stop => {}
            Command::CloseAll { reply } => {
                let rooms: Vec<String> = self.rooms.keys().cloned().collect();
                for room in rooms {
                    let _ = self.close_room(&room, now);
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn core_id(&self, room: &str, participant: &str) -> Result<String, SfuError> {
        let entry = self
            .rooms
            .get(room)
            .ok_or_else(|| SfuError::RoomNotFound(room.to_owned()))?;
        entry
            .members
            .get(participant)
            .cloned()
            .ok_or_else(|| SfuError::ParticipantNotFound {
                room: room.to_owned(),
                participant: participant.to_owned(),
            })
    }

    fn create_room(&mut self, room: String, now: Instant) -> Result<(), SfuError> {
        // An existing room is reported as such even while draining: callers that only want
        // the room to exist (WHIP) may still use it.
        if self.rooms.contains_key(&room) {
            return Err(SfuError::RoomExists(room));
        }
        if self.draining {
            return Err(SfuError::Draining);
        }
        if self.rooms.len() >= self.limits.max_rooms {
            return Err(SfuError::LimitReached(format!(
                "this node holds its maximum of {} rooms",
                self.limits.max_rooms
            )));
        }
        self.core
            .create_room(&room)
            .map_err(|e| map_core_error(e, &room, ""))?;
        tracing::info!(%room, "room created");
        self.rooms.insert(room, RoomEntry::new(now));
        Ok(())
    }

    fn close_room(&mut self, room: &str, now: Instant) -> Result<(), SfuError> {
        if !self.rooms.contains_key(room) {
            return Err(SfuError::RoomNotFound(room.to_owned()));
        }
        // The core reports every member's departure (reason "room closed") as events, handled
        // in the drain that follows while the room entry still exists.
        self.core
            .close_room(room, now)
            .map_err(|e| map_core_error(e, room, ""))?;
        self.closing.push(room.to_owned());
        tracing::info!(%room, "room closed");
        Ok(())
    }

    /// Joins a participant. With `create_room`, a missing room is made first and closed
    /// again when the join fails, so a bad offer leaves nothing behind.
    fn join(&mut self, spec: JoinSpec, now: Instant) -> Result<String, SfuError> {
        let created = spec.create_room && !self.rooms.contains_key(&spec.room);
        if created {
            self.create_room(spec.room.clone(), now)?;
        }
        let room = spec.room.clone();
        let result = self.join_existing(spec, now);
        if result.is_err() && created {
            // Nobody is in it: the core reports no departures, the entry can go at once.
            let _ = self.core.close_room(&room, now);
            self.rooms.remove(&room);
            tracing::debug!(%room, "room of a failed join removed");
        }
        result
    }

    fn join_existing(&mut self, spec: JoinSpec, now: Instant) -> Result<String, SfuError> {
        let JoinSpec {
            room,
            participant,
            offer,
            mode,
            opener,
            ..
        } = spec;
        let Some(entry) = self.rooms.get(&room) else {
            return Err(if self.draining {
                SfuError::Draining
            } else {
                SfuError::RoomNotFound(room)
            });
        };
        if entry.members.contains_key(&participant) {
            return Err(SfuError::ParticipantExists { room, participant });
        }
        if entry.members.len() >= self.limits.max_participants_per_room {
            return Err(SfuError::LimitReached(format!(
                "room {room:?} holds its maximum of {} participants",
                self.limits.max_participants_per_room
            )));
        }
        let id = format!("p{}", self.next_id);
        let answer = self
            .core
            .join_with(&room, &id, &offer, mode, now)
            .map_err(|e| map_core_error(e, &room, &participant))?;
        self.next_id += 1;
        let watch = self.watch_token(&id, &opener);
        let others: Vec<String> = entry.members.values().cloned().collect();
        let present: Vec<String> = entry.members.keys().cloned().collect();
        if let Some(entry) = self.rooms.get_mut(&room) {
            entry.members.insert(participant.clone(), id.clone());
            entry.empty_since = None;
        }
        self.slots.insert(
            id.clone(),
            Slot {
                room: room.clone(),
                participant: participant.clone(),
                opener,
                _watch: watch,
                stream: None,
                backlog: VecDeque::new(),
            },
        );
        self.tell_who_is_here(&id, &room, present);
        self.publish_count();
        tracing::info!(%room, %participant, "participant joined");
        let joined = SfuParticipantJoined {
            node_id: self.node_id.clone(),
            room,
            participant,
        };
        for other in &others {
            self.deliver(other, ParticipantEvent::ParticipantJoined(joined.clone()));
        }
        self.emit(BusEvent::Joined(joined));
        Ok(answer)
    }

    /// Whether `claims` are of the session's opener; renews the session with them if asked.
    fn claim(
        &mut self,
        room: &str,
        participant: &str,
        claims: &rethink_common::token::Claims,
        renew: bool,
    ) -> Result<Ownership, SfuError> {
        let id = self.core_id(room, participant)?;
        let slot = self
            .slots
            .get_mut(&id)
            .ok_or_else(|| SfuError::Internal(format!("no slot for {id}")))?;
        if slot.opener.subject() != claims.sub {
            return Ok(Ownership::Other);
        }
        if renew {
            // Keeps the later-expiring of the two tokens.
            slot.opener.credential.renew(claims.clone())?;
        }
        Ok(Ownership::Opener)
    }

    /// Starts the task that reports the participant once the opener's token lapses; it ends
    /// when the returned sender is dropped (with the participant's slot).
    fn watch_token(&self, id: &str, opener: &Opener) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel();
        let credential = opener.credential.clone();
        let lapses = self.lapses.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                reason = credential.lapsed() => {
                    let _ = lapses.send((id, reason));
                }
                _ = stopped => {}
            }
        });
        stop
    }

    /// Removes a participant whose token was revoked or expired: its media stops (the core
    /// closes its session) and its event stream ends with the reason.
    fn token_lapsed(&mut self, id: String, reason: TokenError) {
        let Some(slot) = self.slots.get(&id) else {
            return;
        };
        tracing::info!(room = %slot.room, participant = %slot.participant, %reason, "token lapsed; removing the participant");
        if self.core.leave(&id, Instant::now()).is_ok() {
            self.lapsed.insert(id, reason);
        }
    }

    /// Closes the rooms that have been empty for `empty_room_timeout`.
    fn close_idle_rooms(&mut self, now: Instant) {
        let timeout = self.limits.empty_room_timeout;
        let idle: Vec<String> = self
            .rooms
            .iter()
            .filter(|(name, entry)| {
                !self.closing.contains(name)
                    && entry
                        .empty_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= timeout)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for room in idle {
            tracing::info!(%room, ?timeout, "closing a room left empty");
            let _ = self.close_room(&room, now);
        }
    }

    /// A late joiner hears of everyone already in the room and of every track they publish,
    /// as if it had watched them arrive: its client needs the names to label the media that
    /// the following renegotiation brings.
    fn tell_who_is_here(&mut self, id: &str, room: &str, present: Vec<String>) {
        for participant in present {
            let joined = SfuParticipantJoined {
                node_id: self.node_id.clone(),
                room: room.to_string(),
                participant,
            };
            self.deliver(id, ParticipantEvent::ParticipantJoined(joined));
        }
        let tracks: Vec<SfuTrackEvent> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room)
            .map(|(track, t)| SfuTrackEvent {
                node_id: self.node_id.clone(),
                room: t.room.clone(),
                participant: t.participant.clone(),
                track_id: track.to_string(),
                kind: t.kind as i32,
            })
            .collect();
        for event in tracks {
            self.deliver(id, ParticipantEvent::TrackPublished(event));
        }
    }

    fn open_events(
        &mut self,
        room: &str,
        participant: &str,
    ) -> Result<mpsc::Receiver<EventItem>, SfuError> {
        let id = self.core_id(room, participant)?;
        let (sender, receiver) = mpsc::channel(EVENT_STREAM_QUEUE.max(EVENT_BACKLOG));
        let slot = self
            .slots
            .get_mut(&id)
            .ok_or_else(|| SfuError::Internal(format!("no slot for {id}")))?;
        for event in slot.backlog.drain(..) {
            // The channel is at least as large as the backlog: this cannot fail.
            let _ = sender.try_send(Ok(event));
        }
        // A replaced stream ends when its sender is dropped here.
        slot.stream = Some(sender);
        Ok(receiver)
    }

    /// Sends an event to one participant's stream, or keeps it until the stream opens.
    fn deliver(&mut self, id: &str, event: ParticipantEvent) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let event = SfuParticipantEvent { event: Some(event) };
        match &slot.stream {
            Some(stream) => match stream.try_send(Ok(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.counters.stream_lagged.increment(1);
                    tracing::warn!(%id, "event stream lagged; closing it");
                    slot.stream = None;
                }
                Err(mpsc::error::TrySendError::Closed(event)) => {
                    // The reader went away; keep events for the next stream.
                    slot.stream = None;
                    if let Ok(event) = event {
                        push_backlog(&mut slot.backlog, event);
                    }
                }
            },
            None => push_backlog(&mut slot.backlog, event),
        }
    }

    fn handle_core_event(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::ParticipantConnected { participant, .. } => {
                if let Some(slot) = self.slots.get(&participant) {
                    tracing::info!(room = %slot.room, participant = %slot.participant, "participant connected");
                }
                self.deliver(&participant, ParticipantEvent::Connected(SfuConnected {}));
            }
            CoreEvent::ParticipantLeft {
                participant,
                reason,
                ..
            } => self.participant_left(&participant, reason),
            CoreEvent::TrackPublished {
                participant,
                track,
                kind,
                ..
            } => self.track_published(&participant, track, kind),
            CoreEvent::TrackUnpublished { track, .. } => self.track_unpublished(&track),
            CoreEvent::Renegotiate {
                participant,
                offer_sdp,
            } => self.deliver(
                &participant,
                ParticipantEvent::Renegotiation(SfuRenegotiation { offer_sdp }),
            ),
        }
    }

    fn track_published(&mut self, publisher: &str, track: TrackId, kind: TrackKind) {
        let Some(slot) = self.slots.get(publisher) else {
            return;
        };
        let event = SfuTrackEvent {
            node_id: self.node_id.clone(),
            room: slot.room.clone(),
            participant: slot.participant.clone(),
            track_id: track.to_string(),
            kind: media_kind(kind) as i32,
        };
        tracing::debug!(room = %event.room, participant = %event.participant, track = %event.track_id, "track published");
        self.tracks.insert(
            track,
            Track {
                room: event.room.clone(),
                participant: event.participant.clone(),
                kind: media_kind(kind),
            },
        );
        for member in self.members(&event.room) {
            self.deliver(&member, ParticipantEvent::TrackPublished(event.clone()));
        }
        self.emit(BusEvent::TrackPublished(event));
    }

    fn track_unpublished(&mut self, track: &TrackId) {
        let Some(known) = self.tracks.remove(track) else {
            return;
        };
        let event = SfuTrackEvent {
            node_id: self.node_id.clone(),
            room: known.room,
            participant: known.participant,
            track_id: track.to_string(),
            kind: known.kind as i32,
        };
        for member in self.members(&event.room) {
            self.deliver(&member, ParticipantEvent::TrackUnpublished(event.clone()));
        }
        self.emit(BusEvent::TrackUnpublished(event));
    }

    /// Forgets a participant the core removed, and tells the others. Its event stream ends.
    fn participant_left(&mut self, id: &str, reason: LeaveReason) {
        let Some(slot) = self.slots.remove(id) else {
            return;
        };
        let lapse = self.lapsed.remove(id);
        if let (Some(lapse), Some(stream)) = (&lapse, &slot.stream) {
            let status = tonic::Status::from(SfuError::from(lapse.clone()));
            let _ = stream.try_send(Err(status));
        }
        if let Some(entry) = self.rooms.get_mut(&slot.room) {
            entry.members.remove(&slot.participant);
            if entry.members.is_empty() {
                entry.empty_since = Some(Instant::now());
            }
        }
        self.publish_count();
        let reason = match (reason, &lapse) {
            (_, Some(TokenError::Revoked)) => "token revoked",
            (_, Some(_)) => "token expired",
            (LeaveReason::Left, None) => "left",
            (LeaveReason::RoomClosed, None) => "room closed",
            (LeaveReason::ConnectTimeout, None) => "connect timeout",
            (LeaveReason::Disconnected, None) => "disconnected",
        };
        tracing::info!(room = %slot.room, participant = %slot.participant, %reason, "participant left");
        let left = SfuParticipantLeft {
            node_id: self.node_id.clone(),
            room: slot.room,
            participant: slot.participant,
            reason: reason.to_owned(),
        };
        for member in self.members(&left.room) {
            self.deliver(&member, ParticipantEvent::ParticipantLeft(left.clone()));
        }
        self.emit(BusEvent::Left(left));
    }

    fn members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|entry| entry.members.values().cloned().collect())
            .unwrap_or_default()
    }

    fn emit(&self, event: BusEvent) {
        if self.bus.try_send(event).is_err() {
            tracing::warn!("event bus queue full; dropping an sfu event");
        }
    }

    fn publish_count(&self) {
        self.count_tx.send_replace(self.slots.len());
    }

    fn room_stats(&self, room: &str) -> Result<SfuRoomStats, SfuError> {
        let members = &self
            .rooms
            .get(room)
            .ok_or_else(|| SfuError::RoomNotFound(room.to_owned()))?
            .members;
        let core = self.core.room_stats(room);
        let mut participant_stats: Vec<SfuParticipantStats> = members
            .values()
            .map(|id| self.participant_stats(id))
            .collect();
        participant_stats.sort_by(|a, b| a.participant.cmp(&b.participant));
        Ok(SfuRoomStats {
            room: room.to_owned(),
            participants: members.len() as u32,
            tracks: core.as_ref().map_or(0, |c| c.tracks.len() as u32),
            bitrate_in_bps: core.as_ref().map_or(0, |c| c.bitrate_in_bps),
            bitrate_out_bps: core.as_ref().map_or(0, |c| c.bitrate_out_bps),
            participant_stats,
        })
    }

    fn participant_stats(&self, id: &str) -> SfuParticipantStats {
        let (room, participant) = self
            .slots
            .get(id)
            .map(|s| (s.room.clone(), s.participant.clone()))
            .unwrap_or_default();
        let mut stats = SfuParticipantStats {
            room,
            participant,
            ..SfuParticipantStats::default()
        };
        if let Some(core) = self.core.participant_stats(id) {
            stats.connected = core.connected;
            stats.published_tracks = core.published.iter().map(ToString::to_string).collect();
            stats.subscribed_tracks = core
                .subscribed
                .iter()
                .map(|(track, _layer)| track.to_string())
                .collect();
            stats.bytes_in = core.bytes_in;
            stats.bytes_out = core.bytes_out;
            stats.packets_in = core.packets_in;
            stats.packets_out = core.packets_out;
            stats.bitrate_in_bps = core.bitrate_in_bps;
            stats.bitrate_out_bps = core.bitrate_out_bps;
            stats.estimated_bps = core.estimate_bps.unwrap_or(0);
            stats.rtt_ms = core.rtt_ms.map_or(0.0, |rtt| rtt as f64);
            stats.unsent_tracks = core.unsent.iter().map(ToString::to_string).collect();
        }
        stats
    }

    fn load(&self) -> SfuNodeLoad {
        let load = self.core.load();
        SfuNodeLoad {
            cpu_percent: 0.0,
            rooms: self.rooms.len() as u32,
            participants: self.slots.len() as u32,
            tracks: load.tracks as u32,
            bitrate_in_bps: load.bitrate_in_bps,
            bitrate_out_bps: load.bitrate_out_bps,
        }
    }

    /// Removes the entries of rooms closed during the last command, once their departures
    /// have been reported.
    fn finish_closing(&mut self) {
        for room in std::mem::take(&mut self.closing) {
            self.rooms.remove(&room);
        }
    }
}

/// How often empty rooms are looked for: a quarter of the timeout (a room closes at most a
/// quarter late), between 10 ms and 1 s.
fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

fn push_backlog(backlog: &mut VecDeque<SfuParticipantEvent>, event: SfuParticipantEvent) {
    if backlog.len() >= EVENT_BACKLOG {
        backlog.pop_front();
    }
    backlog.push_back(event);
}

fn media_kind(kind: TrackKind) -> SfuMediaKind {
    match kind {
        TrackKind::Audio => SfuMediaKind::Audio,
        TrackKind::Video => SfuMediaKind::Video,
    }
}

/// Maps a core error to the service error; the one place core errors are interpreted. The
/// service's names replace the core's internal participant ids.
fn map_core_error(error: CoreError, room: &str, participant: &str) -> SfuError {
    match error {
        CoreError::RoomExists(_) => SfuError::RoomExists(room.to_owned()),
        CoreError::RoomNotFound(_) => SfuError::RoomNotFound(room.to_owned()),
        CoreError::ParticipantExists(_) => SfuError::ParticipantExists {
            room: room.to_owned(),
            participant: participant.to_owned(),
        },
        CoreError::ParticipantNotFound(_) => SfuError::ParticipantNotFound {
            room: room.to_owned(),
            participant: participant.to_owned(),
        },
        CoreError::TrackNotFound(track) => SfuError::TrackNotFound(track),
        CoreError::InvalidId(reason) => SfuError::InvalidArgument(reason),
        CoreError::BadSdp(reason) => SfuError::BadSdp(reason),
        CoreError::BadCandidate(reason) => {
            SfuError::InvalidArgument(format!("bad ice candidate: {reason}"))
        }
        CoreError::NoPendingOffer(_) => SfuError::FailedPrecondition(format!(
            "no renegotiation offer is pending for participant {participant:?}"
        )),
        CoreError::LimitExceeded(reason) => SfuError::LimitReached(reason),
        CoreError::Config(reason) => SfuError::Internal(reason),
    }
}
