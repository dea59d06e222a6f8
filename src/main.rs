//! The `deploybot` binary: parse arguments, run, turn errors into one message and an exit code.

use clap::Parser;

fn main() {
    let cli = deploybot::cli::Cli::parse();
    let code = match deploybot::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("deploybot: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
