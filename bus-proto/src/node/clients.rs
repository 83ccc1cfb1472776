//! The node's client plane: routes to clients, requests through the dedup
//! window, replies.

use super::{Node, NodeEvent, ReplyError, table::ConnectionId};
use crate::connection::SendError;
use crate::dedup::{CachedReply, DedupError, Evicted, Lookup};
use crate::time::{Instant, Now};
use crate::wire::{AppHeader, CloseReason, Header, Kind, ReplyStatus, RequestHeader};
use bytes::Bytes;

impl Node {
    /// Registers `id` as `client`'s route. Newest wins: the previous
    /// connection, if any, is closed with `Duplicate`; its own
    /// `ClientDisconnected` still follows, and its removal cannot touch the
    /// new route (the ids differ).
    pub(super) fn install_client(&mut self, now: Instant, id: ConnectionId, client: u128) {
        if let Some(old) = self.clients.insert(client, id)
            && old != id
        {
            if let Some(conn) = self.table.conn_mut(old) {
                conn.close(now, CloseReason::Duplicate);
            }
            self.table.touch(old);
        }
        self.announce(
            id,
            NodeEvent::ClientConnected {
                client,
                connection: id,
                remote: self.remote(id).map(alloc::boxed::Box::new),
                local: self.local(id).map(alloc::boxed::Box::new),
            },
        );
    }

    /// A request arrived on `id` (the connection checked that it names
    /// the connection's own client).
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        id: ConnectionId,
        request: RequestHeader,
        app: AppHeader,
        body: Bytes,
    ) {
        let RequestHeader {
            client,
            request: number,
            ..
        } = request;
        // One window operation: marking reports what it found when the
        // request is not fresh.
        match self.dedup.mark_in_flight(client, number, now) {
            Ok(evicted) => {
                self.evict_sessions(now, evicted);
                self.stats.requests += 1;
                self.events.push_back(NodeEvent::Request {
                    request,
                    connection: id,
                    app,
                    body,
                });
            }
            Err(DedupError::NotFresh { state, .. }) => match state {
                Lookup::InFlight => self.stats.duplicates_dropped += 1,
                Lookup::Cached(reply) => {
                    self.stats.dedup_hits += 1;
                    self.answer(id, request, ReplyStatus::Ok, reply);
                }
                Lookup::Stale => {
                    self.stats.stale += 1;
                    self.answer(id, request, ReplyStatus::Stale, CachedReply::default());
                }
                // `NotFresh` never carries `Fresh`.
                Lookup::Fresh => {}
            },
            // `WindowFull`; marking raises nothing else.
            Err(_) => {
                self.stats.busy += 1;
                self.answer(id, request, ReplyStatus::Busy, CachedReply::default());
            }
        }
    }

    /// Answers a request with the application's reply: sends it on the
    /// client's current connection and records it in the dedup window, so a
    /// retry of the request is answered from there.
    ///
    /// Backpressure records nothing (call again later). A client that is
    /// not connected gets the reply on its retry after reconnecting, if the
    /// session still holds it ([`ReplyError::Disconnected`] says).
    ///
    /// The window keeps the body for as long as it keeps the entry,
    /// counting its length against `dedup_max_cached_bytes`. A body sliced
    /// from a received message keeps that message's whole receive buffer
    /// (up to the read chunk) alive meanwhile: reply with a copy
    /// (`Bytes::copy_from_slice`) of a small part of a large message.
    pub fn reply(
        &mut self,
        now: Now,
        request: RequestHeader,
        body: Bytes,
    ) -> Result<(), ReplyError> {
        self.reply_with(now, request, AppHeader::ZERO, body)
    }

    /// [`Node::reply`] with the application's header fields (`view`,
    /// `release`, application area), which the dedup window keeps with
    /// the body: a retry is answered with both.
    pub fn reply_with(
        &mut self,
        now: Now,
        request: RequestHeader,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), ReplyError> {
        let RequestHeader {
            client,
            request: number,
            ..
        } = request;
        let kind = Kind::Reply {
            request,
            status: ReplyStatus::Ok,
        };
        // A reply may carry an application header: only the size can fail.
        Header::new(self.params.cluster, kind.clone())
            .check(body.len(), self.config.max_message_size)
            .map_err(|error| ReplyError::Encode { client, error })?;
        if let Lookup::Cached(_) = self.dedup.lookup(client, number, now.mono) {
            return Err(ReplyError::AlreadyReplied {
                client,
                request: number,
            });
        }
        let route = self.clients.get(&client).copied();
        let sent = match route.and_then(|id| Some((id, self.table.conn_mut(id)?))) {
            Some((id, conn)) => match conn.send_with(app.clone(), kind, body.clone()) {
                Ok(()) => {
                    self.table.mark_ready(id);
                    true
                }
                Err(SendError::Backpressure {
                    queued_frames,
                    queued_bytes,
                    ..
                }) => {
                    return Err(ReplyError::Backpressure {
                        client,
                        queued_frames,
                        queued_bytes,
                    });
                }
                Err(SendError::Encode(error)) => return Err(ReplyError::Encode { client, error }),
                Err(SendError::Closed | SendError::NotAllowed { .. }) => false,
            },
            None => false,
        };
        let reply = CachedReply { body, app };
        let cached = match self.dedup.complete(client, number, reply, now.mono) {
            Ok(evicted) => {
                self.evict_sessions(now.mono, evicted);
                true
            }
            // The session ended while the request ran: the reply went out
            // (if connected) but a retry will not find it.
            Err(_) => false,
        };
        if sent {
            Ok(())
        } else {
            Err(ReplyError::Disconnected { client, cached })
        }
    }

    /// Queues a reply the application did not write (cache hit, status).
    /// A full queue drops it: the client is not reading, and its retry after
    /// a reconnect asks again.
    fn answer(
        &mut self,
        id: ConnectionId,
        request: RequestHeader,
        status: ReplyStatus,
        reply: CachedReply,
    ) {
        let kind = Kind::Reply { request, status };
        if let Some(conn) = self.table.conn_mut(id)
            && conn.send_with(reply.app, kind, reply.body).is_ok()
        {
            self.table.mark_ready(id);
        }
    }

    /// Sessions the dedup caps evicted: their clients are told, by closing
    /// their connections with `Evicted`, that retries are no longer covered.
    fn evict_sessions(&mut self, now: Instant, evicted: Evicted) {
        for client in evicted {
            self.stats.sessions_evicted += 1;
            if let Some(&id) = self.clients.get(&client) {
                if let Some(conn) = self.table.conn_mut(id) {
                    conn.close(now, CloseReason::Evicted);
                }
                self.table.touch(id);
            }
        }
    }
}
