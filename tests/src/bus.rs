//! One interface over the three adapters, so every scenario is written
//! once. Each adapter's public API is forwarded by the same macro, which
//! also proves the three share one shape: a method missing or typed
//! differently in one adapter fails to compile here.

use bus_proto::client::identity::file::ClientIdentity;
use bus_proto::client::{ClientParams, ClientStats, Reservation};
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::host::{
    ClientError, ConnectError, Link, ListenError, NodeOptions, Reply, ShutdownReport, StartError,
    Transport,
};
use bus_proto::node::{self, NodeEvent, NodeParams, NodeStats, ReplyError, RouteError};
use bus_proto::wire::RequestHeader;
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// A node handle, as every adapter offers it.
#[allow(async_fn_in_trait)] // Scenarios run on each runtime's own thread.
pub trait NodeApi: Clone + 'static {
    /// `Node::listen`.
    async fn listen(&self, address: SocketAddr) -> Result<SocketAddr, ListenError>;
    /// `Node::listen_via`.
    async fn listen_via(
        &self,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<SocketAddr, ListenError>;
    /// `Node::set_address`.
    fn set_address(&self, replica: u8, address: SocketAddr);
    /// `Node::send`.
    fn send(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError>;
    /// `Node::send_wait`.
    async fn send_wait(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError>;
    /// `Node::send_batch`.
    fn send_batch(&self, to: u8, batch: &mut VecDeque<(u32, Bytes)>) -> Result<(), RouteError>;
    /// `Node::send_batch_wait`.
    async fn send_batch_wait(
        &self,
        to: u8,
        batch: &mut VecDeque<(u32, Bytes)>,
    ) -> Result<(), RouteError>;
    /// `Node::send_in_view`.
    fn send_in_view(
        &self,
        to: u8,
        view: u32,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RouteError>;
    /// `Node::reply`.
    fn reply(&self, request: RequestHeader, body: Bytes) -> Result<(), ReplyError>;
    /// `Node::stats`.
    fn stats(&self) -> NodeStats;
    /// `Node::is_connected`.
    fn is_connected(&self, replica: u8) -> bool;
    /// `Node::connections`.
    fn connections(&self) -> usize;
    /// `Node::inspect`.
    fn inspect<R>(&self, f: impl FnOnce(&node::Node) -> R) -> R;
    /// `Node::shutdown`.
    async fn shutdown(&self, deadline: Duration) -> ShutdownReport;
}

/// A node's event stream.
#[allow(async_fn_in_trait)]
pub trait EventsApi: 'static {
    /// `Events::recv`.
    async fn recv(&mut self) -> Option<NodeEvent>;
    /// `Events::recv_many`.
    async fn recv_many(&mut self, out: &mut Vec<NodeEvent>, limit: usize) -> usize;
}

/// A client handle.
#[allow(async_fn_in_trait)]
pub trait ClientApi: Clone + 'static {
    /// `Client::request`.
    async fn request(&self, operation: u32, body: Bytes) -> Result<Reply, ClientError>;
    /// `Client::reserve`.
    fn reserve(&self) -> Result<Reservation, ClientError>;
    /// `Client::submit`.
    async fn submit(
        &self,
        reservation: Reservation,
        operation: u32,
        body: Bytes,
    ) -> Result<Reply, ClientError>;
    /// `Client::link`.
    fn link(&self) -> Link;
    /// `Client::connected`.
    async fn connected(&self) -> Result<u8, ConnectError>;
    /// `Client::retarget`.
    fn retarget(&self, replica: u8, address: SocketAddr);
    /// `Client::stats`.
    fn stats(&self) -> ClientStats;
    /// `Client::shutdown`.
    async fn shutdown(&self, deadline: Duration) -> ShutdownReport;
}

/// An adapter on one kind of runtime.
pub trait Bus: 'static {
    /// Names the runtime in messages.
    const NAME: &'static str;
    /// Its node.
    type Node: NodeApi;
    /// Its node's events.
    type Events: EventsApi;
    /// Its client.
    type Client: ClientApi;

    /// Runs `scenario` to completion on a fresh runtime of this kind.
    fn run<F: Future>(scenario: F) -> F::Output;
    /// Sleeps on this runtime's timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;
    /// `Node::start`.
    fn start_node(
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(Self::Node, Self::Events), StartError>;
    /// `Client::start`.
    fn start_client(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Self::Client, StartError>;
    /// `Client::start_via`.
    fn start_client_via(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Self::Client, StartError>;
    /// `Client::start_with_identity`.
    fn start_client_with_identity(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Self::Client, StartError>;
    /// `Client::random_id`.
    fn random_id() -> u128;
}

/// Implements the API traits for one adapter crate's types.
macro_rules! forward_api {
    ($adapter:ident) => {
        impl NodeApi for $adapter::Node {
            async fn listen(&self, address: SocketAddr) -> Result<SocketAddr, ListenError> {
                $adapter::Node::listen(self, address).await
            }
            async fn listen_via(
                &self,
                address: SocketAddr,
                transport: Transport,
            ) -> Result<SocketAddr, ListenError> {
                $adapter::Node::listen_via(self, address, transport).await
            }
            fn set_address(&self, replica: u8, address: SocketAddr) {
                $adapter::Node::set_address(self, replica, address)
            }
            fn send(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
                $adapter::Node::send(self, to, operation, body)
            }
            async fn send_wait(
                &self,
                to: u8,
                operation: u32,
                body: Bytes,
            ) -> Result<(), RouteError> {
                $adapter::Node::send_wait(self, to, operation, body).await
            }
            fn send_batch(
                &self,
                to: u8,
                batch: &mut VecDeque<(u32, Bytes)>,
            ) -> Result<(), RouteError> {
                $adapter::Node::send_batch(self, to, batch)
            }
            async fn send_batch_wait(
                &self,
                to: u8,
                batch: &mut VecDeque<(u32, Bytes)>,
            ) -> Result<(), RouteError> {
                $adapter::Node::send_batch_wait(self, to, batch).await
            }
            fn send_in_view(
                &self,
                to: u8,
                view: u32,
                operation: u32,
                body: Bytes,
            ) -> Result<(), RouteError> {
                $adapter::Node::send_in_view(self, to, view, operation, body)
            }
            fn reply(&self, request: RequestHeader, body: Bytes) -> Result<(), ReplyError> {
                $adapter::Node::reply(self, request, body)
            }
            fn stats(&self) -> NodeStats {
                $adapter::Node::stats(self)
            }
            fn is_connected(&self, replica: u8) -> bool {
                $adapter::Node::is_connected(self, replica)
            }
            fn connections(&self) -> usize {
                $adapter::Node::connections(self)
            }
            fn inspect<R>(&self, f: impl FnOnce(&node::Node) -> R) -> R {
                $adapter::Node::inspect(self, f)
            }
            async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
                $adapter::Node::shutdown(self, deadline).await
            }
        }

        impl EventsApi for $adapter::Events {
            async fn recv(&mut self) -> Option<NodeEvent> {
                $adapter::Events::recv(self).await
            }
            async fn recv_many(&mut self, out: &mut Vec<NodeEvent>, limit: usize) -> usize {
                $adapter::Events::recv_many(self, out, limit).await
            }
        }

        impl ClientApi for $adapter::Client {
            async fn request(&self, operation: u32, body: Bytes) -> Result<Reply, ClientError> {
                $adapter::Client::request(self, operation, body).await
            }
            fn reserve(&self) -> Result<Reservation, ClientError> {
                $adapter::Client::reserve(self)
            }
            async fn submit(
                &self,
                reservation: Reservation,
                operation: u32,
                body: Bytes,
            ) -> Result<Reply, ClientError> {
                $adapter::Client::submit(self, reservation, operation, body).await
            }
            fn link(&self) -> Link {
                $adapter::Client::link(self)
            }
            async fn connected(&self) -> Result<u8, ConnectError> {
                $adapter::Client::connected(self).await
            }
            fn retarget(&self, replica: u8, address: SocketAddr) {
                $adapter::Client::retarget(self, replica, address)
            }
            fn stats(&self) -> ClientStats {
                $adapter::Client::stats(self)
            }
            async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
                $adapter::Client::shutdown(self, deadline).await
            }
        }
    };
}

/// The constructors, the same for every runtime of one adapter.
macro_rules! forward_start {
    ($adapter:ident) => {
        type Node = $adapter::Node;
        type Events = $adapter::Events;
        type Client = $adapter::Client;

        fn start_node(
            config: &ValidConfig,
            params: NodeParams,
            keys: KeyRing,
            options: NodeOptions,
        ) -> Result<(Self::Node, Self::Events), StartError> {
            $adapter::Node::start(config, params, keys, options)
        }
        fn start_client(
            config: &ValidConfig,
            params: ClientParams,
            keys: KeyRing,
            address: SocketAddr,
        ) -> Result<Self::Client, StartError> {
            $adapter::Client::start(config, params, keys, address)
        }
        fn start_client_via(
            config: &ValidConfig,
            params: ClientParams,
            keys: KeyRing,
            address: SocketAddr,
            transport: Transport,
        ) -> Result<Self::Client, StartError> {
            $adapter::Client::start_via(config, params, keys, address, transport)
        }
        fn start_client_with_identity(
            config: &ValidConfig,
            cluster: u128,
            target: u8,
            identity: ClientIdentity,
            keys: KeyRing,
            address: SocketAddr,
        ) -> Result<Self::Client, StartError> {
            $adapter::Client::start_with_identity(config, cluster, target, identity, keys, address)
        }
        fn random_id() -> u128 {
            $adapter::Client::random_id()
        }
    };
}

forward_api!(bus_tokio);
forward_api!(bus_smol);
forward_api!(bus_compio);

/// bus-tokio on a 2-worker multi-threaded runtime (`MULTI`) or on a
/// current-thread one.
pub struct Tokio<const MULTI: bool>;
/// bus-tokio on a 2-worker multi-threaded runtime.
pub type TokioMulti = Tokio<true>;
/// bus-tokio on a current-thread runtime.
pub type TokioCurrent = Tokio<false>;
/// bus-smol, its tasks on smol's global executor, the scenario on
/// `smol::block_on`.
pub struct Smol;
/// bus-smol with its tasks on an executor the scenario's thread runs
/// (`Node::start_on`), the scenario on that executor too.
pub struct SmolExecutor;
/// bus-compio on the io_uring driver (`IO_URING`) or on epoll.
pub struct Compio<const IO_URING: bool>;
/// bus-compio on the io_uring driver.
pub type CompioUring = Compio<true>;
/// bus-compio on the epoll driver.
pub type CompioPoll = Compio<false>;

fn tokio_runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("a tokio runtime")
}

impl<const MULTI: bool> Bus for Tokio<MULTI> {
    const NAME: &'static str = match MULTI {
        true => "tokio (multi-thread)",
        false => "tokio (current-thread)",
    };
    forward_start!(bus_tokio);
    fn run<F: Future>(scenario: F) -> F::Output {
        tokio_runtime(MULTI).block_on(scenario)
    }
    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }
}

