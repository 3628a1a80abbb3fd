//! Which addresses a stage's endpoint URLs name now: IP endpoints as
//! written, DNS names through a [`Resolve`]r, keeping the last good answer
//! when a lookup fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// An endpoint URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) url: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// Set when the host is an IP address: nothing to resolve.
    pub(super) ip: Option<IpAddr>,
}

pub(super) fn parse_target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => return Err("must start with http:// or https://".into()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
    if !matches!(uri.path(), "" | "/") {
        return Err("must not have a path".into());
    }
    // `http::Uri` accepts any digits as a port; `port_u16` would silently
    // give None (the default port) when they do not fit.
    let port = match uri.authority().and_then(|a| a.as_str().rsplit_once(':')) {
        Some((_, digits)) if !digits.ends_with(']') => {
            digits.parse::<u16>().map_err(|_| format!("port {digits:?} is not 0..=65535"))?
        }
        _ => default_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let ip = host.parse::<IpAddr>().ok();
    Ok(Target { url: url.to_owned(), host, port, ip })
}

/// Turns a host name into addresses. The system resolver is the default;
/// tests and custom discovery supply their own.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (a DNS name, never an IP address) at `port`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// [`Resolve`] through the system resolver (`getaddrinfo`, which reads
/// `/etc/hosts` and the cluster DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The current answer for every target, kept across failed lookups.
#[derive(Debug)]
pub(super) struct Resolution {
    stage: &'static str,
    pub(super) targets: Vec<Target>,
    /// Per target, the addresses of its last successful lookup.
    last_good: Vec<Vec<SocketAddr>>,
    /// How long one lookup may take.
    lookup_timeout: Duration,
}

impl Resolution {
    pub(super) fn new(stage: &'static str, targets: Vec<Target>, lookup_timeout: Duration) -> Self {
        let last_good = targets
            .iter()
            .map(|t| t.ip.map(|ip| vec![SocketAddr::new(ip, t.port)]).unwrap_or_default())
            .collect();
        Self { stage, targets, last_good, lookup_timeout }
    }

    /// Looks up every DNS target again; a failed or empty lookup keeps that
    /// target's previous addresses.
    pub(super) async fn refresh<R: Resolve>(&mut self, resolver: &R) {
        for (target, last) in self.targets.iter().zip(self.last_good.iter_mut()) {
            if target.ip.is_some() {
                continue;
            }
            let lookup = resolver.resolve(&target.host, target.port);
            let error = match tokio::time::timeout(self.lookup_timeout, lookup).await {
                Ok(Ok(mut addrs)) if !addrs.is_empty() => {
                    addrs.sort_unstable();
                    addrs.dedup();
                    *last = addrs;
                    continue;
                }
                Ok(Ok(_)) => "no addresses".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", self.lookup_timeout),
            };
            tracing::warn!(
                stage = self.stage,
                endpoint = %target.url,
                error = %error,
                kept = last.len(),
                "cannot resolve stage endpoint; keeping the last good addresses"
            );
        }
    }

    /// Every address with the index of the first target that named it.
    pub(super) fn desired(&self) -> BTreeMap<SocketAddr, usize> {
        let mut out = BTreeMap::new();
        for (i, addrs) in self.last_good.iter().enumerate() {
            for addr in addrs {
                out.entry(*addr).or_insert(i);
            }
        }
        out
    }
}

/// What must change to go from `current` to `desired`: addresses to add
/// (with their target) and addresses to remove.
pub(super) fn diff(
    current: &BTreeSet<SocketAddr>,
    desired: &BTreeMap<SocketAddr, usize>,
) -> (Vec<(SocketAddr, usize)>, Vec<SocketAddr>) {
    let insert = desired
        .iter()
        .filter(|(addr, _)| !current.contains(addr))
        .map(|(addr, target)| (*addr, *target))
        .collect();
    let remove = current.iter().filter(|addr| !desired.contains_key(addr)).copied().collect();
    (insert, remove)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// Answers from a table the test edits; a missing name is an error.
    #[derive(Clone, Default)]
    struct FakeResolver(Arc<Mutex<HashMap<String, io::Result<Vec<SocketAddr>>>>>);

    impl FakeResolver {
        fn set(&self, host: &str, answer: io::Result<Vec<&str>>) {
            let answer = answer.map(|v| v.iter().map(|a| a.parse().unwrap()).collect());
            self.0.lock().unwrap().insert(host.to_owned(), answer);
        }
    }

    impl Resolve for FakeResolver {
        async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            match self.0.lock().unwrap().get(host) {
                Some(Ok(addrs)) => {
                    Ok(addrs.iter().map(|a| SocketAddr::new(a.ip(), port)).collect())
                }
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn resolution(urls: &[&str]) -> Resolution {
        let targets = urls.iter().map(|u| parse_target(u).unwrap()).collect();
        Resolution::new("test", targets, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn lookups_add_and_remove_addresses_and_failures_keep_the_last_good_set() {
        let resolver = FakeResolver::default();
        let mut res = resolution(&["http://10.0.0.1:50061", "http://gen.osa.svc:50061"]);
        // Before any lookup only the IP endpoint is known.
        assert_eq!(res.desired().keys().copied().collect::<Vec<_>>(), addrs(&["10.0.0.1:50061"]));

        resolver.set("gen.osa.svc", Ok(vec!["10.0.1.1:0", "10.0.1.2:0"]));
        res.refresh(&resolver).await;
        let first = res.desired();
        assert_eq!(
            first.keys().copied().collect::<Vec<_>>(),
            addrs(&["10.0.0.1:50061", "10.0.1.1:50061", "10.0.1.2:50061"])
        );
        assert_eq!(first[&"10.0.1.1:50061".parse().unwrap()], 1, "named by the second target");

        let current: BTreeSet<_> = first.keys().copied().collect();
        resolver.set("gen.osa.svc", Ok(vec!["10.0.1.2:0", "10.0.1.3:0"]));
        res.refresh(&resolver).await;
        let (insert, remove) = diff(&current, &res.desired());
        assert_eq!(insert, vec![("10.0.1.3:50061".parse().unwrap(), 1)]);
        assert_eq!(remove, addrs(&["10.0.1.1:50061"]));

        // A failed, empty or missing answer keeps what was known.
        let current: BTreeSet<_> = res.desired().keys().copied().collect();
        for answer in [Err(io::Error::other("SERVFAIL")), Ok(vec![])] {
            resolver.set("gen.osa.svc", answer);
            res.refresh(&resolver).await;
            assert_eq!(diff(&current, &res.desired()), (vec![], vec![]));
        }
    }

    #[tokio::test]
    async fn an_address_named_twice_is_one_replica() {
        let resolver = FakeResolver::default();
        resolver.set("a.svc", Ok(vec!["10.0.0.1:0"]));
        resolver.set("b.svc", Ok(vec!["10.0.0.1:0", "10.0.0.2:0"]));
        let mut res = resolution(&["http://a.svc:7", "http://b.svc:7"]);
        res.refresh(&resolver).await;
        let desired = res.desired();
        assert_eq!(desired.len(), 2);
        assert_eq!(desired[&"10.0.0.1:7".parse().unwrap()], 0, "the first target wins");
        assert_eq!(desired[&"10.0.0.2:7".parse().unwrap()], 1);
        let (insert, remove) = diff(&BTreeSet::new(), &desired);
        assert_eq!(insert.len(), 2);
        assert!(remove.is_empty());
    }

    #[test]
    fn targets_parse_hosts_ports_and_ips() {
        let t = parse_target("http://[::1]:5000").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.ip), ("::1", 5000, Some("::1".parse().unwrap())));
        let t = parse_target("https://gen.osa.svc").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.ip), ("gen.osa.svc", 443, None));
    }
}
