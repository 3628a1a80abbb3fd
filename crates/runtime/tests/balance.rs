//! Balanced channels over real loopback servers: streams spread by load,
//! load released when streams end, dead replicas avoided, DNS names and
//! replicas that appear at resolve time.

#![cfg(feature = "testing")]

mod common;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{TestServer, wait_until};
use osa_runtime::{
    balance::{BalancedChannel, Resolve, StageEndpoints, balanced, balanced_with},
    client::ClientOptions,
    testing::{TickRequest, ticker_client::TickerClient},
};
use tonic::{Streaming, service::interceptor::InterceptedService};

const WAIT: Duration = Duration::from_secs(5);

fn opts() -> ClientOptions {
    ClientOptions { connect_timeout: Duration::from_secs(2), ..Default::default() }
}

fn endpoints(urls: impl IntoIterator<Item = String>) -> StageEndpoints {
    StageEndpoints { resolve_interval: Duration::from_millis(20), ..StageEndpoints::new(urls) }
}

/// Opens a long stream and waits for its first tick (so it is dispatched
/// and counted).
async fn open_stream(channel: &BalancedChannel) -> Streaming<osa_runtime::testing::TickReply> {
    let mut client = TickerClient::new(channel.clone());
    let mut stream =
        client.tick(TickRequest { count: 10_000, interval_ms: 50 }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("a first tick");
    assert_eq!(first.index, 0);
    stream
}

/// A short call that must succeed.
async fn short_call(channel: &BalancedChannel) {
    let mut client = TickerClient::new(channel.clone());
    let mut stream =
        client.tick(TickRequest { count: 1, interval_ms: 0 }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    assert!(stream.message().await.unwrap().is_none());
}

fn load_of(channel: &BalancedChannel, addr: SocketAddr) -> Option<usize> {
    let addr = addr.to_string();
    channel.in_flight().into_iter().find(|(a, _)| *a == addr).map(|(_, n)| n)
}

#[tokio::test]
async fn streams_spread_by_streams_in_flight_and_load_returns_to_zero() {
    let servers = [TestServer::plain().await, TestServer::plain().await, TestServer::plain().await];
    let channel =
        balanced("ticker", &endpoints(servers.iter().map(TestServer::url)), &opts()).unwrap();
    wait_until("three connected replicas", WAIT, || channel.connected().len() == 3).await;

    // One after another: each pick then sees the streams already counted.
    // (Opened all at once, the picks race the replicas' readiness, and a
    // clean CI run once spread 30 streams as [12, 11, 7].) With two distinct
    // random candidates and the lower load winning, the most loaded replica
    // only gains on a tie, so no replica strays by more than two.
    let mut opened = Vec::new();
    for _ in 0..30 {
        opened.push(open_stream(&channel).await);
    }
    let loads: Vec<usize> = servers.iter().map(|s| load_of(&channel, s.addr).unwrap()).collect();
    assert_eq!(loads.iter().sum::<usize>(), 30, "{loads:?}");
    for (server, load) in servers.iter().zip(&loads) {
        assert!((8..=12).contains(load), "uneven spread {loads:?}");
        assert_eq!(server.calls(), *load, "each server got the calls counted for it");
    }

    // Streams that are still open keep counting after their headers and
    // first messages: the load is the same a while later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later: Vec<usize> = servers.iter().map(|s| load_of(&channel, s.addr).unwrap()).collect();
    assert_eq!(later, loads);

    // Half the streams end by reading to the end is not practical at 10k
    // ticks; dropping them is how a caller leaves. Drop half, then the rest.
    opened.truncate(15);
    wait_until("15 streams in flight", WAIT, || {
        channel.in_flight().iter().map(|(_, n)| n).sum::<usize>() == 15
    })
    .await;
    drop(opened);
    wait_until("no stream in flight", WAIT, || channel.in_flight().iter().all(|(_, n)| *n == 0))
        .await;

    // A stream read to its end is released too.
    short_call(&channel).await;
    assert!(channel.in_flight().iter().all(|(_, n)| *n == 0), "{:?}", channel.in_flight());
}

#[tokio::test]
async fn a_replica_that_shuts_down_gets_no_new_calls() {
    let [a, b, c] =
        [TestServer::plain().await, TestServer::plain().await, TestServer::plain().await];
    let channel = balanced("ticker", &endpoints([a.url(), b.url(), c.url()]), &opts()).unwrap();
    wait_until("three connected replicas", WAIT, || channel.connected().len() == 3).await;
    for _ in 0..6 {
        short_call(&channel).await;
    }

    let (b_addr, b_calls) = (b.addr.to_string(), b.calls.clone());
    b.stop().await;
    wait_until("the stopped replica to be dropped from the connected set", WAIT, || {
        !channel.connected().contains(&b_addr)
    })
    .await;
    let before = b_calls.load(std::sync::atomic::Ordering::SeqCst);
    let (a_before, c_before) = (a.calls(), c.calls());
    for _ in 0..20 {
        short_call(&channel).await;
    }
    assert_eq!(b_calls.load(std::sync::atomic::Ordering::SeqCst), before);
    assert_eq!(a.calls() + c.calls() - a_before - c_before, 20);
    assert!(a.calls() > a_before && c.calls() > c_before, "both survivors share the calls");
    // It stays known (it may come back) and is retried in the background.
    assert!(channel.in_flight().iter().any(|(addr, _)| *addr == b_addr));
}

#[tokio::test]
async fn a_replica_that_comes_back_gets_calls_again() {
    let a = TestServer::plain().await;
    let b = TestServer::plain().await;
    let b_addr = b.addr;
    let channel = balanced("ticker", &endpoints([a.url(), b.url()]), &opts()).unwrap();
    wait_until("two connected replicas", WAIT, || channel.connected().len() == 2).await;
    b.stop().await;
    wait_until("b disconnected", WAIT, || channel.connected().len() == 1).await;

    // A new server on the same port: the background reconnect finds it.
    let listener = loop {
        // The port was just released; binding it again may race the kernel.
        match tokio::net::TcpListener::bind(b_addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let b2 = TestServer::plain_on(listener);
    wait_until("b reconnected", WAIT, || channel.connected().len() == 2).await;
    let held = futures::future::join_all((0..4).map(|_| open_stream(&channel))).await;
    assert_eq!(b2.calls(), 2, "in-flight balance sends half of the streams to b");
    drop(held);
}

#[tokio::test]
async fn a_dns_name_resolves_and_serves() {
    let server = TestServer::plain().await;
    let url = format!("http://localhost:{}", server.addr.port());
    let channel = balanced("ticker", &endpoints([url]), &opts()).unwrap();
    // localhost may also resolve to ::1, where nothing listens: that replica
    // stays unconnected and calls go to 127.0.0.1.
    wait_until("localhost resolved", WAIT, || !channel.in_flight().is_empty()).await;
    for _ in 0..2 {
        short_call(&channel).await;
    }
    // As the gateway uses it: behind the trace-context interceptor.
    let mut traced = TickerClient::new(InterceptedService::new(
        channel.clone(),
        osa_runtime::client::TraceContextInterceptor,
    ));
    let mut stream =
        traced.tick(TickRequest { count: 1, interval_ms: 0 }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    assert_eq!(server.calls(), 3);
    assert_eq!(channel.connected(), vec![server.addr.to_string()]);
}

/// Answers the test's current list for every name.
#[derive(Clone, Default)]
struct ListResolver(Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>);

impl ListResolver {
    fn set(&self, host: &str, addrs: Vec<SocketAddr>) {
        self.0.lock().unwrap().insert(host.to_owned(), addrs);
    }
}

impl Resolve for ListResolver {
    async fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        self.0.lock().unwrap().get(host).cloned().ok_or_else(|| io::Error::other("unknown host"))
    }
}

#[tokio::test]
async fn replicas_added_and_removed_at_resolve_time() {
    let a = TestServer::plain().await;
    let b = TestServer::plain().await;
    let resolver = ListResolver::default();
    resolver.set("ticker.test.svc", vec![a.addr]);
    let channel = balanced_with(
        "ticker",
        &endpoints(["http://ticker.test.svc:1".to_owned()]),
        &opts(),
        resolver.clone(),
    )
    .unwrap();
    short_call(&channel).await;
    assert_eq!((a.calls(), b.calls()), (1, 0));

    resolver.set("ticker.test.svc", vec![a.addr, b.addr]);
    wait_until("b connected", WAIT, || channel.connected().len() == 2).await;
    let held = futures::future::join_all((0..4).map(|_| open_stream(&channel))).await;
    assert_eq!(b.calls(), 2, "the new replica takes its share");
    assert_eq!(load_of(&channel, b.addr), Some(2));

    // A failed lookup keeps the set.
    resolver.0.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(channel.in_flight().len(), 2);

    // a vanishes from DNS: it is removed; its open streams keep running.
    resolver.set("ticker.test.svc", vec![b.addr]);
    wait_until("a removed", WAIT, || channel.in_flight().len() == 1).await;
    for _ in 0..4 {
        short_call(&channel).await;
    }
    assert_eq!(a.calls(), 3);
    drop(held);
}

#[tokio::test]
async fn no_reachable_replica_is_unavailable_naming_the_stage() {
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let opts = ClientOptions { connect_timeout: Duration::from_millis(300), ..opts() };
    let channel = balanced("generator", &endpoints([format!("http://{addr}")]), &opts).unwrap();
    let started = std::time::Instant::now();
    let err = TickerClient::new(channel.clone())
        .tick(TickRequest { count: 1, interval_ms: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("generator") && err.message().contains(&addr.to_string()),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_endpoints_are_refused_up_front() {
    let e = balanced("ticker", &endpoints(["127.0.0.1:5".to_owned()]), &opts()).unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:5"), "{e}");
    let e = balanced("ticker", &StageEndpoints::default(), &opts()).unwrap_err();
    assert!(e.to_string().contains("no endpoints"), "{e}");
}

#[tokio::test]
async fn a_draining_replica_is_left_before_it_refuses_calls() {
    let [a, b] = [TestServer::plain().await, TestServer::plain().await];
    let channel = balanced("ticker", &endpoints([a.url(), b.url()]), &opts()).unwrap();
    wait_until("two connected replicas", WAIT, || channel.connected().len() == 2).await;
    // One stream on each keeps b's connection open through its drain.
    let held = futures::future::join_all((0..2).map(|_| open_stream(&channel))).await;
    assert_eq!((a.calls(), b.calls()), (1, 1));

    // b reports NOT_SERVING the moment its drain starts, before its GOAWAY
    // could refuse a call: the balancer leaves it on that health update.
    b.shutdown.trigger();
    let b_addr = b.addr.to_string();
    wait_until("b to leave the set", WAIT, || !channel.connected().contains(&b_addr)).await;
    for _ in 0..10 {
        short_call(&channel).await;
    }
    assert_eq!(b.calls(), 1, "no new call reached the draining replica");
    assert_eq!(a.calls(), 11);
    assert_eq!(load_of(&channel, b.addr), Some(1), "b's stream still runs");
    drop(held);
    // Its drain is not held up by the balancer's health stream: it ends as
    // soon as the held stream is gone.
    tokio::time::timeout(Duration::from_millis(900), b.task)
        .await
        .expect("b drains before its 1 s deadline")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_warming_replica_gets_calls_only_once_serving() {
    let a = TestServer::plain().await;
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let w = TestServer::start_warming(async move {
        let _ = warm_rx.await;
        Ok(())
    })
    .await;
    let channel = balanced("ticker", &endpoints([a.url(), w.url()]), &opts()).unwrap();
    wait_until("a connected", WAIT, || channel.connected() == vec![a.addr.to_string()]).await;
    for _ in 0..4 {
        short_call(&channel).await;
    }
    assert_eq!((a.calls(), w.calls()), (4, 0), "NOT_SERVING replica is skipped");

    warm_tx.send(()).unwrap();
    wait_until("w serving", WAIT, || channel.connected().len() == 2).await;
    let held = futures::future::join_all((0..4).map(|_| open_stream(&channel))).await;
    assert_eq!(w.calls(), 2);
    drop(held);
}
