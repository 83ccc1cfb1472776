//! The driver: a run's phases (faults, healing, a fresh request from every
//! client), the step loop that runs every machine until quiet, the jump to
//! the next due time, the application workload and the fault draw.

use super::bodies::body_for;
use super::{MS, Report, Sim};
use bus_proto::client::Client;
use bus_proto::node::Node;
use bus_proto::time::Instant;
use std::time::Duration;

impl Sim {
    /// Runs the whole simulation: faults, then healing, then the checks.
    pub fn run(&mut self) -> Result<Report, String> {
        let fault_end = Instant::ZERO.saturating_add(self.shape.fault_time);
        let mut next_fault = Instant::from_nanos(200 * MS);
        let mut next_app = Instant::ZERO;
        while self.now < fault_end {
            let now = self.now;
            self.partitions.retain(|_, until| *until > now);
            if self.now >= next_fault {
                self.fault()?;
                next_fault = self
                    .now
                    .saturating_add(Duration::from_millis(50 + self.rand(400)));
            }
            if self.now >= next_app {
                self.app_tick()?;
                next_app = self
                    .now
                    .saturating_add(Duration::from_millis(1 + self.rand(20)));
            }
            self.step()?;
            let heal = self.partitions.values().min().copied().unwrap_or(fault_end);
            self.advance(next_fault.min(next_app).min(fault_end).min(heal));
        }
        self.heal()?;
        let heal_deadline = self.now.saturating_add(self.shape.heal_bound);
        let healed_at = loop {
            if self.all_connected() {
                break self.now;
            }
            if self.now >= heal_deadline {
                return Err(format!(
                    "replicas not all connected {:?} after faults healed: {}",
                    self.shape.heal_bound,
                    self.connectivity()
                ));
            }
            if self.now >= next_app {
                self.app_tick()?;
                next_app = self.now.saturating_add(Duration::from_millis(5));
            }
            self.step()?;
            self.advance(next_app.min(heal_deadline));
        };
        // Every honest client completes a fresh request. One whose lease
        // is exhausted (its renewal still being written) or whose
        // outstanding requests fill its window issues it once it can.
        let before: Vec<u64> = self.clients.iter().map(|c| c.completed).collect();
        let mut fresh: Vec<Option<u64>> = vec![None; self.clients.len()];
        let reply_deadline = self.now.saturating_add(self.shape.heal_bound);
        loop {
            let mut unissued = false;
            for (j, slot) in fresh.iter_mut().enumerate() {
                if self.clients[j].impostor || slot.is_some() {
                    continue;
                }
                *slot = self.issue(j, 7)?;
                unissued |= slot.is_none();
            }
            let done = self
                .clients
                .iter()
                .zip(&fresh)
                .all(|(c, n)| c.impostor || n.is_some_and(|n| !c.waiting.contains(&n)));
            if done {
                break;
            }
            if self.now >= reply_deadline {
                return Err(format!(
                    "clients did not complete a request within {:?} of healing at {healed_at:?} \
                     (fresh requests {fresh:?})",
                    self.shape.heal_bound
                ));
            }
            self.step()?;
            let limit = if unissued {
                self.now.saturating_add(Duration::from_millis(5))
            } else {
                reply_deadline
            };
            self.advance(limit.min(reply_deadline));
        }
        for (j, (c, n)) in self.clients.iter().zip(&fresh).enumerate() {
            if let Some(n) = n
                && c.completed <= before[j]
            {
                return Err(format!(
                    "client {j} request {n} failed after healing: {:?}",
                    c.failures.get(n)
                ));
            }
        }
        self.check_bounds()?;
        for i in 0..self.shape.nodes {
            self.collect_stats(i);
        }
        self.report.resent = self.resent_by_crashed
            + self
                .clients
                .iter()
                .filter_map(|c| c.client.as_ref())
                .map(|c| c.stats().resent)
                .sum::<u64>();
        self.report.virtual_time = self.now.saturating_duration_since(Instant::ZERO);
        Ok(self.report.clone())
    }

    fn heal(&mut self) -> Result<(), String> {
        self.faults_on = false;
        self.partitions.clear();
        for i in 0..self.shape.nodes {
            self.end_stall(i)?;
            if self.nodes[usize::from(i)].node.is_none() {
                self.start_node(i);
            }
        }
        for j in 0..self.clients.len() {
            if self.clients[j].down_until.is_some() {
                self.boot_client(j)?;
            }
        }
        Ok(())
    }

