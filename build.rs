// Compiles the gRPC contracts we serve (KEDA's external scaler, Crossplane's
// composition function) with a vendored protoc, so a fresh machine needs no
// system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Build scripts run single threaded, so setting PROTOC here races nothing.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::scaler::codec::SmallBuffers")
        .compile_protos(&["proto/externalscaler.proto"], &["proto"])?;
    // Crossplane's requests carry whole objects: tonic's default codec. Its
    // contract imports protobuf's well-known types, which protoc ships.
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[std::path::Path::new("proto/run_function.proto")],
            &[std::path::Path::new("proto"), well_known.as_path()],
        )?;
    println!("cargo:rerun-if-changed=proto/externalscaler.proto");
    println!("cargo:rerun-if-changed=proto/run_function.proto");
    Ok(())
}
