//! TLS and mutual TLS over real loopback with a throwaway CA (rcgen):
//! TLS server and client, health over TLS, a plaintext client refused,
//! client certificates, a balanced channel over https, settings errors.

#![cfg(feature = "testing")]

mod common;

use std::{path::PathBuf, time::Duration};

use common::{TestServer, wait_until};
use osa_runtime::{
    balance::{StageEndpoints, balanced},
    client::{ClientOptions, ClientTlsSettings, connect},
    settings::{GrpcSettings, TlsSettings, Validate},
    testing::{TickRequest, ticker_client::TickerClient},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A CA, a server certificate for localhost / 127.0.0.1 and a client
/// certificate, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "osa test ca");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        for (name, sans) in [
            ("server", vec!["localhost".to_owned(), "127.0.0.1".to_owned()]),
            ("client", vec!["gateway.osa.svc".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_tls(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert_path: Some(self.path("server.pem")),
            key_path: Some(self.path("server.key")),
            client_ca_path: mutual.then(|| self.path("ca.pem")),
        }
    }

    fn client(&self, with_cert: bool) -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            tls: Some(ClientTlsSettings {
                ca_path: Some(self.path("ca.pem")),
                domain: None,
                cert_path: with_cert.then(|| self.path("client.pem")),
                key_path: with_cert.then(|| self.path("client.key")),
            }),
            ..Default::default()
        }
    }
}

async fn tls_server(pki: &Pki, mutual: bool) -> TestServer {
    let grpc = GrpcSettings {
        drain_timeout: Duration::from_secs(1),
        tls: pki.server_tls(mutual),
        ..Default::default()
    };
    grpc.validate().unwrap();
    TestServer::start(grpc).await
}

async fn tick_once(channel: tonic::transport::Channel) -> Result<u32, tonic::Status> {
    let mut stream = TickerClient::new(channel)
        .tick(TickRequest { count: 1, interval_ms: 0 })
        .await?
        .into_inner();
    Ok(stream.message().await?.expect("one tick").index)
}

#[tokio::test]
async fn tls_server_answers_tls_client_and_health() {
    let pki = Pki::new();
    let server = tls_server(&pki, false).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let channel = connect(&url, &pki.client(false)).await.unwrap();
    assert_eq!(tick_once(channel.clone()).await.unwrap(), 0);

    let mut health = HealthClient::new(channel);
    let mut status = ServingStatus::Unknown;
    for _ in 0..100 {
        status = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, ServingStatus::Serving);

    // By IP too: the certificate names 127.0.0.1.
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let channel = connect(&url, &pki.client(false)).await.unwrap();
    assert_eq!(tick_once(channel).await.unwrap(), 0);
    server.stop().await;
}

#[tokio::test]
async fn plaintext_client_to_tls_server_fails() {
    let pki = Pki::new();
    let server = tls_server(&pki, false).await;
    let plain = tonic::transport::Endpoint::from_shared(server.url()).unwrap();
    // Either the connection or the first call fails; never a tick.
    if let Ok(channel) = plain.connect().await {
        let err = tick_once(channel).await.unwrap_err();
        assert!(!err.message().is_empty(), "{err:?}");
        assert_ne!(err.code(), tonic::Code::Ok);
    }
    // The server is still fine for TLS clients.
    let url = format!("https://localhost:{}", server.addr.port());
    assert_eq!(tick_once(connect(&url, &pki.client(false)).await.unwrap()).await.unwrap(), 0);
}

#[tokio::test]
async fn tls_client_refuses_an_unknown_ca() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = tls_server(&pki, false).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let err = connect(&url, &other.client(false)).await.unwrap_err();
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains(&url), "{text}");
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let server = tls_server(&pki, true).await;
    let url = format!("https://localhost:{}", server.addr.port());
    assert_eq!(tick_once(connect(&url, &pki.client(true)).await.unwrap()).await.unwrap(), 0);
    // Without a certificate the handshake (TLS 1.3: the first call) fails.
    if let Ok(channel) = connect(&url, &pki.client(false)).await {
        assert!(tick_once(channel).await.is_err());
    }
}

#[tokio::test]
async fn balanced_channel_over_tls() {
    let pki = Pki::new();
    let servers = [tls_server(&pki, true).await, tls_server(&pki, true).await];
    let urls = servers.iter().map(|s| format!("https://127.0.0.1:{}", s.addr.port()));
    let channel =
        balanced("ticker", &StageEndpoints::new(urls.collect::<Vec<_>>()), &pki.client(true))
            .unwrap();
    wait_until("two connected replicas", Duration::from_secs(5), || channel.connected().len() == 2)
        .await;
    let mut client = TickerClient::new(channel.clone());
    for _ in 0..4 {
        let mut s =
            client.tick(TickRequest { count: 1, interval_ms: 0 }).await.unwrap().into_inner();
        assert_eq!(s.message().await.unwrap().unwrap().index, 0);
    }
    assert_eq!(servers[0].calls() + servers[1].calls(), 4);
}

#[test]
fn server_tls_settings_are_checked_by_key_and_file() {
    let pki = Pki::new();
    let err = |tls: TlsSettings| {
        GrpcSettings { tls, ..Default::default() }.validate().unwrap_err().to_string()
    };
    assert!(GrpcSettings::default().validate().is_ok(), "TLS is off by default");

    let e = err(TlsSettings { cert_path: Some(pki.path("server.pem")), ..Default::default() });
    assert!(e.contains("grpc.tls.key_path"), "{e}");
    let e = err(TlsSettings { key_path: Some(pki.path("server.key")), ..Default::default() });
    assert!(e.contains("grpc.tls.cert_path"), "{e}");
    let e = err(TlsSettings { client_ca_path: Some(pki.path("ca.pem")), ..Default::default() });
    assert!(e.contains("grpc.tls.client_ca_path"), "{e}");

    let missing = pki.path("nope.pem");
    let e = err(TlsSettings { cert_path: Some(missing.clone()), ..pki.server_tls(false) });
    assert!(e.contains("grpc.tls.cert_path") && e.contains(&missing.display().to_string()), "{e}");

    // A key that is not PEM: the error names the files.
    std::fs::write(pki.path("junk.key"), "not a key").unwrap();
    let e = err(TlsSettings { key_path: Some(pki.path("junk.key")), ..pki.server_tls(false) });
    assert!(e.contains("grpc.tls") && e.contains("junk.key"), "{e}");

    // From TOML, the section is optional and strict.
    let parsed: GrpcSettings = toml::from_str(&format!(
        "[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    ))
    .unwrap();
    parsed.validate().unwrap();
    assert!(parsed.tls.enabled());
    assert!(toml::from_str::<GrpcSettings>("[tls]\ncert = \"x\"\n").is_err());
}

#[test]
fn client_tls_settings_are_checked_by_key() {
    let pki = Pki::new();
    let ok = pki.client(true).tls.unwrap();
    ok.validate("gateway.stages.tls").unwrap();
    let e = ClientTlsSettings { key_path: None, ..ok.clone() }
        .validate("gateway.stages.tls")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.stages.tls.key_path"), "{e}");
    let e = ClientTlsSettings { ca_path: Some(pki.path("nope.pem")), ..ok }
        .validate("gateway.stages.tls")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gateway.stages.tls.ca_path") && e.contains("nope.pem"), "{e}");
}