impl Bus for Smol {
    const NAME: &'static str = "smol";
    forward_start!(bus_smol);
    fn run<F: Future>(scenario: F) -> F::Output {
        smol::block_on(scenario)
    }
    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }
}

thread_local! {
    /// The executor [`SmolExecutor::run`] runs on this thread.
    static SMOL_EXECUTOR: std::cell::RefCell<Option<std::sync::Arc<smol::Executor<'static>>>> =
        const { std::cell::RefCell::new(None) };
}

fn smol_executor() -> std::sync::Arc<smol::Executor<'static>> {
    SMOL_EXECUTOR
        .with_borrow(Clone::clone)
        .expect("started inside SmolExecutor::run")
}

impl Bus for SmolExecutor {
    const NAME: &'static str = "smol (own executor)";
    type Node = bus_smol::Node;
    type Events = bus_smol::Events;
    type Client = bus_smol::Client;

    fn run<F: Future>(scenario: F) -> F::Output {
        let executor = std::sync::Arc::new(smol::Executor::new());
        SMOL_EXECUTOR.with_borrow_mut(|slot| *slot = Some(executor.clone()));
        let output = smol::block_on(executor.run(scenario));
        SMOL_EXECUTOR.with_borrow_mut(|slot| *slot = None);
        output
    }
    async fn sleep(duration: Duration) {
        smol::Timer::after(duration).await;
    }
    fn start_node(
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(Self::Node, Self::Events), StartError> {
        bus_smol::Node::start_on(smol_executor(), config, params, keys, options)
    }
    fn start_client(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Self::Client, StartError> {
        bus_smol::Client::start_on(smol_executor(), config, params, keys, address)
    }
    fn start_client_via(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<Self::Client, StartError> {
        bus_smol::Client::start_via(config, params, keys, address, transport)
    }
    fn start_client_with_identity(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Self::Client, StartError> {
        bus_smol::Client::start_with_identity_on(
            smol_executor(),
            config,
            cluster,
            target,
            identity,
            keys,
            address,
        )
    }
    fn random_id() -> u128 {
        bus_smol::Client::random_id()
    }
}

/// A compio runtime on `driver`; fails naming the driver if the kernel
/// does not offer it (both drivers are part of the test suite).
pub fn compio_runtime(driver: compio::driver::DriverType) -> compio::runtime::Runtime {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor.driver_type(driver);
    let runtime = compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
        .unwrap_or_else(|error| panic!("no compio runtime on the {driver:?} driver: {error}"));
    assert_eq!(
        runtime.driver_type(),
        driver,
        "compio picked another driver"
    );
    runtime
}

impl<const IO_URING: bool> Bus for Compio<IO_URING> {
    const NAME: &'static str = match IO_URING {
        true => "compio (io_uring)",
        false => "compio (epoll)",
    };
    forward_start!(bus_compio);
    fn run<F: Future>(scenario: F) -> F::Output {
        let driver = match IO_URING {
            true => compio::driver::DriverType::IoUring,
            false => compio::driver::DriverType::Poll,
        };
        compio_runtime(driver).block_on(scenario)
    }
    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        compio::time::sleep(duration)
    }
}

/// One `#[test]` per scenario and runtime: `scenarios!(a, b)` makes
/// `tokio_multi::a`, `tokio_current::a`, `smol_global::a`,
/// `smol_executor::a`, `compio_uring::a`, `compio_poll::a`, and the same
/// for `b`. Each scenario is an
/// `async fn name<B: Bus>()`.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $crate::scenarios!(@runtime tokio_multi, TokioMulti, $($name),*);
        $crate::scenarios!(@runtime tokio_current, TokioCurrent, $($name),*);
        $crate::scenarios!(@runtime smol_global, Smol, $($name),*);
        $crate::scenarios!(@runtime smol_executor, SmolExecutor, $($name),*);
        $crate::scenarios!(@runtime compio_uring, CompioUring, $($name),*);
        $crate::scenarios!(@runtime compio_poll, CompioPoll, $($name),*);
    };
    (@runtime $module:ident, $bus:ident, $($name:ident),*) => {
        mod $module {
            use $crate::bus::Bus as _;
            $(
                #[test]
                fn $name() {
                    $crate::bus::$bus::run(super::$name::<$crate::bus::$bus>());
                }
            )*
        }
    };
}
