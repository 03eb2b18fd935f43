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
