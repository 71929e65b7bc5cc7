//! Generates the gRPC code from the `.proto` files with protox (a pure-Rust protobuf compiler:
//! no `protoc` is needed on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "fleetsnap/v1/agent.proto",
        "fleetsnap/v1/admin.proto",
        "fleetsnap/v1/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
