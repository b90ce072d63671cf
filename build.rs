// Generates the CSI gRPC types and services from our own copy of the v1.12
// wire contract. protoc comes from the system (Debian's protobuf-compiler);
// set PROTOC to use another one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/csi.proto"], &["proto", "/usr/include"])?;
    Ok(())
}
