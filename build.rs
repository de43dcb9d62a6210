//! Compiles `proto/` with the pure-Rust `protox` compiler (no system `protoc`), then generates
//! prost messages and tonic services. The encoded descriptor set is written to `OUT_DIR` for
//! proto3 JSON (prost-reflect) at run time.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/google/rpc/status.proto",
        "proto/google/rpc/code.proto",
        "proto/google/rpc/error_details.proto",
        "proto/google/api/http.proto",
        "proto/google/api/annotations.proto",
        "proto/google/longrunning/operations.proto",
        "proto/oprun/v1/metadata.proto",
        "proto/oprun/v1/tasks.proto",
        "proto/oprun/v1/snapshot.proto",
        "proto/oprun/v1/watch.proto",
        "proto/oprun/v1/admin.proto",
        "proto/oprun/v1/worker.proto",
        "proto/oprun/v1/schedules.proto",
        // Not used by a message of oprun's: in the descriptor set for the kinds `oprun
        // worker exec` runs, whose input and output are JSON objects.
        "google/protobuf/struct.proto",
    ];
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(files)?;
    let fds = compiler.file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("oprun_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut config = prost_build::Config::new();
    // Any type URLs must be `type.googleapis.com/<full.Name>`; stock clients reject others.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not prost's INTERNAL (see src/proto/codec.rs).
        .codec_path("crate::proto::codec::StrictCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
