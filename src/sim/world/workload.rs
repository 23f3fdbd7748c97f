//! The workload: writes, flushes, misses and garbage, drawn from the seed.

use super::*;

impl World {
    pub(super) fn write(&mut self) {
        if self.t >= self.plan.faults_until {
            return;
        }
        let next = self.t + exp(&mut self.rng, self.plan.write_rate);
        self.queue.at(next, Event::Write);
        let writers: Vec<usize> =
            (0..self.slots.len()).filter(|i| self.slots[*i].live.as_ref().is_some_and(|l| !l.leaving)).collect();
        if writers.is_empty() {
            return;
        }
        let slot = writers[self.rng.random_range(0..writers.len())];
        let sid: Arc<str> = format!("s{}", self.rng.random_range(0..self.plan.sids)).into();
        let now = self.now(slot);
        let roll: f64 = self.rng.random();
        let plan = &self.plan;
        let (p_ask, p_clear, p_destroy, p_touch) = (plan.p_ask, plan.p_clear, plan.p_destroy, plan.p_touch);
        let (p_fragmented, p_large) = (plan.p_fragmented, plan.p_large);
        let lifetime = plan.lifetime.as_millis() as u64;
        if roll < p_ask {
            return self.ask(slot, &sid);
        }
        let size = match self.rng.random::<f64>() {
            r if r < p_large => self.rng.random_range(60_000..150_000),
            r if r < p_large + p_fragmented => self.rng.random_range(1_400..20_000),
            _ => self.rng.random_range(20..1_000),
        };
        let n: u32 = self.rng.random();
        let live = self.slots[slot].live.as_mut().expect("a writer");
        let version = live.clock.tick_at(now.ms);
        let roll = roll - p_ask;
        let op = if roll < p_clear {
            Op::Clear { version }
        } else if roll < p_clear + p_destroy {
            Op::Destroy { sid, version }
        } else if roll < p_clear + p_destroy + p_touch {
            let cookie = Some(format!(r#"{{"t":{n}}}"#).into());
            Op::Touch { sid, cookie, expires_at: now.ms + lifetime, version }
        } else {
            let doc = format!(r#"{{"cookie":{{"n":{n}}},"pad":"{}"}}"#, "x".repeat(size)).into();
            Op::Set { sid, doc, expires_at: now.ms + lifetime, version }
        };
        live.table.apply(&op);
        let index = self.history.writes.len();
        self.history.writes.push(Written::of(live.header.node, &op));
        // As the engine: a node with no audience queues nothing (docs/how-it-works.md "A node alone").
        if live.audience {
            live.pushed += 1;
            live.numbered.push_back((live.pushed, index));
            live.queued.push(op);
            if !live.flush_due {
                live.flush_due = true;
                let incarnation = live.header.incarnation;
                let at = self.t + Duration::from_micros(self.rng.random_range(0..1_000));
                self.queue.at(at, Event::Flush { slot, incarnation });
            }
        }
    }

    /// The end of the writing turn: the queued writes leave together.
    pub(super) fn flush(&mut self, slot: usize, incarnation: u64) {
        let wait_for_ack = self.plan.wait_for_ack;
        let Some(live) = self.live(slot, incarnation) else { return };
        live.flush_due = false;
        if live.leaving || live.queued.is_empty() {
            return;
        }
        if wait_for_ack {
            let alive = live.node.members().all().filter(|m| m.state == MemberState::Alive);
            let alive = alive.map(|m| (m.id, m.incarnation)).collect();
            live.batches.push_back((live.pushed, alive));
        }
        let (ops, last) = (std::mem::take(&mut live.queued), live.pushed);
        live.node.write_batch(ops, last);
        let now = self.now(slot);
        while let Some(datagram) = self.slots[slot].live.as_mut().and_then(|l| l.node.poll_data(now)) {
            self.transmit(slot, datagram);
        }
        self.drain(slot);
    }

    pub(super) fn ask(&mut self, slot: usize, sid: &Arc<str>) {
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("an asker");
        if live.table.lookup(sid, now.ms) != Lookup::Unknown || !live.node.can_ask() {
            return;
        }
        if let Some(token) = live.node.ask(sid, now) {
            live.asked.insert(token);
        }
        self.drain(slot);
    }

    /// Forged, foreign, corrupted or replayed datagrams, to a live node.
    pub(super) fn garbage(&mut self) {
        if self.t >= self.plan.faults_until {
            return;
        }
        let next = self.t + exp(&mut self.rng, self.plan.garbage_rate);
        self.queue.at(next, Event::Garbage);
        let targets: Vec<usize> = (0..self.slots.len()).filter(|i| self.slots[*i].live.is_some()).collect();
        if targets.is_empty() || self.captured.is_empty() {
            return;
        }
        let slot = targets[self.rng.random_range(0..targets.len())];
        let (from, mut bytes) = self.captured[self.rng.random_range(0..self.captured.len())].clone();
        let genuine = match self.rng.random_range(0..4) {
            0 => true,
            1 => {
                let at = self.rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << self.rng.random_range(0..8);
                false
            }
            2 => {
                let other = Header { cluster: wire::cluster_id("another"), node: 77, incarnation: 1 };
                bytes = Codec::new("another", &[]).seal(wire::encode(&other, &Message::Leave), 1);
                false
            }
            _ => {
                bytes = (0..self.rng.random_range(0..200)).map(|_| self.rng.random()).collect();
                false
            }
        };
        let incarnation = self.slots[slot].live.as_ref().expect("a target").header.incarnation;
        self.queue.at(self.t, Event::Deliver { slot, incarnation, from, via_group: false, bytes, genuine });
    }
}
