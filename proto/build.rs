//! Generates Rust code for every `.proto` under `marina/` plus one file descriptor set that
//! the services register with gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "marina/coord/v1/coord.proto",
    "marina/coord/v1/raft.proto",
    "marina/agent/v1/agent.proto",
    "marina/agent/v1/checkpoint.proto",
    "marina/master/v1/master.proto",
    "marina/apps/v1/apps.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        return Err("protoc not found: run `scripts/setup` (installs Debian's protobuf-compiler) \
                    or set PROTOC to a protoc binary"
            .into());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("marina_descriptor.bin"))
        // Node data travels from request to log to watchers without copies.
        .bytes(".")
        .compile_protos(PROTOS, &["."])?;
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
    })
}
