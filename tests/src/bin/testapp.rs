//! `weir-testapp`: the test applications of `weir_tests::apps` as one program, for network
//! namespaces (a pod's application, a backend on another host).
//!
//! ```text
//! weir-testapp serve grpc|http|tcp|tls NAME ADDR [--fail-first N] [--dir DIR --names A,B]
//! weir-testapp serve echo NAMESPACE/POD ADDR        answers what it received, as JSON
//! weir-testapp call grpc ADDR AUTHORITY METHOD      prints the server's name
//! weir-testapp call h2c ADDR AUTHORITY              prints `<status> <body line>`
//! weir-testapp call tcp ADDR LINE                   prints the answer line
//! weir-testapp call tls ADDR SNI CA_PEM             prints the server's greeting
//! weir-testapp call mtls ADDR DIR                   GET over mTLS with DIR/{cert,key,ca}.pem,
//!                                                   ALPN weir-http, http/1.1 (as a sidecar
//!                                                   offers): `<status> <body line>`
//! ```
//! Errors print `ERR <why>` and exit 0, so a test can compare outputs.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use weir_core::mesh::ALPN_HTTP;
use weir_tests::apps;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server until killed.
    Serve {
        /// grpc, http (HTTP/1.1 and h2c), tcp (line echo) or tls.
        kind: String,
        /// The name the server answers with.
        name: String,
        /// Where to listen.
        addr: SocketAddr,
        /// gRPC: answer UNAVAILABLE to this many calls first.
        #[arg(long, default_value_t = 0)]
        fail_first: usize,
        /// TLS: where to write the self-signed certificate (ca.pem).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// TLS: the certificate's DNS names, comma-separated.
        #[arg(long, default_value = "localhost")]
        names: String,
    },
    /// Make one call and print what came back.
    Call {
        /// grpc, h2c, tcp or tls.
        kind: String,
        /// Where to connect.
        addr: SocketAddr,
        /// grpc/h2c: the authority; tcp: the line; tls: the SNI; mtls: the directory.
        arg: String,
        /// grpc: the method; tls: the CA certificate file.
        extra: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            kind,
            name,
            addr,
            fail_first,
            dir,
            names,
        } => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            match kind.as_str() {
                "grpc" => {
                    apps::serve_grpc(apps::EchoServer::new(&name, fail_first), listener).await
                }
                "http" => apps::serve_http(&name, listener).await,
                // NAME is `namespace/pod`.
                "echo" => {
                    let (namespace, pod) = name.split_once('/').unwrap_or(("default", &name));
                    apps::serve_echo(pod, namespace, listener).await
                }
                "tcp" => apps::serve_tcp_echo(&name, listener).await,
                "tls" => {
                    let dir = dir.unwrap_or_else(std::env::temp_dir);
                    let names: Vec<&str> = names.split(',').collect();
                    apps::serve_tls(&name, &names, &dir, listener).await
                }
                other => anyhow::bail!("no server kind {other:?}: grpc, http, tcp or tls"),
            }
        }
        Command::Call {
            kind,
            addr,
            arg,
            extra,
        } => {
            let extra = extra.unwrap_or_default();
            let answer = match kind.as_str() {
                "grpc" => apps::call_grpc(addr, &arg, &extra).await.map(|r| match r {
                    Ok(reply) => format!("{} {}", reply.server, reply.method),
                    Err(status) => format!("STATUS {:?}", status.code()),
                }),
                "h2c" => apps::get_h2c(addr, &arg).await,
                "tcp" => apps::call_tcp(addr, &arg).await,
                "tls" => apps::call_tls(addr, &arg, std::path::Path::new(&extra)).await,
                "mtls" => {
                    let dir = PathBuf::from(&arg);
                    let read = |f: &str| std::fs::read_to_string(dir.join(f));
                    match (read("cert.pem"), read("key.pem"), read("ca.pem")) {
                        (Ok(cert), Ok(key), Ok(ca)) => {
                            apps::call_mtls_http(addr, &cert, &key, &ca, &[ALPN_HTTP, "http/1.1"])
                                .await
                        }
                        _ => Err(anyhow::anyhow!("{arg} needs cert.pem, key.pem and ca.pem")),
                    }
                }
                other => Err(anyhow::anyhow!(
                    "no call kind {other:?}: grpc, h2c, tcp, tls or mtls"
                )),
            };
            match answer {
                Ok(text) => println!("{text}"),
                Err(err) => println!("ERR {err:#}"),
            }
            Ok(())
        }
    }
}
