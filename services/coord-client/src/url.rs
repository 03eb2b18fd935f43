//! `coord://host:port,host:port,host:port/root`: how every service names the quorum, in
//! the shape of the ZooKeeper connect strings operators know.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordUrl {
    /// `host:port` of each coord node; any minority of them may be down.
    pub endpoints: Vec<String>,
    /// Every path the client uses lives under this one (like a ZooKeeper chroot).
    pub root: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid coord URL {url:?}: {reason} (expected coord://host:port[,host:port...][/root])")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl FromStr for CoordUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let fail = |reason: &str| UrlError { url: url.to_owned(), reason: reason.to_owned() };
        let rest = url.strip_prefix("coord://").ok_or_else(|| fail("must start with coord://"))?;
        let (hosts, root) = match rest.find('/') {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, "/"),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let valid = host
                .rsplit_once(':')
                .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(fail(&format!("endpoint {host:?} is not host:port")));
            }
            endpoints.push(host.to_owned());
        }
        let root = root.trim_end_matches('/');
        let root = if root.is_empty() { "/".to_owned() } else { root.to_owned() };
        if root.contains("//") {
            return Err(fail("the root path has an empty segment"));
        }
        Ok(Self { endpoints, root })
    }
}

impl fmt::Display for CoordUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = if self.root == "/" { "" } else { &self.root };
        write!(f, "coord://{}{}", self.endpoints.join(","), root)
    }
}

impl serde::Serialize for CoordUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CoordUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_and_root() {
        let url: CoordUrl = "coord://127.0.0.1:2181,127.0.0.1:2182,h3:2183/marina".parse().unwrap();
        assert_eq!(url.endpoints, ["127.0.0.1:2181", "127.0.0.1:2182", "h3:2183"]);
        assert_eq!(url.root, "/marina");
        assert_eq!(url.to_string(), "coord://127.0.0.1:2181,127.0.0.1:2182,h3:2183/marina");
        let bare: CoordUrl = "coord://a:1".parse().unwrap();
        assert_eq!(bare.root, "/");
        assert_eq!(bare.to_string(), "coord://a:1");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (url, reason) in [
            ("zk://a:1/x", "coord://"),
            ("coord://a/x", "\"a\" is not host:port"),
            ("coord://a:1,,b:2/x", "\"\" is not host:port"),
            ("coord://a:1/x//y", "empty segment"),
        ] {
            let message = url.parse::<CoordUrl>().unwrap_err().to_string();
            assert!(message.contains(reason), "{url}: {message}");
        }
    }
}