    /// Jumps to the earliest of `limit`, a pipe delivery, or a timer.
    fn advance(&mut self, limit: Instant) {
        let mut next = limit;
        for socket in self.sockets.iter().flatten() {
            // A partition holds its pipes until a fault tick heals it.
            if self.partitioned(socket.ends[0].0, socket.ends[1].0) {
                continue;
            }
            for (side, pipe) in socket.pipes.iter().enumerate() {
                // A stalled reader's pipes wait for the stall's end.
                if self.reader_stalled(socket.ends[1 - side].0) {
                    continue;
                }
                if let Some((at, _)) = pipe.chunks.front() {
                    next = next.min(*at);
                }
                if pipe.eof && pipe.chunks.is_empty() {
                    next = next.min(self.now);
                }
            }
        }
        for slot in &self.nodes {
            if let Some(t) = slot.node.as_ref().and_then(Node::poll_timeout) {
                next = next.min(t);
            }
            if let Some(t) = slot.down_until {
                next = next.min(t);
            }
            if let Some(stall) = &slot.stall {
                next = next.min(stall.until);
            }
            for (t, _, _) in &slot.delayed {
                next = next.min(*t);
            }
        }
        for c in &self.clients {
            let timers = [
                c.client.as_ref().and_then(Client::poll_timeout),
                c.down_until,
                c.write.as_ref().map(|w| w.done_at),
                c.lease_retry,
            ];
            for t in timers.into_iter().flatten() {
                next = next.min(t);
            }
        }
        self.now = next.max(self.now.saturating_add(Duration::from_micros(1)));
    }

    /// Delivers, runs timers and drains every state machine until quiet.
    fn step(&mut self) -> Result<(), String> {
        self.report.steps += 1;
        for i in 0..self.shape.nodes {
            let slot = &mut self.nodes[usize::from(i)];
            if slot.down_until.is_some_and(|t| t <= self.now) {
                self.start_node(i);
            }
        }
        for j in 0..self.clients.len() {
            if self.clients[j].down_until.is_some_and(|t| t <= self.now) {
                self.boot_client(j)?;
            }
        }
        self.end_due_stalls()?;
        for _ in 0..10_000 {
            let mut moved = self.deliver();
            for i in 0..self.shape.nodes {
                let at = self.node_now(i);
                if let Some(node) = self.nodes[usize::from(i)].node.as_mut()
                    && node.poll_timeout().is_some_and(|t| t <= self.now)
                {
                    node.handle_timeout(at);
                }
                moved |= self.drain_node(i)?;
            }
            for j in 0..self.clients.len() {
                let at = self.now_for(0);
                let now = self.now;
                if let Some(client) = self.clients[j].client.as_mut()
                    && client.poll_timeout().is_some_and(|t| t <= now)
                {
                    client.handle_timeout(at);
                }
                moved |= self.drain_client(j)?;
                moved |= self.service_lease(j)?;
            }
            if !moved {
                for i in 0..self.shape.nodes {
                    self.check_admission(i)?;
                }
                return Ok(());
            }
        }
        Err("the simulation did not settle in 10000 rounds at one instant".into())
    }

    /// The application: replicas message each other, clients send requests.
    fn app_tick(&mut self) -> Result<(), String> {
        let from = self.pick_node();
        let to = self.pick_node();
        if from != to {
            let k = self.nodes[usize::from(from)].sent[usize::from(to)];
            let big = self.chance(50);
            let len = 16 + self.pick(if big { 8000 } else { 200 });
            let body = body_for(from, to, k, len);
            if let Some(node) = self.nodes[usize::from(from)].node.as_mut()
                && node.send(to, 1, body).is_ok()
            {
                self.nodes[usize::from(from)].sent[usize::from(to)] += 1;
            }
        }
        if !self.clients.is_empty() {
            let j = self.pick(self.clients.len());
            self.issue(j, 3)?;
        }
        Ok(())
    }

    /// One random fault.
    fn fault(&mut self) -> Result<(), String> {
        match self.rand(10) {
            0 | 1 => {
                let live: Vec<usize> = (0..self.sockets.len())
                    .filter(|&s| self.sockets[s].is_some())
                    .collect();
                if !live.is_empty() {
                    let s = live[self.pick(live.len())];
                    self.report.resets += 1;
                    self.reset_socket(s);
                }
            }
            2 => {
                let a = self.pick_node();
                let b = self.pick_node();
                if a != b {
                    let until = self
                        .now
                        .saturating_add(Duration::from_millis(200 + self.rand(2000)));
                    self.partitions.insert((a.min(b), a.max(b)), until);
                    self.report.partitions += 1;
                }
            }
            3 => {
                let down = self.nodes.iter().filter(|s| s.node.is_none()).count();
                if down == 0 {
                    let i = self.pick_node();
                    let downtime = Duration::from_millis(100 + self.rand(1500));
                    self.crash_node(i, downtime);
                }
            }
            4 => self.impostor_dial(),
            5 => self.replay_handshake(),
            6 => self.replay_frame(),
            7 => self.start_stall(),
            8 => self.silent_burst()?,
            _ => {
                if self.chance(500) {
                    let honest: Vec<usize> = (0..self.clients.len())
                        .filter(|&j| !self.clients[j].impostor && self.clients[j].client.is_some())
                        .collect();
                    if !honest.is_empty() {
                        let j = honest[self.pick(honest.len())];
                        // Mostly back within request_timeout, so the outbox
                        // is resent; sometimes later, so it is too old.
                        let downtime = if self.chance(750) {
                            Duration::from_millis(10 + self.rand(1500))
                        } else {
                            Duration::from_millis(2000 + self.rand(6000))
                        };
                        self.crash_client(j, downtime);
                    }
                }
            }
        }
        Ok(())
    }
}
