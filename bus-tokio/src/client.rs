//! A client on tokio: requests that resolve to replies.

use crate::runtime::{OsEntropy, Tokio};
use bus_proto::client::identity::file::ClientIdentity;
use bus_proto::client::{self, ClientParams, ClientStats, Reservation};
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::host::{
    ClientError, ClientFront, ConnectError, Link, Owner, Reply, Runtime, Shared, SharedOptions,
    ShutdownReport, StartError, Transport,
};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A client of one replica, on tokio. Cheap to clone; clones share the
/// connection and the request numbering.
///
/// ```no_run
/// use bus_tokio::Client;
/// use bus_tokio::bus_proto::client::ClientParams;
/// use bus_tokio::bus_proto::config::Config;
/// use bus_tokio::bus_proto::crypto::{Key, KeyRing};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::default().validate()?;
/// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
/// let params = ClientParams { cluster: 7, id: Client::random_id(), target: 0 };
/// let client = Client::start(&config, params, keys, "127.0.0.1:7000".parse()?)?;
/// let reply = client.request(1, "hello".into()).await?;
/// println!("{:?}", reply.body);
/// client.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<Owner<ClientFront, Tokio>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("link", &self.link())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A fresh random client id. Keep it for the life of the process: the
    /// node recognises retries by it.
    pub fn random_id() -> u128 {
        client::Client::random_id(&mut OsEntropy)
    }

    /// Starts a client of `params.target`, which listens at `address`, on
    /// the current tokio runtime.
    pub fn start(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Client, StartError> {
        Client::start_via(config, params, keys, address, Transport::tcp())
    }

    /// [`Client::start`] over `transport` (e.g. TLS, with the server name
    /// to verify): the replica must listen on the same transport. Its
    /// handshake and the bus's share `handshake_timeout`.
    pub fn start_via(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client, StartError> {
        let runtime = Tokio::current().ok_or(StartError::NoRuntime { runtime: "tokio" })?;
        let front = ClientFront::new(runtime.now(), config, params, keys, Box::new(OsEntropy));
        let target = params.target;
        Client::launch(runtime, front, config, target, address, transport)
    }

    /// [`Client::start`] under a persistent identity: its id, and request
    /// numbers that continue past every number an earlier process under
    /// it issued, so that a restarted process can resend what its
    /// predecessor left unanswered ([`Client::submit`]). The client
    /// renews the identity's lease as it goes, writing the file on
    /// tokio's blocking pool.
    ///
    /// ```no_run
    /// use bus_tokio::{Client, ClientIdentity, OsEntropy};
    /// use bus_tokio::bus_proto::config::Config;
    /// use bus_tokio::bus_proto::crypto::{Key, KeyRing};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::default().validate()?;
    /// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
    /// // Blocks on two fsyncs: at start-up, before serving.
    /// let identity = ClientIdentity::load_or_create("/var/lib/app/client.id", &mut OsEntropy)?;
    /// let client =
    ///     Client::start_with_identity(&config, 7, 0, identity, keys, "127.0.0.1:7000".parse()?)?;
    /// // An outbox: take the number, store it with the body, then send.
    /// let reservation = client.reserve()?;
    /// // ... store reservation.to_bytes(), the operation and the body durably ...
    /// let reply = client.submit(reservation, 1, "transfer 10".into()).await?;
    /// # Ok(()) }
    /// ```
    pub fn start_with_identity(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Client, StartError> {
        Client::start_with_identity_via(
            config,
            cluster,
            target,
            identity,
            keys,
            address,
            Transport::tcp(),
        )
    }

    /// [`Client::start_with_identity`] over `transport` (e.g. TLS).
    pub fn start_with_identity_via(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client, StartError> {
        let runtime = Tokio::current().ok_or(StartError::NoRuntime { runtime: "tokio" })?;
        let now = runtime.now();
        let entropy = Box::new(OsEntropy);
        let front =
            ClientFront::with_identity(now, config, cluster, target, identity, keys, entropy);
        Client::launch(runtime, front, config, target, address, transport)
    }

    fn launch(
        runtime: Tokio,
        front: ClientFront,
        config: &ValidConfig,
        target: u8,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Client, StartError> {
        let options = SharedOptions::client(config);
        let shared = Shared::new(
            front,
            runtime,
            options,
            [(target, address)],
            [(target, transport)],
        );
        #[cfg(feature = "quic")]
        crate::quic::start_quic_dialer(&shared)?;
        shared
            .runtime()
            .spawn(Shared::run_timers(Arc::clone(&shared)));
        Ok(Client {
            shared: Arc::new(Owner(shared)),
        })
    }

    /// Sends a request and waits for its reply. A request is resent on
    /// every reconnect until answered or `request_timeout` passes; the node
    /// runs it at most once. Dropping the future does not cancel the
    /// request.
    pub async fn request(&self, operation: u32, body: Bytes) -> Result<Reply, ClientError> {
        self.shared.request(operation, body).await
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
        self.shared.submit(reservation, operation, body).await
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

    /// Moves to another replica, listening at `address`.
    pub fn retarget(&self, replica: u8, address: SocketAddr) {
        self.shared.retarget(replica, address);
    }

    /// This client's id.
    pub fn id(&self) -> u128 {
        self.shared.id()
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
