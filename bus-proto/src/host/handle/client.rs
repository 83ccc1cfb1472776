//! A client handle: requests that resolve to replies.

use super::Platform;
use crate::client::identity::file::ClientIdentity;
use crate::client::{self, ClientParams, ClientStats, Reservation};
use crate::config::ValidConfig;
use crate::crypto::KeyRing;
use crate::host::{ClientError, ClientFront, ConnectError, Link, Owner, Reply, Shared};
use crate::host::{SharedOptions, ShutdownReport, StartError, Transport};
use crate::wire::AppHeader;
use bytes::Bytes;
use core::marker::PhantomData;
use core::net::SocketAddr;
use core::time::Duration;
use std::sync::Arc;

/// A client of one replica on runtime `R`; each adapter names it `Client`
/// (`bus_tokio::Client` is `Client<bus_tokio::Tokio>`). Cheap to clone;
/// clones share the connection and the request numbering, and the client
/// stops when the last clone is dropped.
///
/// A request is resent on every reconnect until answered or
/// `request_timeout` passes; the node runs it at most once.
///
/// ```no_run
/// use bus_proto::client::ClientParams;
/// use bus_proto::config::ValidConfig;
/// use bus_proto::crypto::KeyRing;
/// use bus_proto::host::{Client, Platform};
///
/// /// Sends one request to replica 0 at `address`, on any runtime.
/// async fn hello<R: Platform>(
///     config: &ValidConfig,
///     keys: KeyRing,
///     address: std::net::SocketAddr,
/// ) -> Result<(), Box<dyn std::error::Error>> {
///     let params = ClientParams { cluster: 7, id: Client::<R>::random_id(), target: 0 };
///     let client = Client::<R>::start(config, params, keys, address)?;
///     let reply = client.request(1, "hello".into()).await?;
///     println!("{:?}", reply.body);
///     client.shutdown(std::time::Duration::from_secs(1)).await;
///     Ok(())
/// }
/// ```
pub struct Client<R: Platform> {
    shared: Arc<Owner<ClientFront, R>>,
    _affinity: PhantomData<R::Affinity>,
}

impl<R: Platform> Clone for Client<R> {
    fn clone(&self) -> Self {
        Client {
            shared: Arc::clone(&self.shared),
            _affinity: PhantomData,
        }
    }
}

