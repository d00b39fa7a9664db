//! The network policy (`apisync.allowed_hosts`, `apisync.denied_networks`): checked on the host of
//! every URL and redirect hop, and on every address a host name resolves to, so that neither a
//! redirect nor DNS rebinding reaches a denied network.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

use crate::error::{Error, Result, SqlState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// `*` allows every host; otherwise exact names and `*.suffix` patterns, lower case.
    allowed_hosts: Vec<String>,
    denied_networks: Vec<Network>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    address: IpAddr,
    prefix: u8,
}

/// Why a request was refused: the error type the resolver and the redirect policy hand to
/// reqwest, found again in its error chain to raise 42501.
#[derive(Debug, Clone)]
pub struct PolicyDenied(pub String);

impl fmt::Display for PolicyDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyDenied {}

impl PolicyDenied {
    pub fn into_error(self) -> Error {
        Error::new(SqlState::InsufficientPrivilege, self.0)
            .with_hint("a superuser sets apisync.allowed_hosts and apisync.denied_networks")
    }
}

impl NetworkPolicy {
    /// Parses the two settings: comma-separated lists, whitespace ignored.
    pub fn parse(allowed_hosts: &str, denied_networks: &str) -> Result<NetworkPolicy> {
        let allowed_hosts = allowed_hosts
            .split(',')
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let denied_networks = denied_networks
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(Network::parse)
            .collect::<Result<_>>()?;
        Ok(NetworkPolicy {
            allowed_hosts,
            denied_networks,
        })
    }

    /// Allows everything: for tests of other parts.
    pub fn open() -> NetworkPolicy {
        NetworkPolicy {
            allowed_hosts: vec!["*".into()],
            denied_networks: vec![],
        }
    }

    /// The host of `url`: its name against allowed_hosts, an IP literal also against
    /// denied_networks (IPv4-mapped IPv6 and numeric IPv4 forms are normalised by then).
    pub fn check_url(&self, url: &Url) -> Result<(), PolicyDenied> {
        match url.host() {
            None => Err(PolicyDenied(format!("the URL {url} has no host"))),
            Some(Host::Domain(name)) => self.check_name(name),
            Some(Host::Ipv4(ip)) => self
                .check_name(&ip.to_string())
                .and(self.check_ip(IpAddr::V4(ip))),
            Some(Host::Ipv6(ip)) => self
                .check_name(&format!("[{ip}]"))
                .and(self.check_ip(IpAddr::V6(ip))),
        }
    }

    fn check_name(&self, host: &str) -> Result<(), PolicyDenied> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let allowed = self
            .allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*") {
                Some("") => true,
                Some(suffix) => suffix.starts_with('.') && host.ends_with(suffix),
                None => *pattern == host,
            });
        if allowed {
            Ok(())
        } else {
            Err(PolicyDenied(format!(
                "host \"{host}\" is not in apisync.allowed_hosts"
            )))
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), PolicyDenied> {
        let ip = canonical(ip);
        // 0.0.0.0 and :: connect to the local host: never a destination, whatever the setting.
        if ip.is_unspecified() {
            return Err(PolicyDenied(format!(
                "address {ip} is the unspecified address, which is never connected to"
            )));
        }
        match self.denied_networks.iter().find(|n| n.contains(ip)) {
            Some(network) => Err(PolicyDenied(format!(
                "address {ip} is in {network}, which apisync.denied_networks denies"
            ))),
            None => Ok(()),
        }
    }

    /// The resolved addresses that may be connected to; an error when none may.
    pub fn filter_addresses(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, PolicyDenied> {
        let mut first_denial = None;
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(denied) => {
                    first_denial.get_or_insert(denied);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_denial) {
            (true, Some(PolicyDenied(reason))) => Err(PolicyDenied(format!(
                "host \"{host}\" resolves to {reason}"
            ))),
            _ => Ok(allowed),
        }
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl Network {
    fn parse(text: &str) -> Result<Network> {
        let invalid = || {
            Error::invalid(format!(
                "invalid network \"{text}\" in apisync.denied_networks"
            ))
            .with_hint("use CIDR notation, such as 169.254.0.0/16 or fe80::/10")
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let address = canonical(address);
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(invalid)?,
            None => width,
        };
        Ok(Network { address, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(network: u128, ip: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    network & mask == ip & mask
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Resolves host names with the system resolver, then drops the addresses the policy denies:
/// the check is on the address actually connected to.
pub struct PolicyResolver(pub Arc<NetworkPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter_addresses(&host, found)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &str) -> NetworkPolicy {
        NetworkPolicy::parse(allowed, "169.254.0.0/16, fe80::/10, 0.0.0.0/8").unwrap()
    }

    fn check(policy: &NetworkPolicy, url: &str) -> Result<(), String> {
        policy.check_url(&Url::parse(url).unwrap()).map_err(|e| e.0)
    }

    #[test]
    fn metadata_addresses_are_denied_in_every_form() {
        let p = policy("*");
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://169.254.43518/",
            "http://[fe80::1]/",
        ] {
            let err = check(&p, url).unwrap_err();
            assert!(err.contains("apisync.denied_networks"), "{url}: {err}");
        }
        assert!(check(&p, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&p, "http://[::1]:8080/").is_ok());
    }

    #[test]
    fn unspecified_addresses_are_never_connected_to() {
        let open = NetworkPolicy::parse("*", "").unwrap();
        for url in [
            "http://0.0.0.0:5432/",
            "http://[::]:5432/",
            "http://[::ffff:0.0.0.0]/",
        ] {
            let err = check(&open, url).unwrap_err();
            assert!(err.contains("unspecified address"), "{url}: {err}");
        }
    }

    #[test]
    fn allowed_hosts_take_names_and_suffixes() {
        let p = policy("api.example.com, *.corp.example, 127.0.0.1");
        assert!(check(&p, "https://api.example.com/x").is_ok());
        assert!(check(&p, "https://API.Example.com./x").is_ok());
        assert!(check(&p, "https://a.b.corp.example/").is_ok());
        assert!(check(&p, "http://127.0.0.1:9/").is_ok());
        for url in [
            "https://corp.example/",
            "https://evilcorp.example/",
            "http://localhost/",
        ] {
            let err = check(&p, url).unwrap_err();
            assert!(
                err.contains("is not in apisync.allowed_hosts"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let p = policy("*");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let kept = p
            .filter_addresses("h", vec![addr("169.254.1.1:80"), addr("10.0.0.1:80")])
            .unwrap();
        assert_eq!(kept, vec![addr("10.0.0.1:80")]);
        let err = p
            .filter_addresses("rebind.example", vec![addr("169.254.169.254:80")])
            .unwrap_err();
        assert_eq!(
            err.0,
            "host \"rebind.example\" resolves to address 169.254.169.254 is in 169.254.0.0/16, which apisync.denied_networks denies"
        );
    }

    #[test]
    fn networks_must_be_cidr() {
        assert!(NetworkPolicy::parse("*", "10.0.0.0/33").is_err());
        assert!(NetworkPolicy::parse("*", "not-an-ip").is_err());
        let p = NetworkPolicy::parse("*", "::ffff:10.0.0.0/8, 2001:db8::/32, 192.0.2.1").unwrap();
        assert!(p.check_ip("10.1.2.3".parse().unwrap()).is_err());
        assert!(p.check_ip("2001:db8::5".parse().unwrap()).is_err());
        assert!(p.check_ip("192.0.2.1".parse().unwrap()).is_err());
        assert!(p.check_ip("192.0.2.2".parse().unwrap()).is_ok());
    }
}
