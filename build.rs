// Compiles KEDA's external scaler contract with a vendored protoc, so a fresh
// machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Build scripts run single threaded, so setting PROTOC here races nothing.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::scaler::codec::SmallBuffers")
        .compile_protos(&["proto/externalscaler.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    Ok(())
}
