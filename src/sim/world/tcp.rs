//! The simulated TCP side: pulls and fetches, sealed and opened like the driver's frames.

use super::*;

impl World {
    /// A frame sealed by the node in `slot`.
    pub(super) fn seal(&mut self, slot: usize, msg: &Message) -> Vec<u8> {
        let live = self.slots[slot].live.as_mut().expect("a live node");
        let pn = live.node.next_packet_number();
        live.codec.seal(wire::encode(&live.header, msg), pn)
    }

    /// A frame opened by the node in `slot`, checked like a datagram.
    pub(super) fn open(&mut self, slot: usize, frame: &[u8]) -> Result<Message, &'static str> {
        let live = self.slots[slot].live.as_mut().expect("a live node");
        let (header, msg, pn) = live.codec.open_message(frame, live.header.cluster).map_err(|e| e.reason())?;
        live.node.accept(&header, pn).map_err(|e| e.reason())?;
        if !live.opened.insert((header.node, header.incarnation, pn)) {
            self.fail(format!("slot {slot}: a frame was accepted twice"));
        }
        Ok(msg)
    }

    pub(super) fn server(&self, target: u64, tcp: SocketAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.tcp == tcp && l.header.node == target))
    }

    /// A request reaches the server: it answers from its table, or the connection fails.
    pub(super) fn serve(&mut self, slot: usize, incarnation: u64, target: u64, tcp: SocketAddr, full: bool) {
        let puller_now = self.now(slot);
        let Some(puller) = self.live(slot, incarnation) else { return };
        let request = sync::request(&puller.table, target, full, puller_now.ms);
        let failed = |why| Event::SyncFailed { slot, incarnation, target, full, why };
        let faulty = self.t < self.plan.faults_until;
        let Some(server) = self.server(target, tcp) else {
            return self.queue.at(self.t + Duration::from_millis(1), failed("connection refused"));
        };
        if !net::connected(&self.plan, slot, server, self.t) {
            return self.queue.at(self.t + CONNECT_TIMEOUT, failed("connect timed out"));
        }
        if faulty && self.rng.random_bool(self.plan.p_sync_failure) {
            let at = self.t + self.delay();
            return self.queue.at(at, failed("connection reset"));
        }
        let sealed = self.seal(slot, &request);
        let answer = self.open(server, &sealed).and_then(|request| {
            let server_now = self.now(server);
            let live = self.slots[server].live.as_mut().expect("the server");
            let source = live.node.sync_source();
            sync::respond(&live.table, target, request, source, server_now.ms)
        });
        match answer {
            Ok(messages) => {
                let frames: Vec<Vec<u8>> = messages.iter().map(|m| self.seal(server, m)).collect();
                let bytes: usize = frames.iter().map(Vec::len).sum();
                let at = self.t + self.delay() + Duration::from_nanos(bytes as u64 * 10);
                self.queue.at(at, Event::SyncFrames { slot, incarnation, target, full, frames });
            }
            Err(why) => {
                let at = self.t + self.delay();
                self.queue.at(at, failed(why))
            }
        }
    }

    pub(super) fn pulled(&mut self, slot: usize, incarnation: u64, target: u64, full: bool, frames: Vec<Vec<u8>>) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let server = self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.header.node == target));
        if !server.is_some_and(|server| net::connected(&self.plan, slot, server, self.t)) {
            let why = "the peer went silent";
            return self.queue.at(self.t + IDLE_TIMEOUT, Event::SyncFailed { slot, incarnation, target, full, why });
        }
        let mut pull = Pull::default();
        let mut result = Err("the transfer ended early".to_owned());
        for frame in &frames {
            let merged = self.open(slot, frame).and_then(|msg| {
                let live = self.slots[slot].live.as_ref().expect("the puller");
                pull.frame(&live.table, &live.clock, msg, frame.len())
            });
            match merged {
                Ok(Some(pulled)) => result = Ok(pulled),
                Ok(None) => continue,
                Err(why) => result = Err(why.to_owned()),
            }
            break;
        }
        let line = match &result {
            Ok(pulled) => format!("slot {slot}: pulled {} entries from {target:016x} (full {full})", pulled.entries),
            Err(why) => format!("slot {slot}: pull from {target:016x} failed: {why}"),
        };
        self.note(line);
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("the puller");
        live.node.sync_done(target, full, result, now);
        self.drain(slot);
    }

    pub(super) fn serve_fetch(
        &mut self,
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        tcp: SocketAddr,
        deadline: Duration,
    ) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let Some(server) = self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.tcp == tcp)) else {
            let frame = Err("connection refused");
            return self.queue.at(self.t, Event::FetchFrame { slot, incarnation, token, sid, frame });
        };
        let arrival = self.t + self.delay();
        if !net::connected(&self.plan, slot, server, self.t) || arrival > deadline {
            return self.queue.at(deadline, Event::FetchFrame { slot, incarnation, token, sid, frame: Ok(None) });
        }
        let query = self.seal(slot, &Message::Query { token, sid: sid.clone() });
        let answer = self.open(server, &query).and_then(|query| {
            let server_now = self.now(server);
            let live = self.slots[server].live.as_mut().expect("the server");
            let target = live.header.node;
            sync::respond(&live.table, target, query, live.node.sync_source(), server_now.ms)
        });
        let frame = answer.map(|messages| Some(self.seal(server, &messages[0])));
        self.queue.at(arrival, Event::FetchFrame { slot, incarnation, token, sid, frame });
    }

    pub(super) fn fetched(
        &mut self,
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        frame: Result<Option<Vec<u8>>, &'static str>,
    ) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let fetched = match frame {
            Ok(None) => Fetched::TimedOut,
            Err(why) => Fetched::Failed(why.into()),
            Ok(Some(frame)) => match self.open(slot, &frame) {
                Ok(msg) => {
                    let live = self.slots[slot].live.as_ref().expect("the asker");
                    match sync::fetched(&live.table, &live.clock, token, &sid, msg) {
                        Ok(()) => Fetched::Done,
                        Err(why) => Fetched::Failed(why.into()),
                    }
                }
                Err(why) => Fetched::Failed(why.into()),
            },
        };
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("the asker");
        live.node.fetch_done(token, fetched, now);
        self.drain(slot);
    }
}
