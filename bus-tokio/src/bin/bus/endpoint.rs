//! Listen addresses and dial targets named by URL (`tcp://`, `tls://`,
//! `ws://`, `wss://`, `quic://`), the certificate options they need, and
//! `bus cert`.

use crate::Failure;
use bus_tokio::Transport;
use bus_tokio::bus_proto::transport::BindingPolicy;
use bus_tokio::bus_proto::transport::tls::{TlsClient, TlsServer, load_roots};
use bus_tokio::bus_proto::transport::ws::{WsClient, WsServer};
use bus_tokio::bus_proto::wire::Plane;
use clap::Args;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How frames travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Tcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

/// `SCHEME://HOST:PORT[/PATH][?OPTIONS]`, or a bare `HOST:PORT` for TCP;
/// options, joined by `&`: `unbound`, and `replicas` or `clients`.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) scheme: Scheme,
    pub(crate) address: SocketAddr,
    /// The host as written (the TLS server name to verify by default).
    host: String,
    port: u16,
    path: String,
    /// `?unbound`: the bus handshake is not bound to the TLS session, for
    /// clients that cannot export keying material (browsers).
    unbound: bool,
    /// `?replicas` or `?clients`: a listener for that plane only.
    only: Option<Plane>,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (scheme, rest) = match text.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("tls", rest)) => (Scheme::Tls, rest),
            Some(("ws", rest)) => (Scheme::Ws, rest),
            Some(("wss", rest)) => (Scheme::Wss, rest),
            Some(("quic", rest)) => (Scheme::Quic, rest),
            Some((other, _)) => {
                return Err(format!(
                    "`{text}`: unknown scheme `{other}` (tcp, tls, ws, wss or quic)"
                ));
            }
            None => (Scheme::Tcp, text),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut unbound, mut only) = (false, None);
        for option in query.split('&').filter(|o| !o.is_empty()) {
            match option {
                "unbound" if matches!(scheme, Scheme::Tls | Scheme::Wss | Scheme::Quic) => {
                    unbound = true;
                }
                "unbound" => {
                    return Err(format!(
                        "`{text}`: only tls://, wss:// and quic:// take `?unbound`"
                    ));
                }
                "replicas" | "clients" if only.is_some() => {
                    return Err(format!("`{text}`: `?replicas` or `?clients`, not both"));
                }
                "replicas" => only = Some(Plane::Replica),
                "clients" => only = Some(Plane::Client),
                other => {
                    return Err(format!(
                        "`{text}`: unknown option `{other}` (unbound, replicas, clients)"
                    ));
                }
            }
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        if path != "/" && matches!(scheme, Scheme::Tcp | Scheme::Tls | Scheme::Quic) {
            return Err(format!("`{text}`: a path is for ws:// and wss:// only"));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}`: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|e| format!("`{text}`: `{port}` is not a port: {e}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("`{text}`: cannot resolve `{host}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{text}`: `{host}` has no address"))?;
        Ok(Endpoint {
            scheme,
            address,
            host: host.to_string(),
            port,
            path: path.to_string(),
            unbound,
            only,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Quic => "quic",
        };
        write!(f, "{scheme}://{}", self.address)?;
        if matches!(self.scheme, Scheme::Ws | Scheme::Wss) {
            f.write_str(&self.path)?;
        }
        let plane = self.only.map(|plane| match plane {
            Plane::Replica => "replicas",
            Plane::Client => "clients",
        });
        let options: Vec<&str> = [self.unbound.then_some("unbound"), plane]
            .into_iter()
            .flatten()
            .collect();
        if !options.is_empty() {
            write!(f, "?{}", options.join("&"))?;
        }
        Ok(())
    }
}

/// Certificates for `tls://` and `wss://`.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Certificate chain (PEM) that tls://, wss:// and quic:// listeners present;
    /// `bus cert` makes a development one.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Certificates (PEM) a dialer trusts for tls://, wss:// and quic:// targets; a
    /// self-signed certificate here pins it.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the
    /// target's host).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

fn policy(unbound: bool) -> BindingPolicy {
    match unbound {
        true => BindingPolicy::Unbound,
        false => BindingPolicy::TlsExporter,
    }
}

impl TlsArgs {
    fn server(&self, endpoint: &Endpoint) -> Result<TlsServer, Failure> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Err(Failure(format!(
                "{endpoint}: a TLS listener needs --tls-cert and --tls-key (`bus cert` makes a pair)"
            )));
        };
        Ok(TlsServer::from_pem_files(cert, key)?.binding(policy(endpoint.unbound)))
    }

    fn client(&self, endpoint: &Endpoint) -> Result<TlsClient, Failure> {
        let Some(ca) = &self.tls_ca else {
            return Err(Failure(format!(
                "{endpoint}: a TLS target needs --tls-ca (the certificates to trust)"
            )));
        };
        let name = self.tls_server_name.as_deref().unwrap_or(&endpoint.host);
        Ok(TlsClient::new(load_roots(ca)?, name)?.binding(policy(endpoint.unbound)))
    }
}

