// Generates the gRPC types and services from our own copies of the wire
// contracts: CSI v1.12 and the kubelet's plugin registration v1 (served by
// the node plugin when it registers itself, without node-driver-registrar).
// protoc comes from the system (Debian's protobuf-compiler); set PROTOC to
// use another one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &["proto/csi.proto", "proto/pluginregistration.proto"],
            &["proto", "/usr/include"],
        )?;
    Ok(())
}
