//! Who a certificate names: a role and, for some, which one (`spiffe://marina/coord/2`).

use std::fmt;

/// The URI every identity is written under, in a certificate's URI SAN.
pub const IDENTITY_PREFIX: &str = "spiffe://marina/";

/// What a certificate's holder is, and so what it may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A coord node: Raft with its peers, every coord path.
    Coord,
    /// A master: its own subtree of coord.
    Master,
    /// An agent: attaches to the leading master as the agent its certificate names.
    Agent,
    /// A gateway: Marina's scheduler on the masters, its own subtree of coord, its standbys'
    /// forwarding to its leader.
    Gateway,
    /// Another scheduler on the masters' scheduler API (nothing else).
    Framework,
    /// A person or a tool: everything, membership changes included.
    Operator,
    /// A metrics scraper (Prometheus): `/metrics` and `/health`, nothing else.
    Monitor,
}

impl Role {
    pub const ALL: [Role; 7] =
        [Role::Coord, Role::Master, Role::Agent, Role::Gateway, Role::Framework, Role::Operator, Role::Monitor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coord => "coord",
            Role::Master => "master",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
            Role::Framework => "framework",
            Role::Operator => "operator",
            Role::Monitor => "monitor",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Role::ALL.iter().map(|role| role.as_str()).collect()
    }

    /// Whether it runs a server others call (and so needs a server certificate).
    pub fn serves(self) -> bool {
        matches!(self, Role::Coord | Role::Master | Role::Agent | Role::Gateway)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| format!("unknown role {name:?} (one of {})", Role::names().join(", ")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate holder: `spiffe://marina/<role>[/<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// Which one: a coord node's id, an agent's name. `None` for a role held alike by many.
    pub id: Option<String>,
}

impl Identity {
    pub fn new(role: Role, id: Option<&str>) -> Self {
        Identity { role, id: id.map(str::to_owned) }
    }

    /// Whether `id` may be written into an identity: a name, nothing a path or URI would
    /// read differently.
    pub fn valid_id(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= 128
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && id != "."
            && id != ".."
    }

    /// Reads `spiffe://marina/<role>[/<id>]`; anything else is not a Marina identity.
    pub fn parse(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(IDENTITY_PREFIX)?;
        let (role, id) = match rest.split_once('/') {
            Some((role, id)) => (role, Some(id)),
            None => (rest, None),
        };
        let role = role.parse().ok()?;
        match id {
            Some(id) if !Identity::valid_id(id) => None,
            id => Some(Identity::new(role, id)),
        }
    }

    /// The Marina identity in a DER certificate's URI SANs.
    pub fn of_certificate(der: &[u8]) -> Result<Identity, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("unreadable subject alternative names: {e}"))?
            .map(|extension| extension.value.general_names.clone())
            .unwrap_or_default();
        names
            .iter()
            .find_map(|name| match name {
                GeneralName::URI(uri) => Identity::parse(uri),
                _ => None,
            })
            .ok_or_else(|| {
                format!("the certificate names no Marina identity (a URI SAN {IDENTITY_PREFIX}<role>[/<id>])")
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{IDENTITY_PREFIX}{}/{id}", self.role),
            None => write!(f, "{IDENTITY_PREFIX}{}", self.role),
        }
    }
}

/// How a request's caller reached this port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Without TLS: on a service that has none, or on a port that also takes plaintext
    /// (`tls.accept_plaintext`, the gateway on loopback for `curl`).
    Plaintext,
    /// Over TLS without a client certificate (a REST client of the gateway).
    Anonymous,
    /// Over mutual TLS: the certificate chains to the cluster CA and names this identity.
    Verified(Identity),
}

impl Caller {
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Verified(identity) => Some(identity),
            _ => None,
        }
    }

    /// The caller of a gRPC request, as the port's accept loop recorded it. A request that
    /// did not come through [`crate::endpoint::serve`] (an in-process call) is plaintext.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Plaintext)
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Plaintext => f.write_str("a plaintext caller"),
            Caller::Anonymous => f.write_str("a caller without a certificate"),
            Caller::Verified(identity) => write!(f, "{identity}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_back_and_odd_ones_are_refused() {
        for uri in ["spiffe://marina/coord/2", "spiffe://marina/operator", "spiffe://marina/agent/host-1.a"] {
            assert_eq!(Identity::parse(uri).unwrap().to_string(), uri);
        }
        for uri in [
            "spiffe://marina/root",
            "spiffe://marina/coord/../x",
            "spiffe://marina/coord/",
            "spiffe://other/coord/1",
            "spiffe://marina/coord/1/2",
        ] {
            assert_eq!(Identity::parse(uri), None, "{uri}");
        }
    }
}
