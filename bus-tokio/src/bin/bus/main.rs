//! `bus`: run a replica or a client, generate keys, watch a demo cluster,
//! and benchmark the bus against raw TCP. `bus <command> --help` explains
//! each command.

mod bench;
mod bench_quic;
mod bench_scale;
mod bench_transports;
mod demo;
mod endpoint;
mod outbox;
mod serve;
mod stop;
mod under_attack;

use bus_tokio::bus_proto::config::{Config, ValidConfig};
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The authenticated message bus for replicated systems.
#[derive(Parser)]
#[command(name = "bus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a new cluster key (64 hex characters).
    Keygen {
        /// Write the key to this file, readable by its owner only, instead
        /// of printing it. Refuses to overwrite an existing file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a self-signed development certificate and key (PEM) for
    /// tls://, wss:// and quic:// listeners.
    Cert(endpoint::CertArgs),
    /// Print the protocol configuration as TOML, a comment on each key:
    /// the defaults, or the file given, checked, with defaults filled in.
    Config {
        /// A configuration file to check and print in full.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// Run a replica: listen, connect to its peers, answer client requests
    /// by echoing them, and log what happens.
    Node(serve::NodeArgs),
    /// Send requests to a replica and print the replies.
    Client(serve::ClientArgs),
    /// Start a small cluster on loopback and show what the bus does.
    Demo(demo::DemoArgs),
    /// Measure the bus against raw TCP and tokio-util's codec.
    Bench(bench::BenchArgs),
}

/// The key and configuration every networked command takes.
#[derive(Args, Clone)]
struct Common {
    /// The cluster id, in hex.
    #[arg(long, default_value = "b05", value_parser = parse_cluster)]
    cluster: u128,
    /// Read the cluster key from this file (mode 600): one hex key per
    /// line, the signing key and, during a rotation, a verify-only one.
    /// `bus node` reads it again on SIGHUP.
    #[arg(long, conflicts_with = "key_env")]
    key_file: Option<PathBuf>,
    /// Read the cluster key from this environment variable.
    #[arg(long)]
    key_env: Option<String>,
    /// Protocol configuration (TOML); defaults otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Common {
    /// The cluster keys: the key file's (one key, or two during a
    /// rotation: signing, then verify-only) or the variable's one key.
    fn keys(&self) -> Result<KeyRing, Failure> {
        KeyRing::load(self.key_env.as_deref(), self.key_file.as_deref())
            .map_err(|e| Failure(format!("key: {e}")))
    }

    fn config(&self) -> Result<ValidConfig, Failure> {
        match &self.config {
            None => Ok(Config::default()
                .validate()
                .map_err(|e| Failure(e.to_string()))?),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Failure(format!("config {}: {e}", path.display())))?;
                Config::from_toml(&text)
                    .map_err(|e| Failure(format!("config {}: {e}", path.display())))
            }
        }
    }
}

fn parse_cluster(text: &str) -> Result<u128, String> {
    let digits = text.trim_start_matches("0x");
    u128::from_str_radix(digits, 16).map_err(|e| format!("`{text}` is not a hex cluster id: {e}"))
}

/// A command failed; the text is the one line printed.
#[derive(Debug)]
struct Failure(String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure(text)
    }
}

fn keygen(out: Option<PathBuf>) -> Result<(), Failure> {
    let key = Key::generate(&mut bus_tokio::OsEntropy);
    let hex = key.to_hex();
    match out {
        None => println!("{}", &*hex),
        Some(path) => {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
            writeln!(file, "{}", &*hex).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
            eprintln!(
                "wrote a new key to {} (fingerprint {})",
                path.display(),
                key.fingerprint()
            );
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the tokio runtime: {e}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(out),
        Command::Cert(args) => endpoint::cert(args),
        Command::Config { check } => print_config(check),
        Command::Node(args) => runtime().and_then(|rt| rt.block_on(serve::node(args))),
        Command::Client(args) => runtime().and_then(|rt| rt.block_on(serve::client(args))),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(text)) => {
            eprintln!("bus: error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// `bus config`: the defaults, or a checked file with its defaults filled
/// in, as TOML with a comment per key.
fn print_config(check: Option<PathBuf>) -> Result<(), Failure> {
    let (source, config) = match &check {
        None => ("the defaults".to_string(), Config::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure(format!("config {}: {e}", path.display())))?;
            let valid = Config::from_toml(&text)
                .map_err(|e| Failure(format!("config {}: {e}", path.display())))?;
            (format!("{} (valid)", path.display()), (*valid).clone())
        }
    };
    print!(
        "# bus protocol configuration: {source}; durations in milliseconds.\n\n{}",
        config.to_toml()
    );
    Ok(())
}
