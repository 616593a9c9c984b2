use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn data(name: &str) -> String {
    format!("{}/src/net/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn loads_certificate_with_sec1_and_pkcs8_keys() {
    load_server_config(&data("server.pem"), &data("server_sec1.key")).unwrap();
    let config = load_server_config(&data("server.pem"), &data("server_pkcs8.key")).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
}

#[test]
fn missing_files_are_named() {
    let e = load_server_config("/nonexistent/cert.pem", &data("server_sec1.key")).unwrap_err();
    assert!(
        e.starts_with("tls_certificate \"/nonexistent/cert.pem\": cannot read"),
        "{e}"
    );
    let e = load_server_config(&data("server.pem"), "/nonexistent/key.pem").unwrap_err();
    assert!(
        e.starts_with("tls_private_key \"/nonexistent/key.pem\": cannot read"),
        "{e}"
    );
}

#[test]
fn files_without_the_expected_pem_sections_are_refused() {
    // A key where the certificate should be, and the other way round.
    let e = load_server_config(&data("server_sec1.key"), &data("server_sec1.key")).unwrap_err();
    assert!(
        e.contains("tls_certificate") && e.contains("no certificate"),
        "{e}"
    );
    let e = load_server_config(&data("server.pem"), &data("server.pem")).unwrap_err();
    assert!(
        e.contains("tls_private_key") && e.contains("no private key"),
        "{e}"
    );
    let e = load_server_config(&data("README.md"), &data("server_sec1.key")).unwrap_err();
    assert!(e.contains("tls_certificate"), "{e}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let e = load_server_config(&data("server.pem"), &data("other_rsa.key")).unwrap_err();
    assert!(
        e.contains("tls_certificate") && e.contains("tls_private_key"),
        "{e}"
    );
}

#[test]
fn client_setup_offers_tls_only_when_allowed_and_configured() {
    let mut g = General::default();
    let setup = ClientTlsSetup::from_general(&g).unwrap();
    assert!(setup.acceptor().is_none() && !setup.required());
    assert!(setup.end_point.is_none());
    g.tls_certificate = data("server.pem");
    g.tls_private_key = data("server_sec1.key");
    assert!(ClientTlsSetup::from_general(&g)
        .unwrap()
        .acceptor()
        .is_some());
    g.client_tls = ClientTls::Disable;
    assert!(ClientTlsSetup::from_general(&g)
        .unwrap()
        .acceptor()
        .is_none());
    g.client_tls = ClientTls::Require;
    let setup = ClientTlsSetup::from_general(&g).unwrap();
    assert!(setup.acceptor().is_some() && setup.required());
    // SCRAM channel binding data of server.pem (ecdsa-with-SHA256), as
    // `openssl x509 -noout -fingerprint -sha256` gives it.
    let hex: String = (setup.end_point.as_deref().unwrap().iter())
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "0687f799a4d9c2d691f26d2558ec34e8a584c7322323f3bd8f7df719a770b1b5"
    );
    g.tls_private_key = "/nonexistent/key.pem".into();
    assert!(ClientTlsSetup::from_general(&g).is_err());
}

#[test]
fn server_ca_errors_are_named_and_policies_compare_by_value() {
    let policy = ServerTlsPolicy {
        mode: ServerTls::VerifyFull,
        ca: "/nonexistent/ca.pem".into(),
    };
    let e = client_config(&policy).unwrap_err();
    assert!(
        e.starts_with("server_tls_ca \"/nonexistent/ca.pem\""),
        "{e}"
    );
    let policy = ServerTlsPolicy {
        mode: ServerTls::VerifyFull,
        ca: data("server_sec1.key"),
    };
    assert!(client_config(&policy)
        .unwrap_err()
        .contains("no certificate"));
    let policy = ServerTlsPolicy {
        mode: ServerTls::VerifyFull,
        ca: data("ca.pem"),
    };
    let a = client_config(&policy).unwrap();
    assert!(
        Arc::ptr_eq(&a, &client_config(&policy.clone()).unwrap()),
        "cached"
    );
    // prefer and require share one configuration whatever the CA says.
    let p = client_config(&ServerTlsPolicy {
        mode: ServerTls::Prefer,
        ca: "x".into(),
    })
    .unwrap();
    let r = client_config(&ServerTlsPolicy {
        mode: ServerTls::Require,
        ca: String::new(),
    })
    .unwrap();
    assert!(Arc::ptr_eq(&p, &r));
    assert_ne!(
        policy,
        ServerTlsPolicy {
            mode: ServerTls::VerifyFull,
            ca: String::new()
        }
    );
}

/// A fake PostgreSQL server: answers the SSLRequest with `answer`, runs the
/// handshake on 'S' (through the same code clients get), then hands over the
/// stream.
async fn fake_server(
    answer: u8,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<io::Result<ClientStream>>,
) {
    fake_server_with(answer, TcpListener::bind("127.0.0.1:0").await.unwrap())
}

fn fake_server_with(
    answer: u8,
    listener: TcpListener,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<io::Result<ClientStream>>,
) {
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await?;
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request).await?;
        assert_eq!(request, SSL_REQUEST);
        tcp.write_all(&[answer]).await?;
        let mut stream = ClientStream::plain(tcp.into_std()?)?;
        if answer == b'S' {
            let config =
                load_server_config(&data("server.pem"), &data("server_pkcs8.key")).unwrap();
            accept_client(&mut stream, config).await?;
            assert!(stream.is_tls());
        }
        Ok(stream)
    });
    (addr, task)
}

