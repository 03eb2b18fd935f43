//! Configuration loading shared by every service.
//!
//! Precedence, lowest first: the service's `Default`, the TOML file given with `--config`,
//! environment variables `MARINA_<SERVICE>_<KEY>` (nested keys joined with `__`, e.g.
//! `MARINA_COORD_RAFT__HEARTBEAT_MS`), then command-line flags. The environment is read here
//! and nowhere else.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: not found")]
    FileNotFound { path: PathBuf },
    /// figment's message names the key and where its value came from (file, env var, flag).
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// A value parsed but makes no sense; `key` is the config key, as written in TOML.
    #[error("invalid configuration: `{key}`: {reason}")]
    Value { key: &'static str, reason: String },
}

impl ConfigError {
    pub fn value(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Value { key, reason: reason.into() }
    }
}

/// The checks every service's configuration shares, written once so that the same mistake
/// gets the same answer from every service, naming its key.
pub mod check {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::ConfigError;

    /// `listen`: an address to bind, `ip:port` (port 0 binds any free port).
    pub fn listen(value: &str) -> Result<(), ConfigError> {
        value
            .parse::<SocketAddr>()
            .map(drop)
            .map_err(|e| ConfigError::value("listen", format!("{value:?} is not ip:port ({e})")))
    }

    /// An address others connect to (`advertise`, a peer's): `host:port` with a port above
    /// 0; the host may be a name.
    pub fn address(key: &'static str, value: &str) -> Result<(), ConfigError> {
        let valid = value
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if valid { Ok(()) } else { Err(ConfigError::value(key, format!("{value:?} is not host:port"))) }
    }

    /// A directory the service keeps its state in: it must be given.
    pub fn dir(key: &'static str, path: &Path) -> Result<(), ConfigError> {
        if path.as_os_str().is_empty() { Err(ConfigError::value(key, "must be set")) } else { Ok(()) }
    }

    /// Counts and intervals that mean nothing at 0 (a zero interval would spin).
    pub fn positive(values: &[(&'static str, u64)]) -> Result<(), ConfigError> {
        match values.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(ConfigError::value(key, "must be greater than 0")),
            None => Ok(()),
        }
    }

    /// A coord session: a TTL, and a grace for a broken connection that fits inside it.
    pub fn session(ttl_ms: u64, disconnect_grace_ms: u64) -> Result<(), ConfigError> {
        positive(&[("session_ttl_ms", ttl_ms)])?;
        if disconnect_grace_ms > ttl_ms {
            return Err(ConfigError::value("session_disconnect_grace_ms", "must not exceed session_ttl_ms"));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_check_names_its_key() {
            assert!(listen("127.0.0.1:0").is_ok());
            assert!(listen("nowhere").unwrap_err().to_string().contains("`listen`"));
            assert!(address("advertise", "gw.example:8080").is_ok());
            for bad in ["gw.example", ":8080", "gw:0", "gw:x"] {
                assert!(address("advertise", bad).unwrap_err().to_string().contains("`advertise`"), "{bad}");
            }
            assert!(dir("work_dir", Path::new("")).unwrap_err().to_string().contains("`work_dir`"));
            let zero = positive(&[("a_ms", 1), ("b_ms", 0)]).unwrap_err().to_string();
            assert!(zero.contains("`b_ms`"), "{zero}");
            assert!(session(0, 0).unwrap_err().to_string().contains("`session_ttl_ms`"));
            assert!(session(100, 200).unwrap_err().to_string().contains("`session_disconnect_grace_ms`"));
            session(100, 100).unwrap();
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Invalid(Box::new(error))
    }
}

/// Loads a service's configuration. `service` names the environment prefix
/// (`coord` → `MARINA_COORD_`); `flags` holds only the flags given on the command line
/// (unset flags must serialize to nothing, e.g. `Option` with `skip_serializing_if`).
pub fn load<C>(service: &str, file: Option<&Path>, flags: &impl Serialize) -> Result<C, ConfigError>
where
    C: DeserializeOwned + Serialize + Default,
{
    let env_prefix = format!("MARINA_{}_", service.to_ascii_uppercase());
    load_from(file, Env::prefixed(&env_prefix).split("__"), flags)
}

/// [`load`] with the environment provider given, so tests can feed a map instead of the
/// process environment.
pub fn load_from<C>(file: Option<&Path>, env: Env, flags: &impl Serialize) -> Result<C, ConfigError>
where
    C: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(C::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::FileNotFound { path: path.to_owned() });
        }
        figment = figment.merge(Toml::file(path));
    }
    let figment = figment.merge(env).merge(Serialized::defaults(flags));
    Ok(figment.extract()?)
}

/// The effective configuration as TOML, for `--print-config`.
pub fn render<C: Serialize>(config: &C) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        port: u16,
        name: String,
        nested: Nested,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        timeout_ms: u64,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self { port: 1, name: "default".into(), nested: Nested::default() }
        }
    }

    impl Default for Nested {
        fn default() -> Self {
            Self { timeout_ms: 100 }
        }
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    }

    /// The environment layer is exercised end to end by the binaries' tests (a child
    /// process with `MARINA_COORD_*` set); here it is a prefix nothing sets, because tests
    /// must not mutate the process environment.
    fn env() -> Env {
        Env::prefixed("MARINA_TEST_NEVER_SET_").split("__")
    }

    #[test]
    fn precedence_defaults_file_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "port = 2\nname = \"file\"\n[nested]\ntimeout_ms = 7\n").unwrap();
        let loaded: Sample = load_from(Some(&file), env(), &Flags { port: Some(3) }).unwrap();
        assert_eq!(loaded, Sample { port: 3, name: "file".into(), nested: Nested { timeout_ms: 7 } });
        let loaded: Sample = load_from(None, env(), &Flags::default()).unwrap();
        assert_eq!(loaded, Sample::default());
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "port = \"many\"\n").unwrap();
        let error = load_from::<Sample>(Some(&file), env(), &Flags::default()).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("port"), "{message}");
        assert!(message.contains("c.toml"), "{message}");

        std::fs::write(&file, "prot = 3\n").unwrap();
        let message = load_from::<Sample>(Some(&file), env(), &Flags::default()).unwrap_err().to_string();
        assert!(message.contains("prot"), "{message}");

        let missing = dir.path().join("missing.toml");
        let message = load_from::<Sample>(Some(&missing), env(), &Flags::default()).unwrap_err().to_string();
        assert!(message.contains("missing.toml") && message.contains("not found"), "{message}");
    }
}