impl<R: Platform> core::fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("runtime", &R::NAME)
            .field("link", &self.link())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<R: Platform> Client<R> {
    /// A fresh random client id. Keep it for the life of the process: the
    /// node recognises retries by it.
    pub fn random_id() -> u128 {
        client::Client::random_id(&mut *R::entropy())
    }

    /// Starts a client of `params.target`, which listens at `address`, on
    /// the runtime the caller runs under ([`Platform::current`]).
    pub fn start(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Client<R>, StartError> {
        Client::start_via(config, params, keys, address, Transport::tcp())
    }

    /// [`Client::start`] over `transport` (TLS with the server name to
    /// verify, WebSocket, QUIC): the replica must listen on the same
    /// transport. Its handshake and the bus's share `handshake_timeout`.
    pub fn start_via(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client<R>, StartError> {
        let runtime = super::current_runtime::<R>()?;
        Client::start_in(runtime, config, params, keys, address, transport)
    }

    /// [`Client::start_via`] with its tasks on `runtime` (for example
    /// smol's `Smol::on(executor)`).
    pub fn start_in(
        runtime: R,
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client<R>, StartError> {
        let front = ClientFront::new(runtime.now(), config, params, keys, R::entropy());
        Client::launch(runtime, front, config, params.target, address, transport)
    }

    /// [`Client::start`] under a persistent identity: its id, and request
    /// numbers that continue past every number an earlier process under
    /// it issued, so that a restarted process can resend what its
    /// predecessor left unanswered ([`Client::submit`]). The client
    /// renews the identity's lease as it goes, writing the file where the
    /// runtime allows blocking.
    ///
    /// ```no_run
    /// use bus_proto::client::identity::file::ClientIdentity;
    /// use bus_proto::config::ValidConfig;
    /// use bus_proto::crypto::KeyRing;
    /// use bus_proto::host::{Client, Platform};
    ///
    /// async fn outbox<R: Platform>(
    ///     config: &ValidConfig,
    ///     keys: KeyRing,
    ///     address: std::net::SocketAddr,
    /// ) -> Result<(), Box<dyn std::error::Error>> {
    ///     // Blocks on two fsyncs: at start-up, before serving.
    ///     let identity =
    ///         ClientIdentity::load_or_create("/var/lib/app/client.id", &mut *R::entropy())?;
    ///     let client = Client::<R>::start_with_identity(config, 7, 0, identity, keys, address)?;
    ///     // An outbox: take the number, store it with the body, then send.
    ///     let reservation = client.reserve()?;
    ///     // ... store reservation.to_bytes(), the operation and the body durably ...
    ///     let reply = client.submit(reservation, 1, "transfer 10".into()).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn start_with_identity(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Client<R>, StartError> {
        let transport = Transport::tcp();
        Client::start_with_identity_via(config, cluster, target, identity, keys, address, transport)
    }

    /// [`Client::start_with_identity`] over `transport`.
    pub fn start_with_identity_via(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client<R>, StartError> {
        let runtime = super::current_runtime::<R>()?;
        Client::start_with_identity_in(
            runtime, config, cluster, target, identity, keys, address, transport,
        )
    }

    /// [`Client::start_with_identity_via`] with its tasks on `runtime`.
    #[allow(clippy::too_many_arguments)] // The `_via` arguments and the runtime.
    pub fn start_with_identity_in(
        runtime: R,
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client<R>, StartError> {
        let now = runtime.now();
        let front =
            ClientFront::with_identity(now, config, cluster, target, identity, keys, R::entropy());
        Client::launch(runtime, front, config, target, address, transport)
    }

    fn launch(
        runtime: R,
        front: ClientFront,
        config: &ValidConfig,
        target: u8,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client<R>, StartError> {
        let options = SharedOptions::client(config);
        let shared = Shared::new(
            front,
            runtime,
            options,
            [(target, address)],
            [(target, transport)],
        );
        R::launch(&shared)?;
        Ok(Client {
            shared: Arc::new(Owner(shared)),
            _affinity: PhantomData,
        })
    }

    /// Sends a request and waits for its reply. A request is resent on
    /// every reconnect until answered or `request_timeout` passes; the node
    /// runs it at most once. Dropping the future does not cancel the
    /// request.
    pub async fn request(&self, operation: u32, body: Bytes) -> Result<Reply, ClientError> {
        self.shared.request(operation, AppHeader::ZERO, body).await
    }

    /// [`Client::request`] with the application's header fields (`view`,
    /// `release`, the 96-byte application area), sent with every copy of
    /// the request; the reply's come back in [`Reply::app`].
    pub async fn request_with(
        &self,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.shared.request(operation, app, body).await
    }

    /// Issues the next request number without sending anything: store the
    /// [`Reservation`] with the request in your outbox, then
    /// [`Client::submit`] it. Unlike a request it does not wait for a lease
    /// renewal under way: with a spent lease it fails at once with
    /// `LeaseExhausted` (rare: the next lease is written when half of the
    /// current one, 2³² numbers by default, is left).
    pub fn reserve(&self) -> Result<Reservation, ClientError> {
        self.shared.reserve()
    }

    /// Sends the request numbered by `reservation` and waits for its reply:
    /// one reserved by this client, or, after a restart under the same
    /// identity, one an earlier process reserved and stored. The node
    /// answers a request it already ran from its dedup window. Refused
    /// once `request_timeout` has passed since the reservation was issued
    /// (the node may have forgotten it).
    pub async fn submit(
        &self,
        reservation: Reservation,
        operation: u32,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.shared
            .submit(reservation, operation, AppHeader::ZERO, body)
            .await
    }

    /// [`Client::submit`] with the application's header fields: the ones
    /// first sent under this number.
    pub async fn submit_with(
        &self,
        reservation: Reservation,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.shared.submit(reservation, operation, app, body).await
    }

    /// The connection's state now.
    pub fn link(&self) -> Link {
        self.shared.link()
    }

    /// Waits for the next connection attempt to finish: the replica it
    /// reached, or why it failed (with the node's status when it rejected
    /// us). Returns at once if connected or shut down.
    pub async fn connected(&self) -> Result<u8, ConnectError> {
        self.shared.connected().await
    }

    /// Moves to another replica, listening at `address`, over the same
    /// transport.
    pub fn retarget(&self, replica: u8, address: SocketAddr) {
        self.shared.retarget(replica, address);
    }

    /// This client's id.
    pub fn id(&self) -> u128 {
        self.shared.id()
    }

    /// Replaces the client's keys for its next handshakes (a reconnect);
    /// the connection it has carries on, and so do requests in flight.
    /// Switch a client to a new cluster key once every replica it may
    /// connect to accepts that key (all of them in phase 1 or later of
    /// [`Node::set_keys`](super::Node::set_keys)); until then a reconnect
    /// to a replica still without it is refused (`BadMac`).
    pub fn set_keys(&self, keys: crate::crypto::KeyRing) {
        self.shared.set_keys(keys);
    }

    /// The client's connection now (connecting or open), with the same
    /// fields as [`Node::connection_infos`](super::Node::connection_infos);
    /// `None` between connections.
    pub fn connection_info(&self) -> Option<crate::node::ConnectionInfo> {
        self.shared.connection_info()
    }

    /// Counters since the client started.
    pub fn stats(&self) -> ClientStats {
        self.shared.stats()
    }

    /// Closes the connection gracefully within `deadline`. Requests still
    /// waiting fail with [`ClientError::ShutDown`].
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.shared.shutdown(deadline).await
    }
}
