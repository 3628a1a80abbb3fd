//! https: the client trusts the CA it is given, refuses a server the web
//! roots do not vouch for, and rejects a CA given for a plain http URL.

use osa_client::{Client, ClientConfig, Error, v1};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig},
};
use v1::info_service_server::{InfoService, InfoServiceServer};

struct Info;

#[tonic::async_trait]
impl InfoService for Info {
    async fn get_server_info(
        &self,
        _: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        Ok(Response::new(v1::ServerInfo { version: "tls".into(), ..Default::default() }))
    }
}

/// A TLS server for `localhost` with a throwaway self-signed certificate;
/// returns its port and the certificate's PEM.
async fn tls_server() -> (u16, String) {
    // The test's own server needs a provider too (see configure_tls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert, &key)))
        .unwrap()
        .add_service(InfoServiceServer::new(Info));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (port, cert)
}

#[tokio::test]
async fn https_with_the_given_ca() {
    let (port, cert) = tls_server().await;
    let url = format!("https://localhost:{port}");

    let mut config = ClientConfig::new(&url);
    config.ca_pem = Some(cert.clone().into_bytes());
    let client = Client::with_config(config).await.unwrap();
    assert_eq!(client.server_info().await.unwrap().version, "tls");

    // The public roots do not know a self-signed certificate.
    let err = Client::connect(&url, None).await.unwrap_err();
    assert!(matches!(&err, Error::Connect(m) if m.contains(&url)), "{err}");

    // A CA for a plaintext URL is a mistake worth reporting.
    let mut config = ClientConfig::new(format!("http://localhost:{port}"));
    config.ca_pem = Some(cert.into_bytes());
    let err = Client::with_config(config).await.unwrap_err();
    assert!(matches!(&err, Error::Connect(m) if m.contains("not an https URL")), "{err}");
}
