fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &["sentinel/v1/raft.proto", "sentinel/v1/node.proto"],
        &["."],
    )?;
    Ok(())
}
