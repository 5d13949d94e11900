//! TLS end to end: a node serving HTTPS and WSS with a certificate from a private authority,
//! clients that trust that authority exchanging messages over it, and a client that does not
//! trust it refused before anything is sent.

mod common;

use chat::client::{Client, Credentials, Error, Server};
use chat::server::TlsConfig;
use common::{PASSWORD, TestServer, config, next_text, synced};

/// A certificate for 127.0.0.1 and its key, both PEM.
fn certificate() -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_over_tls_and_an_untrusted_server_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_pem, key_pem) = certificate();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, &key_pem).expect("write key");
    let mut cfg = config("memory:");
    cfg.tls = Some(TlsConfig { cert, key });
    let node = TestServer::start(cfg).await;
    let url = format!("https://127.0.0.1:{}", node.addr.port());

    // Without the private authority, the web's roots do not vouch for this server.
    let refused = Client::builder(&url)
        .device_name("laptop")
        .register(&Credentials::new("mallory", PASSWORD))
        .await;
    match refused {
        Err(Error::Network(n)) => {
            assert_eq!(n.kind(), chat::client::NetworkErrorKind::Tls, "{n}");
            assert!(
                matches!(
                    n.tls(),
                    Some(chat::client::TlsError::InvalidCertificate(
                        chat::client::CertificateError::UnknownIssuer
                    ))
                ),
                "{n}"
            );
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }

    let server = Server::parse(&url)
        .expect("url")
        .with_root_certificates(cert_pem.as_bytes())
        .expect("roots");
    let alice = Client::builder(&server)
        .device_name("laptop")
        .register(&Credentials::new("alice", PASSWORD))
        .await
        .expect("register alice over https");
    let bob = Client::builder(&server)
        .device_name("phone")
        .register(&Credentials::new("bob", PASSWORD))
        .await
        .expect("register bob over https");
    let (mut a, mut b) = (alice.events(), bob.events());
    synced(&mut a).await; // the WebSocket (wss) is up
    synced(&mut b).await;
    let chat = alice.open_direct(bob.user()).await.expect("open");
    alice
        .conversation(chat)
        .send_text("over TLS")
        .await
        .expect("send");
    assert_eq!(next_text(&mut b, chat).await.text(), Some("over TLS"));
}
