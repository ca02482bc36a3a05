//! Link options of the `media-api` binary.
//!
//! On Linux with glibc, the binary is linked with packed relative relocations
//! (`-z pack-relative-relocs`, `DT_RELR`). The binary stays position independent, so ASLR is kept.
//! Its relocation table drops from about 1.2 MiB of `Elf64_Rela` entries to a few KiB of bitmaps.
//! The dynamic loader reads that whole table at every start, so without the option the table stays
//! in the resident set of every replica for its whole life (docs/performance.md, session 18).
//!
//! The loader needs glibc 2.36 or newer (Debian 12, Ubuntu 22.10, the Dockerfile's images). An older
//! glibc refuses to start such a binary ("version `GLIBC_ABI_DT_RELR' not found"). To build for one,
//! set `MEDIA_API_LINK_RELR=0`: a cross build for an older glibc (cargo-zigbuild's `.2.17`
//! targets, `cross` images) needs it too, since the target triple does not say the glibc version.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MEDIA_API_LINK_RELR");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    let wanted = std::env::var("MEDIA_API_LINK_RELR").as_deref() != Ok("0");
    if linux_gnu && wanted {
        // Every target of the package (the service, its tests, examples and benches), so that
        // `examples/upload_rss` measures memory as the service has it.
        println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    }
}
