//! One interface over the three adapters, so every scenario is written
//! once. The adapters' handles are one generic type
//! (`bus_proto::host::{Node, Events, Client}`) on each runtime, so a
//! scenario names them through [`NodeOf`], [`EventsOf`] and [`ClientOf`];
//! a [`Bus`] only says how to run a scenario and where the bus's tasks go.

use bus_proto::client::ClientParams;
use bus_proto::client::identity::file::ClientIdentity;
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::host::{Client, Events, Listen, Node, NodeOptions, Platform, StartError, Transport};
use bus_proto::node::NodeParams;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// The node handle of bus `B`.
pub type NodeOf<B> = Node<<B as Bus>::Runtime>;
/// The event stream of bus `B`'s node.
pub type EventsOf<B> = Events<<B as Bus>::Runtime>;
/// The client handle of bus `B`.
pub type ClientOf<B> = Client<<B as Bus>::Runtime>;

/// An adapter on one kind of runtime.
pub trait Bus: 'static {
    /// Names the runtime in messages.
    const NAME: &'static str;
    /// The adapter's runtime type.
    type Runtime: Platform + Listen<SocketAddr>;

    /// Where the bus's tasks run; called inside [`Bus::run`].
    fn runtime() -> Self::Runtime;
    /// Runs `scenario` to completion on a fresh runtime of this kind.
    fn run<F: Future>(scenario: F) -> F::Output;
    /// Sleeps on this runtime's timer.
    fn sleep(duration: Duration) -> impl Future<Output = ()>;

    /// `Node::start_in` on [`Bus::runtime`].
    fn start_node(
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(NodeOf<Self>, EventsOf<Self>), StartError> {
        Node::start_in(Self::runtime(), config, params, keys, options)
    }
    /// `Client::start_in` over plain TCP.
    fn start_client(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<ClientOf<Self>, StartError> {
        Self::start_client_via(config, params, keys, address, Transport::tcp())
    }
    /// `Client::start_in` on [`Bus::runtime`].
    fn start_client_via(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
        transport: Transport,
    ) -> Result<ClientOf<Self>, StartError> {
        Client::start_in(Self::runtime(), config, params, keys, address, transport)
    }
    /// `Client::start_with_identity_in` over plain TCP.
    fn start_client_with_identity(
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<ClientOf<Self>, StartError> {
        Client::start_with_identity_in(
            Self::runtime(),
            config,
            cluster,
            target,
            identity,
            keys,
            address,
            Transport::tcp(),
        )
    }
    /// `Client::random_id`.
    fn random_id() -> u128 {
        Client::<Self::Runtime>::random_id()
    }
}

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
/// (`Smol::on`), the scenario on that executor too.
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
    type Runtime = bus_tokio::Tokio;
    fn runtime() -> bus_tokio::Tokio {
        bus_tokio::Tokio::current().expect("inside Bus::run")
    }
    fn run<F: Future>(scenario: F) -> F::Output {
        tokio_runtime(MULTI).block_on(scenario)
    }
    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }
}

impl Bus for Smol {
    const NAME: &'static str = "smol";
    type Runtime = bus_smol::Smol;
    fn runtime() -> bus_smol::Smol {
        bus_smol::Smol::global()
    }
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
    type Runtime = bus_smol::Smol;

    fn runtime() -> bus_smol::Smol {
        bus_smol::Smol::on(smol_executor())
    }
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
    type Runtime = bus_compio::Compio;
    fn runtime() -> bus_compio::Compio {
        bus_compio::Compio::current().expect("inside Bus::run")
    }
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
