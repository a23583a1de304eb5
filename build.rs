//! Compiles proto/*.proto into prost types (`push::remote_write::proto`,
//! `exposition::protobuf`), with a
//! protobuf compiler written in Rust (protox): no system `protoc` is needed.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "proto/remote_write.proto",
    "proto/remote_write_v2.proto",
    "proto/metrics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(descriptors)?;
    Ok(())
}