async fn connect(
    addr: std::net::SocketAddr,
    host: &str,
    mode: ServerTls,
    ca: &str,
) -> Result<ServerStream, ServerTlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connect_server(
        tcp,
        host,
        &ServerTlsPolicy {
            mode,
            ca: ca.into(),
        },
    )
    .await
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    let (addr, server) = fake_server(b'S').await;
    let mut client = connect(addr, "localhost", ServerTls::VerifyFull, &data("ca.pem"))
        .await
        .unwrap();
    assert!(client.is_tls());
    let mut server = server.await.unwrap().unwrap();
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    // Reading the answer also takes in what the server's TLS sent after the
    // handshake (session tickets), as the login exchange does.
    server.write_all(b"pong").await.unwrap();
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
    assert!(client.is_idle_and_open());
    server.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !client.is_idle_and_open(),
        "data from the server while idle fails the probe"
    );

    // The certificate is for localhost and 127.0.0.1, not this name.
    let (addr, _server) = fake_server(b'S').await;
    let e = connect(
        addr,
        "db.example.com",
        ServerTls::VerifyFull,
        &data("ca.pem"),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, ServerTlsError::Handshake(_)), "{e}");
    // Signed by a CA we were not told to trust (the leaf itself is no CA).
    let (addr, _server) = fake_server(b'S').await;
    let e = connect(
        addr,
        "localhost",
        ServerTls::VerifyFull,
        &data("server.pem"),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, ServerTlsError::Handshake(_)), "{e}");
    // require does not check the certificate.
    let (addr, _server) = fake_server(b'S').await;
    assert!(connect(addr, "db.example.com", ServerTls::Require, "")
        .await
        .unwrap()
        .is_tls());
}

#[tokio::test]
async fn a_server_without_tls_is_fine_for_prefer_only() {
    let (addr, _server) = fake_server(b'N').await;
    assert!(!connect(addr, "localhost", ServerTls::Prefer, "")
        .await
        .unwrap()
        .is_tls());
    let (addr, _server) = fake_server(b'N').await;
    let e = connect(addr, "localhost", ServerTls::Require, "")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, ServerTlsError::NotOffered(ServerTls::Require)),
        "{e}"
    );
    let (addr, _server) = fake_server(b'N').await;
    let e = connect(addr, "localhost", ServerTls::VerifyFull, &data("ca.pem"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "the server does not accept TLS (server_tls = \"verify-full\")"
    );
    let (addr, _server) = fake_server(b'X').await;
    assert!(matches!(
        connect(addr, "localhost", ServerTls::Prefer, "").await,
        Err(ServerTlsError::BadAnswer(b'X'))
    ));
}

/// A `write_all` followed by a read must not leave the tail of what was
/// written in the TLS buffer, or the peer waits for it forever. Small socket
/// buffers make the socket full while the TLS layer still holds records.
#[tokio::test]
async fn tls_writes_reach_the_socket_before_they_complete() {
    const SIZE: usize = 48 * 1024; // under rustls' 64 KiB send buffer: one write takes it all
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap(); // inherited by the accepted socket
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (addr, server) = fake_server_with(b'S', socket.listen(8).unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let policy = ServerTlsPolicy {
        mode: ServerTls::Require,
        ca: String::new(),
    };
    let mut client = connect_server(tcp, "localhost", &policy).await.unwrap();
    let mut server = server.await.unwrap().unwrap();
    let writer = tokio::spawn(async move {
        server.write_all(&vec![7u8; SIZE]).await.unwrap();
        // Like the session code: write, then wait for the peer (no flush).
        let mut ack = [0u8; 1];
        server.read_exact(&mut ack).await.unwrap();
    });
    let reader = async {
        // Let the writer fill the socket buffers first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = vec![0u8; SIZE];
        client.read_exact(&mut got).await.unwrap();
        client.write_all(b"k").await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the whole write arrives");
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .unwrap()
        .unwrap();
}
