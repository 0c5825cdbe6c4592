fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("sentinel.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(
            &[
                "sentinel/v1/raft.proto",
                "sentinel/v1/node.proto",
                "sentinel/v1/sentinel.proto",
                "sentinel/otlp/trace.proto",
            ],
            &["."],
        )?;
    Ok(())
}
