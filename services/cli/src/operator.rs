//! How the CLI calls a cluster's services: as an operator, over mutual TLS, with the
//! certificate in a TLS directory (`marina certs`, or a `marina dev` data dir's `tls/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use marina_daemon::tls::{Tls, TlsConfig};

#[derive(Args, Debug, Clone)]
pub struct OperatorTls {
    /// A directory holding `ca.pem`, `operator.pem` and `operator-key.pem`. Default: the
    /// `tls/` of `marina dev`'s default data dir, if there is one.
    #[arg(long, env = "MARINA_TLS_DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Call without TLS (a cluster started without it).
    #[arg(long, global = true)]
    pub plaintext: bool,
}

impl OperatorTls {
    /// The operator's TLS, or `None` to call in plaintext (asked for, or nothing found).
    pub fn load(&self) -> anyhow::Result<Option<Arc<Tls>>> {
        if self.plaintext {
            return Ok(None);
        }
        let dir = match &self.tls_dir {
            Some(dir) => dir.clone(),
            None => {
                let dev = crate::dev::default_data_dir().join("tls");
                if !dev.join("operator.pem").exists() {
                    return Ok(None);
                }
                dev
            }
        };
        load_dir(&dir)
    }
}

/// The operator certificate in `dir`.
pub fn load_dir(dir: &Path) -> anyhow::Result<Option<Arc<Tls>>> {
    Tls::load(&TlsConfig::in_dir(dir, "operator")).with_context(|| {
        format!("the operator certificate in {} (make one with `marina certs issue --role operator`)", dir.display())
    })
}
