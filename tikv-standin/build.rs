//! Compiles the PD and TiKV gRPC definitions (kvproto) that the stand-in serves. The `.proto`
//! files are not copied into this repository: they are read from the `tikv-client` package
//! that the workspace already depends on, so the stand-in always speaks exactly the protocol
//! of the client it stands in for.
//!
//! The package is found with `cargo metadata` (the `cargo` that runs this build, via `CARGO`);
//! `DAEHWA_KVPROTO_DIR` may point at a kvproto `proto` directory instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    println!("cargo:rerun-if-env-changed=DAEHWA_KVPROTO_DIR");
    let proto_dir = match env::var_os("DAEHWA_KVPROTO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => tikv_client_dir()?.join("proto"),
    };
    let include = proto_dir.join("include");
    for file in [
        "pdpb.proto",
        "tikvpb.proto",
        "kvrpcpb.proto",
        "metapb.proto",
        "errorpb.proto",
    ] {
        if !proto_dir.join(file).is_file() {
            return Err(format!(
                "{} has no {file}: not a kvproto directory",
                proto_dir.display()
            )
            .into());
        }
    }
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        // Calls the stand-in does not implement answer UNIMPLEMENTED (the server names them).
        .generate_default_stubs(true)
        .emit_rerun_if_changed(false)
        // Comments would become doc tests and lint findings of generated code.
        .disable_comments(["."])
        .compile_with_config(
            config,
            &[proto_dir.join("pdpb.proto"), proto_dir.join("tikvpb.proto")],
            &[proto_dir.clone(), include],
        )?;
    Ok(())
}

/// The root of the `tikv-client` 0.4 package, as `cargo metadata` reports it.
fn tikv_client_dir() -> Result<PathBuf, BoxError> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(&env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest);
    if let Ok(target) = env::var("TARGET") {
        command.args(["--filter-platform", &target]);
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    packages
        .iter()
        .filter(|p| p["name"] == "tikv-client")
        .filter(|p| p["version"].as_str().is_some_and(|v| v.starts_with("0.4.")))
        .find_map(|p| {
            Some(
                Path::new(p["manifest_path"].as_str()?)
                    .parent()?
                    .to_path_buf(),
            )
        })
        .ok_or_else(|| {
            "tikv-client 0.4 is not in this workspace's dependency graph: \
             set DAEHWA_KVPROTO_DIR to a kvproto proto directory"
                .into()
        })
}
