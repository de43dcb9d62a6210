//! The `oprun` binary: the library's command line with the built-in kinds registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    oprun::cli::main(oprun_workers::register)
}
