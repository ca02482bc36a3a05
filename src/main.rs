//! The `media-api` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    media_api::cli::main()
}