impl Endpoint {
    /// The transport a listener on this endpoint uses.
    pub(crate) fn listener(&self, tls: &TlsArgs) -> Result<Transport, Failure> {
        let transport = match self.scheme {
            Scheme::Tcp => Transport::tcp(),
            Scheme::Tls => tls.server(self)?.transport(),
            Scheme::Ws => WsServer::new().transport(),
            Scheme::Wss => WsServer::over_tls(&tls.server(self)?).transport(),
            Scheme::Quic => tls.server(self)?.quic(),
        };
        Ok(match self.only {
            Some(plane) => transport.only(plane),
            None => transport,
        })
    }

    /// The transport a dial to this endpoint uses.
    pub(crate) fn dialer(&self, tls: &TlsArgs) -> Result<Transport, Failure> {
        if self.only.is_some() {
            return Err(Failure(format!(
                "{self}: `?replicas` and `?clients` are for --listen, not a dial target"
            )));
        }
        let url = |scheme: &str| format!("{scheme}://{}:{}{}", self.host, self.port, self.path);
        Ok(match self.scheme {
            Scheme::Tcp => Transport::tcp(),
            Scheme::Tls => tls.client(self)?.transport(),
            Scheme::Ws => WsClient::new(&url("ws"))?.transport(),
            Scheme::Wss => WsClient::over_tls(&url("wss"), &tls.client(self)?)?.transport(),
            Scheme::Quic => tls.client(self)?.quic(),
        })
    }
}

/// `bus cert` flags.
#[derive(Args)]
pub(crate) struct CertArgs {
    /// A DNS name or IP address the certificate is for; repeat for more.
    #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
    /// Where to write the certificate (PEM).
    #[arg(long, default_value = "bus-cert.pem")]
    cert_out: PathBuf,
    /// Where to write its private key (PEM, readable by its owner only).
    #[arg(long, default_value = "bus-key.pem")]
    key_out: PathBuf,
}

/// Writes a self-signed development certificate and its key; refuses to
/// overwrite either file.
pub(crate) fn cert(args: CertArgs) -> Result<(), Failure> {
    let certified = rcgen::generate_simple_self_signed(args.names.clone())
        .map_err(|e| Failure(format!("certificate for {:?}: {e}", args.names)))?;
    write_new(
        &args.key_out,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&args.cert_out, certified.cert.pem().as_bytes(), 0o644)?;
    eprintln!(
        "wrote a self-signed certificate for {} to {} and its key to {}",
        args.names.join(", "),
        args.cert_out.display(),
        args.key_out.display()
    );
    eprintln!(
        "listen with --tls-cert {} --tls-key {}; dialers trust it with --tls-ca {}",
        args.cert_out.display(),
        args.key_out.display(),
        args.cert_out.display()
    );
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| Failure(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, Scheme};

    #[test]
    fn urls_name_the_transport_address_path_and_binding() {
        let e: Endpoint = "wss://127.0.0.1:7443/bus?unbound".parse().unwrap();
        assert_eq!(e.scheme, Scheme::Wss);
        assert_eq!(e.address, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(e.to_string(), "wss://127.0.0.1:7443/bus?unbound");
        let e: Endpoint = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(e.scheme, Scheme::Tcp);
        assert_eq!(e.to_string(), "tcp://127.0.0.1:7000");
        let e: Endpoint = "quic://127.0.0.1:7443?unbound".parse().unwrap();
        assert_eq!(e.scheme, Scheme::Quic);
        assert_eq!(e.to_string(), "quic://127.0.0.1:7443?unbound");
        let e: Endpoint = "tls://127.0.0.1:7443?clients&unbound".parse().unwrap();
        assert_eq!(e.to_string(), "tls://127.0.0.1:7443?unbound&clients");
        let e: Endpoint = "127.0.0.1:7000?replicas".parse().unwrap();
        assert_eq!(e.to_string(), "tcp://127.0.0.1:7000?replicas");
        for bad in [
            "udp://127.0.0.1:1",
            "quic://127.0.0.1:1/path",
            "tls://127.0.0.1",
            "tcp://127.0.0.1:1?unbound",
            "tcp://127.0.0.1:1?replicas&clients",
            "tcp://127.0.0.1:1?everyone",
            "tls://127.0.0.1:1/path",
            "ws://127.0.0.1:99999/",
        ] {
            let error = bad.parse::<Endpoint>().unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
